"""What separates a measured figure from a paper's: each cause as a measured effect.

A run under the authors' protocol rarely lands on the printed figure. Before a
difference is called a failure to reproduce (or a win), the causes that need no new
training are measured here, each in percentage points of the pooled test DSC (the
papers' metric: one confusion matrix over every test pixel), from arrays of per-image
confusion counts (``tp``, ``fp``, ``fn`` columns of ``per_image.csv``):

- :func:`sampling_interval`: how far another draw of the test images moves the pooled DSC
  (bootstrap over test images). The authors drew their own 7:3 split; a difference
  inside this interval is as large as a different test half alone makes it.
- :func:`selection_effect`: the authors picked the checkpoint with the lowest loss on
  the test split itself; how much that choice adds over scoring the last epoch, from
  the run's own log (only for runs that selected on test, as the authors did).
- :func:`paired_pooled_difference`: the same images, scored twice (e.g. from the
  recompressed 256-px folder and from the original full-resolution files resized here),
  with a paired bootstrap interval: the effect of the data preparation on scoring.
- an ablation run (the same protocol with one of the authors' habits kept, e.g. their
  one rotation angle per run) scored on the same test images:
  :func:`paired_pooled_difference` again, ablation minus run.
- :func:`random_split_leaks` and :func:`leak_bound`: a plain random 7:3 draw (the
  authors') can put two copies of one image on both sides; how many test images it
  leaks on average, and the most that could add to the pooled DSC.

Pure functions of arrays and frames (no model, no files): :mod:`bench.jobs.paper_gap`
measures the inputs and writes the record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def pooled_dsc(tp: Any, fp: Any, fn: Any) -> float:
    """Pooled Dice ``2 TP / (2 TP + FP + FN)`` over all pixels of all images (a fraction;
    1.0 when there is neither foreground nor a false positive)."""
    t, f_p, f_n = float(np.sum(tp)), float(np.sum(fp)), float(np.sum(fn))
    den = 2 * t + f_p + f_n
    return 2 * t / den if den else 1.0


def _pooled_along(tp: Any, fp: Any, fn: Any, axis: int = -1) -> Any:
    """:func:`pooled_dsc` of count arrays along ``axis`` (scipy's vectorised statistic)."""
    t = tp.sum(axis)
    return 2 * t / (2 * t + fp.sum(axis) + fn.sum(axis))


def _bootstrap(data: tuple, statistic: Any, confidence: float, resamples: int, seed: int) -> Any:
    """:func:`scipy.stats.bootstrap`, paired over ``data``'s arrays (one entry per image,
    so an image's counts are drawn together), percentile interval, seeded."""
    from scipy import stats

    return stats.bootstrap(
        data,
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )


def _counts(frame: pd.DataFrame, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    missing = [c for c in ("tp", "fp", "fn") if c not in frame]
    if missing:
        raise ValueError(
            f"{where}: no per-image confusion counts ({', '.join(missing)} missing); "
            "per_image.csv files written before segbench recorded them lack these columns"
        )
    return tuple(frame[c].to_numpy(np.float64) for c in ("tp", "fp", "fn"))  # type: ignore[return-value]


def sampling_interval(
    per_image: pd.DataFrame,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The pooled DSC and its percentile bootstrap interval over the test images (in
    percentage points around the measured value): how much another test set of the same
    size, drawn from the same pool, moves the figure.

    Resampling images (not pixels) keeps each image's pixels together, as a different
    split would. Uses :func:`scipy.stats.bootstrap` (paired over the three count columns).
    """
    tp, fp, fn = _counts(per_image, "sampling interval")
    dsc = pooled_dsc(tp, fp, fn)
    res = _bootstrap((tp, fp, fn), _pooled_along, confidence, resamples, seed)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {
        "dsc": 100 * dsc,
        "n_images": len(tp),
        "interval_pp": [100 * (lo - dsc), 100 * (hi - dsc)],
        "std_pp": 100 * float(res.standard_error),
        "confidence": confidence,
        "resamples": resamples,
    }


def paired_pooled_difference(
    a: pd.DataFrame,
    b: pd.DataFrame,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Pooled DSC of ``a`` minus that of ``b`` over the images both score (matched by
    ``image_id``), with a paired percentile bootstrap interval (images resampled
    together in both), in percentage points."""
    common = sorted(set(a["image_id"]) & set(b["image_id"]))
    if len(common) < 2:
        raise ValueError(f"{len(common)} image(s) scored both ways: nothing to compare")
    ta, fa, na = _counts(a.set_index("image_id").loc[common], "first scoring")
    tb, fb, nb = _counts(b.set_index("image_id").loc[common], "second scoring")

    def diff(t1, f1, n1, t2, f2, n2, axis=-1):  # noqa: ANN001, ANN202 (scipy's statistic)
        return _pooled_along(t1, f1, n1, axis) - _pooled_along(t2, f2, n2, axis)

    res = _bootstrap((ta, fa, na, tb, fb, nb), diff, confidence, resamples, seed)
    return {
        "a_dsc": 100 * pooled_dsc(ta, fa, na),
        "b_dsc": 100 * pooled_dsc(tb, fb, nb),
        "difference_pp": 100 * (pooled_dsc(ta, fa, na) - pooled_dsc(tb, fb, nb)),
        "interval_pp": [
            100 * float(res.confidence_interval.low),
            100 * float(res.confidence_interval.high),
        ],
        "n_images": len(common),
        "confidence": confidence,
        "resamples": resamples,
    }


def selection_effect(log: pd.DataFrame, best_epoch: int, split: str = "test") -> dict[str, Any]:
    """From a run's ``log.csv`` (validated on ``split``, the test split as the authors
    did; its columns ``<split>_dsc``): the pooled DSC of the selected epoch, of the last
    validated epoch and of the best validated epoch, and the selected minus the last (what
    selecting on that split added over taking the last checkpoint), in percentage points."""
    col = f"{split}_dsc"
    if col not in log or "epoch" not in log:
        raise ValueError(f"log.csv has no epoch / {col} columns")
    scored = log.dropna(subset=[col])
    if scored.empty:
        raise ValueError(f"log.csv holds no epoch validated on {split}")
    by_epoch = scored.set_index("epoch")[col].astype(float)
    if best_epoch not in by_epoch.index:
        raise ValueError(f"selected epoch {best_epoch} was not validated in log.csv")
    last = int(by_epoch.index.max())
    top = int(by_epoch.idxmax())
    return {
        "selected_epoch": int(best_epoch),
        "selected_dsc": 100 * float(by_epoch[best_epoch]),
        "last_epoch": last,
        "last_dsc": 100 * float(by_epoch[last]),
        "best_dsc_epoch": top,
        "best_dsc": 100 * float(by_epoch[top]),
        "effect_pp": 100 * float(by_epoch[best_epoch] - by_epoch[last]),
        "validated_epochs": [int(e) for e in by_epoch.index],
        "dsc_by_epoch": {str(int(e)): 100 * float(v) for e, v in by_epoch.items()},
    }


def random_split_leaks(
    ids: Sequence[str],
    groups: Sequence[Sequence[str]],
    *,
    test_fraction: float = 0.3,
    draws: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """How many test images a plain random split (every image drawn alone, as the
    authors' 7:3 was) leaves with a copy in the training part, over ``draws`` draws.

    ``groups``: the duplicate groups (IDs of copies of one image); members not in
    ``ids`` are ignored."""
    index = {i: k for k, i in enumerate(ids)}
    members = [[index[i] for i in g if i in index] for g in groups]
    members = [m for m in members if len(m) > 1]
    n = len(ids)
    n_test = round(test_fraction * n)
    rng = np.random.default_rng(seed)
    leaked = np.zeros(draws, dtype=np.int64)
    for d in range(draws):
        is_test = np.zeros(n, dtype=bool)
        is_test[rng.permutation(n)[:n_test]] = True
        for m in members:
            t = is_test[m]
            if t.any() and not t.all():
                leaked[d] += int(t.sum())
    return {
        "n_images": n,
        "n_test": n_test,
        "groups": len(members),
        "images_in_groups": int(sum(len(m) for m in members)),
        "leaked_test_images_mean": float(leaked.mean()) if draws else math.nan,
        "leaked_test_images_max": int(leaked.max()) if draws else 0,
        "draws": draws,
    }


def leak_bound(per_image: pd.DataFrame, in_groups: Sequence[str], leaked: float) -> dict[str, Any]:
    """The most a leak of ``leaked`` test images could add to the pooled DSC: that many
    of the test images that have a copy in the pool (``in_groups``; the ones whose errors
    weigh most first) scored perfectly, in percentage points. An upper bound: a leaked
    image is seen in training, not necessarily segmented perfectly."""
    tp, fp, fn = _counts(per_image, "leak bound")
    frame = per_image.assign(err=fp + fn)
    candidates = frame[frame["image_id"].isin(set(in_groups))].sort_values("err", ascending=False)
    k = min(len(candidates), math.ceil(leaked))
    fixed = frame.copy()
    if k:
        pick = candidates.index[:k]
        fixed.loc[pick, "tp"] = fixed.loc[pick, "tp"] + fixed.loc[pick, "fn"]
        fixed.loc[pick, ["fp", "fn"]] = 0
    t2, f2, n2 = _counts(fixed, "leak bound")
    return {
        "test_images_with_copies": len(candidates),
        "images_made_perfect": k,
        "bound_pp": 100 * (pooled_dsc(t2, f2, n2) - pooled_dsc(tp, fp, fn)),
    }


def seed_spread(dsc_by_seed: Mapping[int, float]) -> dict[str, Any]:
    """Sample std (pp) of the pooled DSC over training seeds of one experiment and code;
    ``None`` with fewer than two seeds (the spread is then not measured)."""
    vals = np.array([float(v) for v in dsc_by_seed.values()], dtype=np.float64)
    return {
        "seeds": sorted(int(s) for s in dsc_by_seed),
        "std_pp": float(100 * vals.std(ddof=1)) if len(vals) > 1 else None,
    }
