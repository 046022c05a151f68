"""Trained weights committed with segbench, loadable by name and verified by hash.

In the spirit of torchvision's weight enums: ``create_model("malunet",
weights="isic2017-256-paper-e300-s42")`` builds the model with the settings it was
trained with (e.g. the paper recipe's untied MALUNet) and loads the committed
``state_dict`` after checking its sha256. Nothing is downloaded. Every entry is listed in
``results/weights/index.json`` (``$SEGBENCH_WEIGHTS`` points elsewhere), which
``segbench weights publish RUN_DIR`` writes from a finished run; each records the run it
came from, its test metrics and the preprocessing a user must apply (image size, input
scaling, threshold).

Where the file lives is the entry's ``store``:

* ``repo``: committed beside the index (``results/weights/<model>/<name>.pt``); git takes
  no file over 10 MB, so only the smallest models' weights can live here;
* ``external``: kept out of git (e.g. lraspp's 13 MB), looked up as ``<model>/<name>.pt``
  in the folders ``$SEGBENCH_WEIGHTS_STORE`` lists (``os.pathsep``-separated). The index
  still pins the file's sha256, so a copy obtained any way at all is verified before
  it is loaded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: format tag of ``index.json``
INDEX_FORMAT = "segbench-weights/1"
#: where a weights file lives (see the module docstring)
STORES = ("repo", "external")
#: the environment variable that lists the external stores
STORE_ENV = "SEGBENCH_WEIGHTS_STORE"


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
    store: str = "repo"  # one of STORES

    def __post_init__(self) -> None:
        if self.store not in STORES:
            raise ValueError(f"store {self.store!r} of {self.model}:{self.name}, not in {STORES}")

    @property
    def path(self) -> Path | None:
        """The file on this machine: beside the index, or in the first external store
        that holds it; ``None`` when no store here has it."""
        if self.store == "repo":
            return weights_dir() / self.file
        for root in store_dirs():
            if (root / self.file).is_file():
                return root / self.file
        return None


def weights_dir() -> Path:
    """``$SEGBENCH_WEIGHTS`` or the repository's ``results/weights``."""
    env = os.environ.get("SEGBENCH_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "results" / "weights"


def store_dirs() -> list[Path]:
    """The external stores ``$SEGBENCH_WEIGHTS_STORE`` lists, in order (none when unset)."""
    return [Path(p) for p in os.environ.get(STORE_ENV, "").split(os.pathsep) if p]


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


def verified_path(entry: Weights) -> Path:
    """The entry's file on this machine, after checking its sha256 against the index.

    Raises :class:`WeightsError` naming what to do when no store here holds the file, or
    when the file's bytes are not the ones the index pins.
    """
    path = entry.path
    if path is None:
        looked = ", ".join(str(d) for d in store_dirs()) or f"none: {STORE_ENV} is not set"
        raise WeightsError(
            f"weights {entry.model}:{entry.name} are kept outside git (store 'external'): "
            f"no store here holds {entry.file} (stores searched: {looked}). Put a copy of "
            f"the file (sha256 {entry.sha256}) at <store>/{entry.file} and list <store> in "
            f"{STORE_ENV}"
        )
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
    return path


def load_state_dict(entry: Weights) -> dict[str, Any]:
    """The entry's ``state_dict`` after checking the file's sha256 (tensors only)."""
    import torch

    return torch.load(verified_path(entry), map_location="cpu", weights_only=True)


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
