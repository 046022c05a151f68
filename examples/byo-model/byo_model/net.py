"""TinySeg: a plain PyTorch encoder-decoder, written without any segbench import.

Two stride-2 stages (so H and W must be multiples of 4), a 1x1 head, bilinear
up-sampling back to the input size. ``forward`` returns a dict, as many research models
do; segbench is told at registration where the logits are (``output="logits"``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinySeg(nn.Module):
    """A few thousand parameters: stem, two down-sampling stages, skip, head."""

    def __init__(self, num_classes: int = 1, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.stem = _stage(in_channels, width, 1)
        self.down1 = _stage(width, 2 * width, 2)
        self.down2 = _stage(2 * width, 2 * width, 2)
        self.fuse = _stage(3 * width, width, 1)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.stem(x)
        d = self.down2(self.down1(s))
        up = F.interpolate(d, size=s.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(self.fuse(torch.cat([s, up], dim=1)))
        return {"logits": logits, "features": d}
