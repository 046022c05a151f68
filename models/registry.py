"""Model registry: ``@register_model`` builders with paper metadata.

No global mutable state beyond the name -> entry table that decorators fill at
import time (the torchvision / timm pattern).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

__all__ = [
    "InputSizeError",
    "ModelInfo",
    "UnknownModelError",
    "check_input_size",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]


class UnknownModelError(KeyError):
    """Raised for a name that is not in the registry; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InputSizeError(ValueError):
    """Raised when a model cannot take an input of the given spatial size."""


@dataclass(frozen=True)
class ModelInfo:
    """What segbench knows about a registered model.

    ``reported`` holds figures exactly as the paper prints them, e.g.
    ``{"params_m": 0.177, "gflops": 0.085, "isic2017": {"dsc": 88.13, "miou": 78.78}}``
    (papers' "GFLOPs" are thop MACs at 1x3x256x256).

    ``loss_weights`` is ``(main, (aux_1, ...))``: weight of the main logits and
    of each auxiliary logit map returned by ``model.forward_aux`` (deep
    supervision); empty aux for models without side outputs.
    """

    name: str
    full_name: str
    paper: str
    year: int
    citation: str  # citation key, e.g. "ruan2022malunet"
    reference: str = ""  # full bibliographic reference
    family: str = "segbench"
    input_multiple: int = 32
    min_input: int = 32
    reported: dict[str, Any] = field(default_factory=dict)
    loss_weights: tuple[float, tuple[float, ...]] = (1.0, ())
    notes: str = ""

    @property
    def input_constraint(self) -> str:
        return f"H and W multiples of {self.input_multiple}, at least {self.min_input}"

    @property
    def has_aux(self) -> bool:
        return len(self.loss_weights[1]) > 0


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    info: ModelInfo


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str | None = None, **meta: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder ``fn(num_classes=1, in_channels=3, **kwargs) -> nn.Module``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = _Entry(fn, ModelInfo(name=key, **meta))
        return fn

    return deco


def _entry(name: str) -> _Entry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create_model(name: str, num_classes: int = 1, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered model with random weights (never downloads)."""
    model = _entry(name).builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    model.segbench_info = _entry(name).info  # type: ignore[attr-defined]
    return model


def model_info(name: str) -> ModelInfo:
    return _entry(name).info


def list_models(pattern: str | list[str] | None = None) -> list[str]:
    """Sorted registered names matching a wildcard pattern or comma-separated patterns."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    if not pattern:
        return names
    pats = pattern if isinstance(pattern, list) else [p.strip() for p in pattern.split(",")]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats if p)]


def check_input_size(
    height: int, width: int, multiple: int, min_size: int = 0, model: str = "model"
) -> None:
    """Raise :class:`InputSizeError` unless H and W are usable by a model."""
    if height % multiple or width % multiple:
        raise InputSizeError(
            f"{model}: H and W must be multiples of {multiple}, got {height}x{width}"
            f" (nearest valid: {max(multiple, round(height / multiple) * multiple)}x"
            f"{max(multiple, round(width / multiple) * multiple)})"
        )
    if height < min_size or width < min_size:
        raise InputSizeError(f"{model}: H and W must be at least {min_size}, got {height}x{width}")


def _ensure_loaded() -> None:
    # Importing the package registers every architecture module.
    import models  # noqa: F401
