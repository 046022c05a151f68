"""The recipe's loss: BCE + Dice, with deep-supervision weights, in two BCE forms.

``loss`` (a :class:`~bench.engine.config.TrainConfig` field) picks the BCE form:

- ``"bce_dice_logits"`` (the fair recipe): ``binary_cross_entropy_with_logits``.
  Numerically stable and safe under autocast; a confidently wrong pixel (logit +30,
  target 0) keeps a gradient of ``sigmoid(x) - t`` = 1 (per pixel, before the mean).
- ``"bce_dice_probs"`` (the paper recipe): the authors' form, ``sigmoid`` then
  ``torch.nn.functional.binary_cross_entropy`` (``nn.BCELoss``: log terms clamped at
  -100, gradient ``(p - t) / max(p (1 - p), 1e-12)``). A wrong pixel whose logit
  saturates gets a vanishing gradient: from x = 17 (target 0) ``sigmoid`` rounds to 1
  in float32, the term jumps to the clamp value 100 and its gradient is 0; below
  x = -27.6 (target 1) the gradient shrinks as ``1e12 * exp(x)`` (-0.09 at -30, 0 from
  about -90). With the authors' [0, 255] inputs such logits are common at
  initialisation.

For logits that do not saturate the two forms have the same value and gradient. The
Dice term is the same in both: ``sigmoid(logits)``, per sample with ``smooth`` (1),
averaged over the batch: ``1 - (2*sum(p*t) + s) / (sum(p) + sum(t) + s)``. The loss is
computed in float32 whatever the autocast state (the probability form with autocast
off: ``binary_cross_entropy`` is not autocast-safe).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LOSSES", "BceDiceLoss", "DeepSupervisionLoss", "build_loss"]

#: BCE forms, ``TrainConfig.loss`` values (see the module docstring)
LOSSES = ("bce_dice_logits", "bce_dice_probs")


class BceDiceLoss(nn.Module):
    """``bce_weight * BCE(logits, target) + dice_weight * (1 - soft Dice per sample)``.

    ``form``: ``"bce_dice_logits"`` (BCE with logits) or ``"bce_dice_probs"`` (the
    authors' ``nn.BCELoss`` on ``sigmoid(logits)``, log clamped at -100).
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        form: str = "bce_dice_logits",
    ):
        super().__init__()
        if form not in LOSSES:
            raise ValueError(f"loss={form!r}: choose one of {', '.join(LOSSES)}")
        self.bce_weight, self.dice_weight, self.smooth = bce_weight, dice_weight, smooth
        self.form = form

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have one shape"
            )
        logits, target = logits.float(), target.float()  # loss in fp32 under autocast
        if self.form == "bce_dice_logits":
            bce = F.binary_cross_entropy_with_logits(logits, target)
            probs = torch.sigmoid(logits)
        else:
            probs = torch.sigmoid(logits)
            with torch.autocast(logits.device.type, enabled=False):
                bce = F.binary_cross_entropy(probs, target)
        p = probs.flatten(1)
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
    form: str = "bce_dice_logits",
) -> DeepSupervisionLoss:
    """The recipe's loss: BCE + Dice of form ``form`` (:data:`LOSSES`) over the main
    output and each auxiliary output, weighted by ``loss_weights`` (the registry's)."""
    return DeepSupervisionLoss(BceDiceLoss(bce_weight, dice_weight, smooth, form), loss_weights)
