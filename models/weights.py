"""Trained weights committed with segbench, loadable by name and verified by hash.

In the spirit of torchvision's weight enums: ``create_model("malunet",
weights="isic2017-256-paper-e300-s42")`` builds the model with the settings it was
trained with (e.g. the paper recipe's untied MALUNet) and loads the committed
``state_dict`` after checking its sha256. Nothing is downloaded: the files live in the
repository under ``results/weights/`` (``$SEGBENCH_WEIGHTS`` points elsewhere), listed in
``results/weights/index.json``, which ``segbench weights publish RUN_DIR`` writes from a
finished run. Each entry records the run it came from, its test metrics and the
preprocessing a user must apply (image size, input scaling, threshold).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: format tag of ``index.json``
INDEX_FORMAT = "segbench-weights/1"


class WeightsError(ValueError):
    """Unknown weights name, missing file or a file whose hash does not match."""


@dataclass(frozen=True)
class Weights:
    """One committed set of trained weights (an entry of ``index.json``)."""

    model: str
    name: str
    file: str  # relative to the weights folder
    sha256: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 256
    input_scaling: str = "minmax255"
    threshold: float = 0.5
    precision: str = "fp32"
    meta: dict[str, Any] = field(default_factory=dict)  # run, epoch, test metrics, hashes

    @property
    def path(self) -> Path:
        return weights_dir() / self.file


def weights_dir() -> Path:
    """``$SEGBENCH_WEIGHTS`` or the repository's ``results/weights``."""
    env = os.environ.get("SEGBENCH_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "results" / "weights"


def list_weights(model: str | None = None) -> list[Weights]:
    """Every committed weights entry (of ``model`` only, when given)."""
    import json

    index = weights_dir() / "index.json"
    if not index.is_file():
        return []
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        if data.get("format") != INDEX_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {INDEX_FORMAT!r}")
        entries = [Weights(**e) for e in data["weights"]]
    except (ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"{index}: not a segbench weights index ({err})") from None
    return [e for e in entries if model is None or e.model == model]


def get_weights(model: str, name: str) -> Weights:
    """The entry ``name`` of ``model``; an unknown name lists the known ones."""
    entries = list_weights(model)
    for e in entries:
        if e.name == name:
            return e
    known = ", ".join(e.name for e in entries) or "none"
    raise WeightsError(
        f"weights {name!r} for model {model!r}: not found in {weights_dir() / 'index.json'} "
        f"(known for {model}: {known})"
    )


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(entry: Weights) -> dict[str, Any]:
    """The entry's ``state_dict`` after checking the file's sha256 (tensors only)."""
    import torch

    path = entry.path
    if not path.is_file():
        raise WeightsError(
            f"weights {entry.model}:{entry.name}: file {path} is missing (committed weights "
            "live in a clone of the segbench repository, or set SEGBENCH_WEIGHTS)"
        )
    digest = file_sha256(path)
    if digest != entry.sha256:
        raise WeightsError(
            f"weights {entry.model}:{entry.name}: {path} has sha256 {digest[:16]}..., the "
            f"index says {entry.sha256[:16]}... (file changed or damaged)"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def build_with_weights(name: str, weights: str, **kwargs: Any) -> Any:
    """``create_model(name, **kwargs)`` with the entry's builder kwargs and its weights.

    A kwarg that contradicts the one the weights were trained with is an error (the
    state_dict would not fit, or would mean something else).
    """
    from models.registry import create_model

    entry = get_weights(name, weights)
    clash = {
        k: v for k, v in kwargs.items() if k in entry.model_kwargs and entry.model_kwargs[k] != v
    }
    if clash:
        raise WeightsError(
            f"weights {name}:{weights} were trained with {entry.model_kwargs}; "
            f"{clash} contradicts it"
        )
    model = create_model(name, **{**kwargs, **entry.model_kwargs})
    model.load_state_dict(load_state_dict(entry))
    model.segbench_weights = entry
    return model
