"""Segmentation metrics: the papers' pooled confusion matrix and per-image scores.

Conventions (binary lesion masks, prediction = probability >= threshold, 0.5 by
default, as the authors' ``np.where(pred >= 0.5, 1, 0)``):

- **Pooled** (the papers' tables): one confusion matrix over every pixel of the
  split; Acc = (TP+TN)/all, Sen = TP/(TP+FN), Spe = TN/(TN+FP),
  DSC = 2TP/(2TP+FP+FN), "mIoU" = TP/(TP+FP+FN) (foreground IoU). Counts are
  int64 tensors ``[tp, fp, fn, tn]`` so distributed ranks can ``all_reduce`` them.
- **Per image** (nnU-Net / MONAI / smp "micro-imagewise"): Dice and IoU of each
  image, then mean and population std (ddof 0) over images. When prediction and
  ground truth are **both empty** Dice = IoU = 1.0 (nothing to find, nothing
  found); when **only one is empty** the formulas give 0.0, which is kept.
- **ISIC 2018 thresholded Jaccard**: per-image IoU, set to 0 where below 0.65,
  averaged over images.
- **HD95** (pixels): surfaces are mask pixels with a 4-neighbour outside the mask
  (``mask & ~binary_erosion(mask)``, the image border counts as outside);
  distances from each surface pixel to the other mask's surface come from
  ``scipy.ndimage.distance_transform_edt``. Two conventions (``hd95_convention``):
  ``"monai"`` (the default) = the max of the two directed 95th percentiles (MONAI's
  ``compute_hausdorff_distance(percentile=95)``); ``"medpy"`` = the 95th percentile of
  the pooled distances of both directions (``medpy.metric.binary.hd95``), never larger
  than MONAI's. Percentiles interpolate linearly (numpy's default, as both libraries).
  Both masks empty: 0.0. Exactly one empty: undefined -> NaN, left out of the mean and
  median and counted in ``hd95_n_undefined`` (so a model that misses lesions cannot
  hide).
Ratios whose denominator is zero are NaN, except pooled DSC/IoU with no
foreground anywhere (1.0, as per image). ``docs/protocol.md`` explains these
definitions and when each convention applies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "HD95_CONVENTIONS",
    "ISIC_JACCARD_THRESHOLD",
    "MetricAccumulator",
    "confusion_counts",
    "dice_iou_from_counts",
    "hd95",
    "isic_jaccard",
    "pooled_metrics",
    "upsample_probs",
]

ISIC_JACCARD_THRESHOLD = 0.65

#: HD95 conventions (module docstring); the first is the default
HD95_CONVENTIONS = ("monai", "medpy")


def _as_bool(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t if t.dtype == torch.bool else t != 0


def confusion_counts(
    pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, per_image: bool = False
) -> torch.Tensor:
    """int64 ``[tp, fp, fn, tn]`` of binary masks (any non-zero is foreground).

    With ``per_image`` the first dimension is the image and the result is (N, 4).
    """
    p, t = _as_bool(pred), _as_bool(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} != target shape {tuple(t.shape)}")
    if per_image:
        p, t = p.reshape(p.shape[0], -1), t.reshape(t.shape[0], -1)
        dims: tuple[int, ...] = (1,)
    else:
        p, t = p.reshape(-1), t.reshape(-1)
        dims = (0,)
    tp = (p & t).sum(dims, dtype=torch.int64)
    fp = (p & ~t).sum(dims, dtype=torch.int64)
    fn = (~p & t).sum(dims, dtype=torch.int64)
    tn = torch.full_like(tp, p.shape[-1]) - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=-1)


def _div(num: float, den: float, empty: float = math.nan) -> float:
    return num / den if den else empty


def pooled_metrics(counts: torch.Tensor | Sequence[int]) -> dict[str, float]:
    """Acc, Sen, Spe, DSC and foreground IoU ("miou") from pooled ``[tp, fp, fn, tn]``."""
    tp, fp, fn, tn = (int(c) for c in torch.as_tensor(counts).reshape(4).tolist())
    return {
        "acc": _div(tp + tn, tp + fp + fn + tn),
        "sen": _div(tp, tp + fn),
        "spe": _div(tn, tn + fp),
        "dsc": _div(2 * tp, 2 * tp + fp + fn, empty=1.0),
        "miou": _div(tp, tp + fp + fn, empty=1.0),
    }


def dice_iou_from_counts(counts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU from (N, 4) counts; both masks empty -> 1.0."""
    c = torch.as_tensor(counts).reshape(-1, 4).double()
    tp, fp, fn = c[:, 0], c[:, 1], c[:, 2]
    union = tp + fp + fn
    empty = union == 0
    dice = torch.where(empty, 1.0, 2 * tp / (2 * tp + fp + fn).clamp_min(1))
    iou = torch.where(empty, 1.0, tp / union.clamp_min(1))
    return dice.numpy(), iou.numpy()


