"""Metric functions against hand-computed confusion matrices and sklearn / smp."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.engine.losses import BceDiceLoss, DeepSupervisionLoss
from bench.engine.metrics import (
    MetricAccumulator,
    confusion_counts,
    dice_iou_from_counts,
    hd95,
    isic_jaccard,
    pooled_metrics,
    upsample_probs,
)

PRED = np.array([[1, 1, 0], [0, 0, 0]], dtype=np.uint8)
TGT = np.array([[1, 0, 0], [1, 0, 0]], dtype=np.uint8)


def test_confusion_counts_by_hand():
    # TP at (0,0); FP at (0,1); FN at (1,0); TN the other three
    assert confusion_counts(PRED, TGT).tolist() == [1, 1, 1, 3]
    assert confusion_counts(PRED, TGT).dtype == torch.int64
    per = confusion_counts(np.stack([PRED, TGT]), np.stack([TGT, TGT]), per_image=True)
    assert per.tolist() == [[1, 1, 1, 3], [2, 0, 0, 4]]


def test_pooled_metrics_by_hand():
    m = pooled_metrics([1, 1, 1, 3])
    assert m == pytest.approx({"acc": 4 / 6, "sen": 0.5, "spe": 0.75, "dsc": 0.5, "miou": 1 / 3})
    # no foreground anywhere: DSC/IoU 1 (nothing to find, nothing found), Sen undefined
    empty = pooled_metrics([0, 0, 0, 6])
    assert empty["dsc"] == 1.0 and empty["miou"] == 1.0 and empty["acc"] == 1.0
    assert math.isnan(empty["sen"]) and empty["spe"] == 1.0


def test_per_image_dice_iou_with_empty_masks():
    z = np.zeros((2, 3), np.uint8)
    preds = np.stack([PRED, z, z, PRED])
    tgts = np.stack([TGT, z, TGT, z])
    dice, iou = dice_iou_from_counts(confusion_counts(preds, tgts, per_image=True))
    # hand: image 0 2*1/(2+1+1)=0.5, 1/3; both empty -> 1; only one empty -> 0
    assert dice.tolist() == pytest.approx([0.5, 1.0, 0.0, 0.0])
    assert iou.tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.0])


def test_isic_jaccard_threshold():
    assert isic_jaccard([0.64, 0.65, 0.9, 0.0]).tolist() == pytest.approx([0.0, 0.65, 0.9, 0.0])


def test_hd95_by_hand_and_empty_cases():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[1, 1] = True
    b[4, 5] = True  # single pixels 3 down, 4 right: distance 5 both ways
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, a) == 0.0
    assert hd95(np.zeros_like(a), np.zeros_like(a)) == 0.0
    assert math.isnan(hd95(a, np.zeros_like(a)))
    assert math.isnan(hd95(np.zeros_like(a), b))
    assert hd95(a, b, spacing=(2.0, 1.0)) == pytest.approx(math.hypot(6, 4))
    with pytest.raises(ValueError, match="2-D"):
        hd95(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))


def _surface_bruteforce(m: np.ndarray) -> np.ndarray:
    pad = np.pad(m, 1)
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return np.argwhere(m & ~inner)


def test_hd95_matches_bruteforce_pairwise_distances():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:40, :48]
    for _ in range(3):
        c1, c2 = rng.uniform(10, 30, 2), rng.uniform(10, 30, 2)
        a = (yy - c1[0]) ** 2 + (xx - c1[1]) ** 2 < rng.uniform(30, 120)
        b = np.abs(yy - c2[0]) + np.abs(xx - c2[1]) < rng.uniform(5, 14)
        sa, sb = _surface_bruteforce(a), _surface_bruteforce(b)
        d = np.linalg.norm(sa[:, None, :] - sb[None, :, :], axis=-1)
        want = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
        assert hd95(a, b) == pytest.approx(want, abs=1e-9)


def test_accumulator_summary_and_hd95_exclusion():
    acc = MetricAccumulator()
    z = torch.zeros(1, 2, 3)
    probs = torch.stack([torch.tensor(PRED, dtype=torch.float32) * 0.9 + 0.05, z[0], z[0]])
    tgts = torch.stack([torch.tensor(TGT), z[0], torch.tensor(TGT, dtype=torch.float32)])
    acc.update(probs, tgts, ["a", "b", "c"])
    s = acc.summary()
    assert acc.counts.tolist() == [1, 1, 3, 13]
    assert [r["image_id"] for r in acc.rows] == ["a", "b", "c"]
    assert s["n_images"] == 3
    assert s["dice_mean"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert s["dice_std"] == pytest.approx(np.std([0.5, 1.0, 0.0]))
    # image c (prediction empty, target not) has no HD95: excluded and counted
    assert s["hd95_n_undefined"] == 1
    hd_a = acc.rows[0]["hd95"]
    assert s["hd95_mean"] == pytest.approx((hd_a + 0.0) / 2)
    assert s["dsc"] == pytest.approx(2 / (2 + 1 + 3))
    with pytest.raises(ValueError, match="ids"):
        acc.update(probs, tgts, ["only-one"])


def test_threshold_is_inclusive():
    acc = MetricAccumulator(threshold=0.5, compute_hd95=False)
    acc.update(torch.full((1, 2, 2), 0.5), torch.ones(1, 2, 2), ["x"])
    assert acc.counts.tolist() == [4, 0, 0, 0]


def test_pooled_and_imagewise_match_sklearn_and_smp():
    from sklearn.metrics import confusion_matrix, f1_score, jaccard_score, recall_score

    smp_metrics = pytest.importorskip("segmentation_models_pytorch.metrics")
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 1, 24, 20, generator=g)
    tgts = (torch.rand(6, 1, 24, 20, generator=g) < 0.4).long()
    acc = MetricAccumulator(compute_hd95=False)
    acc.update(probs[:4], tgts[:4], list("abcd"))  # two batches pool into one matrix
    acc.update(probs[4:], tgts[4:], list("ef"))
    y_true, y_pred = tgts.flatten().numpy(), (probs >= 0.5).long().flatten().numpy()
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    assert acc.counts.tolist() == [tp, fp, fn, tn]
    s = acc.summary()
    assert s["sen"] == pytest.approx(recall_score(y_true, y_pred))
    assert s["spe"] == pytest.approx(recall_score(y_true, y_pred, pos_label=0))
    assert s["dsc"] == pytest.approx(f1_score(y_true, y_pred))
    assert s["miou"] == pytest.approx(jaccard_score(y_true, y_pred))
    stats = smp_metrics.get_stats(probs, tgts, mode="binary", threshold=0.5)
    assert s["iou_mean"] == pytest.approx(
        float(smp_metrics.iou_score(*stats, reduction="micro-imagewise"))
    )
    assert s["dice_mean"] == pytest.approx(
        float(smp_metrics.f1_score(*stats, reduction="micro-imagewise"))
    )
    assert s["acc"] == pytest.approx(float(smp_metrics.accuracy(*stats, reduction="micro")))


def test_upsample_probs_shapes():
    p = torch.rand(8, 8)
    assert upsample_probs(p, (20, 30)).shape == (20, 30)
    assert upsample_probs(p[None], (20, 30)).shape == (1, 20, 30)
    assert upsample_probs(torch.ones(2, 1, 8, 8), (5, 7)).shape == (2, 1, 5, 7)
    assert torch.allclose(upsample_probs(torch.full((4, 4), 0.7), (9, 9)), torch.tensor(0.7))


def test_bce_dice_loss_matches_formula_and_is_stable():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 8, 8, generator=g)
    target = (torch.rand(3, 1, 8, 8, generator=g) > 0.5).float()
    p = torch.sigmoid(logits)
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    inter = (p * target).flatten(1).sum(1)
    dice = (2 * inter + 1) / (p.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)
    want = bce + (1 - dice).mean()
    assert float(BceDiceLoss()(logits, target)) == pytest.approx(float(want), rel=1e-5)
    huge = torch.full((1, 1, 4, 4), 200.0)
    assert torch.isfinite(BceDiceLoss()(huge, torch.zeros_like(huge)))
    assert torch.isfinite(BceDiceLoss()(-huge, torch.ones_like(huge)))
    with pytest.raises(ValueError, match="shape"):
        BceDiceLoss()(logits, target[:, :, :4])


def test_deep_supervision_weights():
    base = BceDiceLoss()
    g = torch.Generator().manual_seed(2)
    main, a1, a2 = (torch.randn(2, 1, 8, 8, generator=g) for _ in range(3))
    t = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    loss = DeepSupervisionLoss(base, (0.5, (0.3, 0.2)))(main, t, [a1, a2])
    want = 0.5 * base(main, t) + 0.3 * base(a1, t) + 0.2 * base(a2, t)
    assert float(loss) == pytest.approx(float(want))
    with pytest.raises(ValueError, match="auxiliary"):
        DeepSupervisionLoss(base, (1.0, (0.1,)))(main, t, [])


def test_metric_table_keys_are_what_the_accumulator_writes() -> None:
    """Every entry of the metric table is a key of metrics.json["test"] (one place to add one)."""
    from bench.engine.metric_table import METRICS, metric

    acc = MetricAccumulator()
    pred = torch.zeros(2, 8, 8)
    pred[0, 2:5, 2:5] = 1.0
    acc.update(pred, pred > 0.5, ["a", "b"])
    summary = acc.summary()
    assert [m.key for m in METRICS if m.key not in summary] == []
    assert len({m.key for m in METRICS}) == len(METRICS)
    assert metric("dsc").percent and not metric("hd95_mean").higher_is_better
    with pytest.raises(KeyError, match="known"):
        metric("dcs")
