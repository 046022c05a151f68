"""Parsing input shapes and size lists given on the command line or in files."""

from __future__ import annotations

from collections.abc import Sequence

#: The input shape of every count unless told otherwise (the papers' 256x256 RGB, batch 1).
DEFAULT_SHAPE = (1, 3, 256, 256)


def parse_input_size(
    text: str | int, arg: str = "--input-size", batch: int = 1, channels: int = 3
) -> tuple[int, int, int, int]:
    """An input size as N x C x H x W: ``"256"`` -> ``(1, 3, 256, 256)``, ``"256x192"``
    (H x W) -> ``(1, 3, 256, 192)``, ``"1x3x256x256"`` as given; a clear error names ``arg``.

    The one spelling of input sizes on every command line (``--input-size``).
    """
    parts = str(text).strip().lower().replace(",", "x").split("x")
    try:
        nums = tuple(int(p) for p in parts)
    except ValueError:
        nums = ()
    if len(nums) not in (1, 2, 4):
        raise ValueError(
            f"{arg}: expected SIZE, HxW or NxCxHxW (e.g. 256, 256x256, 1x3x256x256), got {text!r}"
        )
    if any(n <= 0 for n in nums):
        raise ValueError(f"{arg}: sizes must be positive, got {text!r}")
    if len(nums) == 1:
        return (batch, channels, nums[0], nums[0])
    if len(nums) == 2:
        return (batch, channels, nums[0], nums[1])
    return nums  # type: ignore[return-value]


def square_side(shape: Sequence[int], arg: str = "--input-size") -> int:
    """H of a square N x C x H x W shape; an error for a non-square one."""
    if shape[-1] != shape[-2]:
        raise ValueError(f"{arg}: square inputs only here, got {shape[-2]}x{shape[-1]}")
    return int(shape[-1])


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