def isic_jaccard(iou: np.ndarray | Sequence[float]) -> np.ndarray:
    """ISIC 2018 challenge score per image: IoU, or 0 where IoU < 0.65."""
    iou = np.asarray(iou, dtype=np.float64)
    return np.where(iou >= ISIC_JACCARD_THRESHOLD, iou, 0.0)


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0: pixels on the image edge are surface pixels
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1))


def hd95(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | None = None,
    convention: str = "monai",
) -> float:
    """95th-percentile symmetric Hausdorff distance between two 2-D binary masks.

    In pixels (or ``spacing`` units). 0.0 when both are empty, NaN when one is.
    ``convention``: ``"monai"`` (max of the directed 95th percentiles) or ``"medpy"``
    (95th percentile of both directions' distances pooled). Written with scipy rather
    than calling MONAI / medpy: neither is a dependency (medpy's build pulls in a
    C++ extension), and the two conventions differ only in the last line.
    """
    if convention not in HD95_CONVENTIONS:
        raise ValueError(
            f"hd95 convention {convention!r}: choose one of {', '.join(HD95_CONVENTIONS)}"
        )
    a = _as_bool(pred).cpu().numpy().squeeze()
    b = _as_bool(target).cpu().numpy().squeeze()
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"hd95 needs two 2-D masks of one shape, got {a.shape} and {b.shape}")
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return math.nan
    sa, sb = _surface(a), _surface(b)
    # distance of every pixel to the nearest surface pixel of the other mask
    d_ab = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    d_ba = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    if convention == "medpy":
        return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def upsample_probs(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a probability map (H, W), (1, H, W) or (N, 1, H, W) to ``size``."""
    x = probs.float()
    squeeze = x.dim()
    while x.dim() < 4:
        x = x.unsqueeze(0)
    y = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return y.reshape(y.shape[-squeeze:]) if squeeze < 4 else y


@dataclass
class MetricAccumulator:
    """Collects pooled counts and per-image rows batch by batch.

    ``update`` takes probabilities (or anything thresholded at ``threshold``) and
    binary targets of one shape, (N, H, W) or (N, 1, H, W), plus the image IDs.
    Images may differ in size between calls (original-resolution scoring).
    """

    threshold: float = 0.5
    compute_hd95: bool = True
    hd95_convention: str = "monai"
    counts: torch.Tensor = field(default_factory=lambda: torch.zeros(4, dtype=torch.int64))
    rows: list[dict] = field(default_factory=list)

    def update(self, probs: torch.Tensor, targets: torch.Tensor, ids: Sequence[str]) -> None:
        pred = (probs >= self.threshold).reshape(probs.shape[0], *probs.shape[-2:]).cpu()
        tgt = _as_bool(targets).reshape(pred.shape).cpu()
        if len(ids) != pred.shape[0]:
            raise ValueError(f"{len(ids)} image ids for a batch of {pred.shape[0]}")
        per = confusion_counts(pred, tgt, per_image=True)
        self.counts += per.sum(0)
        dice, iou = dice_iou_from_counts(per)
        jac = isic_jaccard(iou)
        for i, image_id in enumerate(ids):
            self.rows.append(
                {
                    "image_id": str(image_id),
                    "dice": float(dice[i]),
                    "iou": float(iou[i]),
                    "hd95": hd95(pred[i], tgt[i], convention=self.hd95_convention)
                    if self.compute_hd95
                    else math.nan,
                    "jaccard_thresholded": float(jac[i]),
                    **dict(zip(("tp", "fp", "fn", "tn"), map(int, per[i]), strict=True)),
                }
            )

    def merge(self, counts: torch.Tensor, rows: Sequence[dict]) -> None:
        """Fold in another accumulator's state (e.g. gathered from other ranks)."""
        self.counts += torch.as_tensor(counts, dtype=torch.int64)
        self.rows.extend(rows)

    def summary(self) -> dict[str, float | int]:
        """Pooled and per-image aggregates (the ``test`` block of ``metrics.json``)."""
        out: dict[str, float | int] = dict(pooled_metrics(self.counts))
        n = len(self.rows)
        dice = np.array([r["dice"] for r in self.rows], dtype=np.float64)
        iou = np.array([r["iou"] for r in self.rows], dtype=np.float64)
        hd = np.array([r["hd95"] for r in self.rows], dtype=np.float64)
        jac = np.array([r["jaccard_thresholded"] for r in self.rows], dtype=np.float64)
        ok = hd[~np.isnan(hd)]
        out.update(
            {
                "dice_mean": float(dice.mean()) if n else math.nan,
                "dice_std": float(dice.std()) if n else math.nan,
                "iou_mean": float(iou.mean()) if n else math.nan,
                "iou_std": float(iou.std()) if n else math.nan,
                "hd95_mean": float(ok.mean()) if ok.size and self.compute_hd95 else math.nan,
                "hd95_median": float(np.median(ok)) if ok.size and self.compute_hd95 else math.nan,
                "isic_jaccard": float(jac.mean()) if n else math.nan,
                "n_images": n,
            }
        )
        if self.compute_hd95:
            out["hd95_n_undefined"] = int(np.isnan(hd).sum())
        return out
