"""Parsing input shapes and size lists given on the command line or in files."""

from __future__ import annotations

from collections.abc import Sequence

#: The input shape of every count unless told otherwise (the papers' 256x256 RGB, batch 1).
DEFAULT_SHAPE = (1, 3, 256, 256)


def parse_input_shape(text: str, arg: str = "--input") -> tuple[int, ...]:
    """``"1x3x256x256"`` -> ``(1, 3, 256, 256)``; a clear error names ``arg`` otherwise."""
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{arg}: expected NxCxHxW like 1x3x256x256, got {text!r}") from None
    if len(shape) < 3 or any(s <= 0 for s in shape):
        raise ValueError(f"{arg}: expected at least 3 positive sizes (NxCxHxW), got {text!r}")
    return shape


def parse_sizes(text: str, arg: str = "--sweep") -> list[int]:
    """``"128,256,512"`` -> ``[128, 256, 512]``."""
    try:
        sizes = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise ValueError(
            f"{arg}: expected comma-separated side lengths like 128,256,512, got {text!r}"
        ) from None
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"{arg}: expected positive side lengths, got {text!r}")
    return sizes


def shape_label(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)
