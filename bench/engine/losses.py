"""The recipe's loss: BCE + Dice on logits, with deep-supervision weights.

The authors apply ``nn.BCELoss`` and a Dice loss to sigmoid outputs. Here the BCE
term is ``binary_cross_entropy_with_logits`` (the same value, but stable for large
logits and safe under autocast) and the Dice term uses ``sigmoid(logits)``.
Dice is computed per sample with smooth = 1 and averaged over the batch:
``1 - (2*sum(p*t) + 1) / (sum(p) + sum(t) + 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BceDiceLoss", "DeepSupervisionLoss", "build_loss"]


class BceDiceLoss(nn.Module):
    """``bce_weight * BCE(logits, target) + dice_weight * (1 - soft Dice per sample)``."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.bce_weight, self.dice_weight, self.smooth = bce_weight, dice_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have one shape"
            )
        logits, target = logits.float(), target.float()  # loss in fp32 under autocast
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits).flatten(1)
        t = target.flatten(1)
        dice = (2 * (p * t).sum(1) + self.smooth) / (p.sum(1) + t.sum(1) + self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1 - dice).mean()


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``base`` over the main logits and each auxiliary logit map.

    ``weights = (main, (aux_1, ...))`` as ``model_info(name).loss_weights``.
    """

    def __init__(self, base: nn.Module, weights: tuple[float, Sequence[float]] = (1.0, ())):
        super().__init__()
        self.base = base
        self.main_weight = float(weights[0])
        self.aux_weights = tuple(float(w) for w in weights[1])

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, aux: Sequence[torch.Tensor] = ()
    ) -> torch.Tensor:
        if len(aux) != len(self.aux_weights):
            raise ValueError(
                f"{len(aux)} auxiliary outputs but {len(self.aux_weights)} auxiliary loss weights"
            )
        loss = self.main_weight * self.base(logits, target)
        for w, a in zip(self.aux_weights, aux):
            loss = loss + w * self.base(a, target)
        return loss


def build_loss(
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    smooth: float = 1.0,
    loss_weights: tuple[float, Sequence[float]] = (1.0, ()),
) -> DeepSupervisionLoss:
    return DeepSupervisionLoss(BceDiceLoss(bce_weight, dice_weight, smooth), loss_weights)
