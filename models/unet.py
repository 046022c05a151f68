"""U-Net (Ronneberger et al., MICCAI 2015) as compared in the MALUNet / EGE-UNet tables.

Base width 32 (widths 32-64-128-256-512), ConvTranspose up-sampling: 7,765,985
parameters with one class, the count behind the papers' "7.77 M".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from models.base import InputSpec, SegmentationModel
from models.registry import PaperFigures, PaperScores, register_model

__all__ = ["DoubleConv", "UNet", "UNetSkeleton", "UpBlock", "unet"]


class DoubleConv(nn.Sequential):
    """(3x3 conv with bias -> BatchNorm -> ReLU) twice."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """2x2 stride-2 ConvTranspose halving the width, concat(skip, up), double conv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        self.conv = DoubleConv(2 * out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNetSkeleton(SegmentationModel):
    """The five-level U-Net skeleton shared by :class:`UNet` and Attention U-Net.

    Encoder: a double conv, then four (2x2 max-pool, double conv) levels doubling the
    width; decoder: four ``up_block(in_ch, out_ch)`` steps, each merging the skip of its
    level; a 1x1 head. Variants differ only in ``up_block`` (as smp's U-Net and U-Net++
    share an encoder and differ in their decoder). H and W must be multiples of 16.
    """

    input_spec = InputSpec(multiple=16, min_size=16)
    #: the decoder step: ``up_block(in_ch, out_ch)(y, skip) -> out_ch`` channels
    up_block: Callable[[int, int], nn.Module] = UpBlock

    def __init__(self, num_classes: int = 1, in_channels: int = 3, base_width: int = 32) -> None:
        super().__init__(in_channels)
        w = [base_width * 2**i for i in range(5)]
        self.inc = DoubleConv(in_channels, w[0])
        self.downs = nn.ModuleList(DoubleConv(w[i], w[i + 1]) for i in range(4))
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(type(self).up_block(w[i + 1], w[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)


class UNet(UNetSkeleton):
    """Five-level U-Net with ConvTranspose up-sampling (:class:`UpBlock`)."""

    def __init__(self, num_classes: int = 1, in_channels: int = 3, base_width: int = 32) -> None:
        if base_width < 1:
            raise ValueError(f"unet: base_width must be a positive integer, got {base_width}")
        super().__init__(num_classes, in_channels, base_width)


@register_model(
    "unet",
    architecture=UNet,
    full_name="U-Net (base width 32)",
    paper="U-Net: Convolutional Networks for Biomedical Image Segmentation",
    year=2015,
    citation="ronneberger2015unet",
    reference="Ronneberger, O., Fischer, P., Brox, T. MICCAI 2015, LNCS 9351, pp. 234-241. "
    "arXiv:1505.04597",
    family="comparison",
    reported=PaperFigures(
        params_m=7.77,
        gflops=13.76,
        isic2017=PaperScores(dsc=86.99, miou=76.98),
        isic2018=PaperScores(dsc=87.55, miou=77.86),
    ),
    notes="Figures as printed in the MALUNet / EGE-UNet comparison tables (7:3 split). "
    "thop counts ConvTranspose stride^2 times too often, hence the papers' 13.76 'GFLOPs'; "
    "the true MAC count (results/complexity/golden.json) is lower.",
)
def unet(num_classes: int = 1, in_channels: int = 3, base_width: int = 32) -> UNet:
    """U-Net with widths base_width * (1, 2, 4, 8, 16) and ConvTranspose up-sampling."""
    return UNet(num_classes=num_classes, in_channels=in_channels, base_width=base_width)
