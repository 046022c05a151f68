"""A model in a loose file, for `segbench ... --import examples/byo-model/loose_model.py`.

Nothing is installed: ``--import`` imports this file for the run and its
``@register_model`` adds ``tinyseg_wide``. The model subclasses segbench's
``SegmentationModel`` (the other way to register: the class declares its input
constraint and checks its inputs itself).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import InputSpec, SegmentationModel, register_model


@register_model(
    "tinyseg_wide",
    full_name="TinySeg, wide (loose-file example)",
    paper="none: segbench's bring-your-own-model example",
    year=2026,
    citation="segbench-byo-example",
)
class TinySegWide(SegmentationModel):
    """One stride-2 stage of 16 channels and a 1x1 head, up-sampled to the input size."""

    input_spec = InputSpec(multiple=2, min_size=8)

    def __init__(self, num_classes: int = 1, in_channels: int = 3) -> None:
        super().__init__(in_channels)
        self.down = nn.Conv2d(in_channels, 16, 3, stride=2, padding=1)
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        logits = self.head(F.relu(self.down(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
