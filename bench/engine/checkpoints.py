"""Checkpoint files: atomic save keeping the previous one, checked load with a fallback offer, and loading weights from segbench's or the authors' checkpoints."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bench.core.io import atomic_write

CHECKPOINT_FORMAT = "segbench-checkpoint/1"

#: ``last.pt``'s predecessor, kept so a truncated or corrupt ``last.pt`` is never the only copy.
PREVIOUS_NAME = "previous.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (truncated, corrupt, foreign); the message names the
    file and, where one is readable, the previous checkpoint to resume from instead."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permission); the files already there
    are unchanged. The message names the file that failed."""


def previous_path(last: Path) -> Path:
    """Where the checkpoint before ``last`` is kept (``checkpoints/previous.pt``)."""
    return Path(last).with_name(PREVIOUS_NAME)


def _keep_as_previous(path: Path) -> None:
    """Make the current ``path`` the previous checkpoint, leaving ``path`` in place.

    A hard link then a rename: at every moment both the old ``path`` and a complete
    previous file exist, so a crash here never leaves a run without a readable checkpoint.
    """
    if not path.is_file():
        return
    prev = previous_path(path)
    tmp = prev.with_name(f".{prev.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links on this file system: a copy does the same
        shutil.copyfile(path, tmp)
    os.replace(tmp, prev)


def _save_checkpoint(path: Path, obj: dict[str, Any], keep_previous: bool = False) -> None:
    """``torch.save`` into a temp file beside ``path``, then rename (atomic).

    ``keep_previous``: the checkpoint being replaced becomes ``previous.pt`` (only once the
    new one is complete). Raises :class:`CheckpointWriteError` naming ``path`` when the
    write fails; ``path`` and ``previous.pt`` are then as they were.
    """
    path = Path(path)
    try:
        atomic_write(
            path,
            lambda fh: torch.save(obj, fh),
            mode="wb",
            before_replace=(lambda: _keep_as_previous(path)) if keep_previous else None,
        )
    except OSError as err:
        kept = [p.name for p in (path, previous_path(path)) if p.is_file()]
        unchanged = f"; {' and '.join(kept)} unchanged" if kept else ""
        raise CheckpointWriteError(
            err.errno, f"could not write checkpoint {path} ({err.strerror or err}){unchanged}"
        ) from err


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint; any failure becomes a one-line :class:`CheckpointError`."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({type(err).__name__}: {first})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a segbench checkpoint (a {type(obj).__name__})")
    return obj


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return _read_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; delete it or pass --force to start over") from None


def load_resume_checkpoint(last: Path, use_previous: bool = False) -> dict[str, Any] | None:
    """The checkpoint a run resumes from: ``last.pt``, or with ``use_previous`` the one before.

    None when the run has no checkpoint. A truncated or corrupt ``last.pt`` raises one
    :class:`CheckpointError` line naming it and offering ``previous.pt`` when that one is
    readable (never a silent restart from scratch). With ``use_previous``, ``last.pt`` is
    moved aside to ``last.pt.bad`` so the next save cannot rotate it into ``previous.pt``.
    """
    last = Path(last)
    prev = previous_path(last)
    if use_previous:
        if not prev.is_file():
            raise CheckpointError(
                f"--resume-previous: {prev} does not exist; resume from {last.name} (drop the "
                "flag) or pass --force to start over"
            )
        ckpt = _read_checkpoint(prev)
        if last.is_file():
            os.replace(last, last.with_name(last.name + ".bad"))
        return ckpt
    if not last.is_file():
        if prev.is_file():  # a crash between the two renames of a save cannot cause this,
            # but a deleted last.pt can: say so instead of restarting
            raise CheckpointError(
                f"{last} is missing but {prev} exists ({_describe(prev)}); pass "
                "--resume-previous to continue from it, or --force to start over"
            )
        return None
    try:
        return _read_checkpoint(last)
    except CheckpointError as err:
        if prev.is_file():
            offer = f"the previous checkpoint {prev} ({_describe(prev)})"
            raise CheckpointError(
                f"{err}; {offer}: pass --resume-previous to continue from it, or --force to "
                "start over"
            ) from None
        raise CheckpointError(
            f"{err}; no previous checkpoint to fall back to: pass --force to start over"
        ) from None


def _describe(path: Path) -> str:
    """``end of epoch 3`` / ``epoch 4, step 7`` / ``unreadable too``."""
    try:
        ck = _read_checkpoint(path)
    except CheckpointError:
        return "unreadable too"
    epoch, step = ck.get("epoch"), ck.get("step")
    if not isinstance(epoch, int):
        return "readable"
    return f"epoch {epoch + 1}, step {step}" if step else f"end of epoch {epoch}"


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


def read_checkpoint_file(path: str | Path) -> Any:
    """A user-named checkpoint file's content (weights only, on the CPU).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for
    one torch cannot load (a segbench checkpoint, an authors' state_dict or a bare model).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(f"{path}: not a loadable PyTorch checkpoint ({err})") from err


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> dict[str, Any]:
    """Load a checkpoint file's weights into ``model``; returns the raw checkpoint."""
    path = Path(path)
    ckpt = read_checkpoint_file(path)
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
