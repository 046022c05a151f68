"""Attention U-Net, the widely used 2D variant of Oktay et al. 2018 (arXiv:1804.03999).

Same encoder as :mod:`models.unet`; each skip is gated by an additive attention
gate whose gating signal is the up-sampled decoder feature at the skip's
resolution. Base width 32: 8,726,077 parameters with one class (34,878,573 at 64).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import PaperFigures, PaperScores, register_model
from models.unet import DoubleConv, UNetSkeleton

__all__ = ["AttentionGate", "AttentionUNet", "AttentionUpBlock", "attention_unet"]


def _conv1x1_bn(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.BatchNorm2d(out_ch))


class AttentionGate(nn.Module):
    """Additive gate: x * sigmoid(BN(psi(ReLU(W_g g + W_x x)))), g and x at the same size."""

    def __init__(self, g_ch: int, x_ch: int, int_ch: int) -> None:
        super().__init__()
        self.w_g = _conv1x1_bn(g_ch, int_ch)
        self.w_x = _conv1x1_bn(x_ch, int_ch)
        self.psi = nn.Sequential(_conv1x1_bn(int_ch, 1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.psi(self.relu(self.w_g(g) + self.w_x(x)))


class AttentionUpBlock(nn.Module):
    """Nearest x2 -> (3x3 conv, BN, ReLU) halving the width -> gate the skip -> double conv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )
        self.gate = AttentionGate(out_ch, out_ch, out_ch // 2)
        self.conv = DoubleConv(2 * out_ch, out_ch)

    def forward(self, y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = self.up(y)
        return self.conv(torch.cat([self.gate(y, skip), y], dim=1))


class AttentionUNet(UNetSkeleton):
    """The U-Net skeleton with gated skips (:class:`AttentionUpBlock`); H, W multiples of 16."""

    up_block = AttentionUpBlock

    def __init__(self, num_classes: int = 1, in_channels: int = 3, base_width: int = 32) -> None:
        if base_width < 2:
            # F_int is half the finest skip width, so it must stay >= 1.
            raise ValueError(
                f"attention_unet: base_width must be an integer >= 2, got {base_width}"
            )
        super().__init__(num_classes, in_channels, base_width)


@register_model(
    "attention_unet",
    architecture=AttentionUNet,
    full_name="Attention U-Net (base width 32)",
    paper="Attention U-Net: Learning Where to Look for the Pancreas",
    year=2018,
    citation="oktay2018attention",
    reference="Oktay, O., Schlemper, J., Le Folgoc, L., et al. MIDL 2018. arXiv:1804.03999",
    family="comparison",
    reported=PaperFigures(params_m=8.73, gflops=16.71, isic2018=PaperScores(dsc=87.91, miou=78.43)),
    notes="Figures as printed in the EGE-UNet comparison table (ISIC2018, 7:3 split).",
)
def attention_unet(
    num_classes: int = 1, in_channels: int = 3, base_width: int = 32
) -> AttentionUNet:
    """Attention U-Net with widths base_width * (1, 2, 4, 8, 16)."""
    return AttentionUNet(num_classes=num_classes, in_channels=in_channels, base_width=base_width)
