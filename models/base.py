"""The model contract: one input constraint per architecture, one input check.

Every registered model is a :class:`SegmentationModel` subclass (the pattern of
segmentation-models-pytorch's ``SegmentationModel.check_input_shape``). The subclass
declares what spatial sizes it can take, once, as the class attribute ``input_spec``;
:func:`models.register_model` copies that declaration into the registry metadata
(``model_info(name).input_spec``), so the harness can check a size before building the
model, and ``forward`` / ``forward_aux`` call :meth:`SegmentationModel.check_input_shape`
first, so a bad tensor fails with a clear message instead of a shape error deep inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

__all__ = ["InputSizeError", "InputSpec", "SegmentationModel", "check_input_size"]


class InputSizeError(ValueError):
    """Raised when a model cannot take an input of the given spatial size."""


def _round_to(value: int, multiple: int) -> int:
    return round(value / multiple) * multiple


def check_input_size(
    height: int, width: int, multiple: int, min_size: int = 0, model: str = "model"
) -> None:
    """Raise :class:`InputSizeError` unless H and W are multiples of ``multiple`` and at
    least ``min_size``; the message names the model and the nearest valid size."""
    if height % multiple or width % multiple:
        # The smallest valid side: min_size rounded up to the multiple.
        floor = max(multiple, -(-min_size // multiple) * multiple)
        raise InputSizeError(
            f"{model}: H and W must be multiples of {multiple}, got {height}x{width}"
            f" (nearest valid: {max(floor, _round_to(height, multiple))}x"
            f"{max(floor, _round_to(width, multiple))})"
        )
    if height < min_size or width < min_size:
        raise InputSizeError(f"{model}: H and W must be at least {min_size}, got {height}x{width}")


@dataclass(frozen=True)
class InputSpec:
    """Spatial sizes a model takes: H and W multiples of ``multiple`` and at least ``min_size``.

    ``multiple`` is usually 2 ** (number of down-samplings); ``multiple=1`` means any size.
    """

    multiple: int = 32
    min_size: int = 32

    def __post_init__(self) -> None:
        for field_name in ("multiple", "min_size"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"InputSpec.{field_name} must be a positive int, got {value!r}")

    def check(self, height: int, width: int, model: str = "model") -> None:
        """Raise :class:`InputSizeError` unless ``height`` x ``width`` is valid."""
        check_input_size(height, width, self.multiple, self.min_size, model=model)

    def valid_side(self, at_least: int = 1) -> int:
        """The smallest valid side length that is at least ``at_least``."""
        side = max(at_least, self.min_size)
        return -(-side // self.multiple) * self.multiple

    def describe(self) -> str:
        """Human-readable constraint, e.g. ``H and W multiples of 32, at least 32``."""
        return f"H and W multiples of {self.multiple}, at least {self.min_size}"


class SegmentationModel(nn.Module):
    """Base class of every registered model.

    Subclasses declare ``input_spec`` (class attribute, the single declaration of the
    input constraint), pass ``in_channels`` to ``__init__`` and call
    :meth:`check_input_shape` at the start of ``forward`` (and of ``forward_aux``, or of the
    private method both share). ``forward`` returns logits ``(N, num_classes, H, W)``.
    """

    input_spec: ClassVar[InputSpec]

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(
                f"{type(self).__name__}: in_channels must be a positive int, got {in_channels!r}"
            )
        self.in_channels = in_channels

    @property
    def contract_name(self) -> str:
        """The registry name when built by ``create_model``, else the class name (messages)."""
        info = getattr(self, "segbench_info", None)
        return info.name if info is not None else type(self).__name__

    def check_input_shape(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is ``(N, in_channels, H, W)`` with a valid H, W.

        Wrong rank or channel count: :class:`ValueError`; H or W the model cannot take:
        :class:`InputSizeError` (a ``ValueError`` too) naming the nearest valid size.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.contract_name}: expected input of shape (N, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        self.input_spec.check(x.shape[2], x.shape[3], model=self.contract_name)
