"""Checkpoint files: atomic save, checked load, and loading weights from segbench's or the authors' checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bench.core.io import atomic_write

CHECKPOINT_FORMAT = "segbench-checkpoint/1"


def _save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    # torch.save into a temp file beside the target, then os.replace (bench.core.io.atomic_write)
    atomic_write(path, lambda fh: torch.save(obj, fh), mode="wb")


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: cannot read checkpoint ({err}); delete it or pass --force to start over"
        ) from err


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights in a segbench or authors' checkpoint (see module doc)."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise ValueError(
            f"{source}: expected a state_dict or a dict holding one, got {type(obj).__name__}"
        )
    for key in ("model", "model_state_dict", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source}: no model weights found (keys: {', '.join(list(obj)[:8])})")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):  # DataParallel/DDP, torch.compile
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> dict[str, Any]:
    """Load a checkpoint file's weights into ``model``; returns the raw checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a loadable PyTorch checkpoint ({err})") from err
    state = extract_state_dict(ckpt, str(path))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when not strict
        lines = [ln.strip() for ln in str(err).splitlines()[1:]]
        more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
        raise ValueError(
            f"{path}: weights do not match the model: {'; '.join(lines[:3])}{more}"
        ) from None
    if strict and (missing or unexpected):
        raise ValueError(
            f"{path}: weights do not match the model: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    return ckpt if isinstance(ckpt, dict) else {}
