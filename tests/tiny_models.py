"""Tiny plain models shared by the deployment and runtime tests: cheap to export, time
and compare, so a test exercises the code path, not the model."""

from __future__ import annotations

import torch
import torch.nn as nn


class TinyConvNet(nn.Module):
    """A 3x3 conv, ReLU and a 1x1 head: (N, 3, H, W) -> (N, 1, H, W) logits, any H, W."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))
