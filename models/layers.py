"""Small blocks and helpers shared by MALUNet and EGE-UNet (Ruan et al., 2022 / 2023).

Both papers come from the same code base: the same initialisation, the same
input contract (:data:`AUTHORS_INPUT_SPEC`: H and W multiples of 32) and the same
channel list. What only one architecture uses lives in its own module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d, trunc_normal_

from models.base import InputSpec

__all__ = ["AUTHORS_INPUT_SPEC", "LayerNorm2d", "authors_init_", "check_channel_list"]

# Five 2x2 max-poolings: H and W must be multiples of 32 (and so at least 32).
AUTHORS_INPUT_SPEC = InputSpec(multiple=32, min_size=32)

# ``LayerNorm2d`` (timm) is the channels-first LayerNorm of EGE-UNet: per pixel,
# mean and biased variance over C, eps 1e-6, per-channel affine (weight ones,
# bias zeros); its parameters are named ``weight`` / ``bias`` like the authors'.
# It is an ``nn.LayerNorm`` subclass, so thop (exact type match) ignores it just
# as it ignored the authors' hand-written class: thop MACs stay comparable.


def authors_init_(module: nn.Module) -> None:
    """The authors' ``_init_weights``, for ``model.apply``.

    Linear: truncated normal std 0.02, bias 0. Conv1d: normal with std
    sqrt(2 / (k * out_channels)), bias left at PyTorch's default. Conv2d: normal
    with std sqrt(2 / (k_h * k_w * out_channels // groups)), bias 0. Norm layers
    keep ones / zeros.
    """
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)  # timm's, as the authors; torch's draws differ
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv1d):
        n = module.kernel_size[0] * module.out_channels
        with torch.no_grad():
            module.weight.normal_(0.0, math.sqrt(2.0 / n))
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        fan_out //= module.groups
        with torch.no_grad():
            module.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def check_channel_list(c_list: Sequence[int], model: str) -> list[int]:
    """Validate the six stage widths: positive and divisible by 4 (GroupNorm(4), 4-way splits)."""
    widths = list(c_list)
    if len(widths) != 6 or not all(isinstance(c, int) and c > 0 and c % 4 == 0 for c in widths):
        raise ValueError(
            f"{model}: c_list must be 6 positive ints divisible by 4 "
            f"(e.g. [8, 16, 24, 32, 48, 64]), got {c_list!r}"
        )
    return widths
