"""The statistical tests behind :mod:`bench.analysis.stats`: Holm's correction, the paired
per-image comparison (Wilcoxon + BCa bootstrap over images) and the seed-level comparison
(Welch t-test and Welch t interval over per-seed means; a crossed bootstrap over seeds and
images beside it, which is too narrow at few seeds and therefore never decides a claim)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd


def _check_same_images(a: pd.Series, b: pd.Series, name_a: str, name_b: str) -> None:
    only_a = sorted(set(a.index) - set(b.index))
    only_b = sorted(set(b.index) - set(a.index))
    if only_a or only_b:

        def few(ids: list[str]) -> str:
            return ", ".join(ids[:5]) + (f" ... ({len(ids)} in all)" if len(ids) > 5 else "")

        parts = []
        if only_a:
            parts.append(f"only in {name_a}: {few(only_a)}")
        if only_b:
            parts.append(f"only in {name_b}: {few(only_b)}")
        raise ValueError(
            "cannot pair per-image scores: the test image sets differ ("
            + "; ".join(parts)
            + "). Evaluate both on the same split."
        )


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control), same order as input.

    Written here because scipy has only FDR corrections (``false_discovery_control``)
    and statsmodels is not a dependency: sort p ascending, multiply the i-th smallest
    (0-based) by ``m - i``, take the running maximum, clip at 1. NaN entries are left
    NaN and not counted in ``m``.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"holm: expected a 1-D sequence of p-values, got shape {p.shape}")
    finite = ~np.isnan(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p[finite].tolist()}")
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(finite)
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def paired_comparison(
    a: pd.Series | np.ndarray,
    b: pd.Series | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict[str, float]:
    """Paired test of A against B on the same images.

    Series are aligned on their index (image_id) and must cover the same images;
    plain arrays are paired by position. Pairs where either value is not finite (HD95
    of an empty prediction) are dropped; ``n`` counts the pairs used.

    Returns n, mean_a, mean_b, mean_diff (mean of A - B), ci_low / ci_high (paired
    bootstrap, BCa, ``confidence`` level, ``n_resamples`` seeded with ``seed``),
    statistic and p_value (two-sided Wilcoxon signed-rank; p = 1 when every difference
    is zero).
    """
    from scipy import stats

    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        _check_same_images(a, b, f"model {a.name}", f"model {b.name}")
        b = b.reindex(a.index)
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"paired samples must be 1-D and equally long, got {x.shape} and {y.shape}"
        )
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n == 0:
        raise ValueError("no image has a finite value for both models")
    d = x - y
    res = {"n": n, "mean_a": x.mean(), "mean_b": y.mean(), "mean_diff": d.mean()}

    if np.all(d == 0):
        res.update(statistic=0.0, p_value=1.0)
    else:
        w = stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
        res.update(statistic=float(w.statistic), p_value=float(w.pvalue))

    if n < 2:
        res.update(ci_low=math.nan, ci_high=math.nan)
    elif np.ptp(d) == 0:  # every resample has the same mean; BCa is undefined there
        res.update(ci_low=d[0], ci_high=d[0])
    else:
        boot = stats.bootstrap(
            (x, y),
            lambda u, v, axis: np.mean(u - v, axis=axis),
            paired=True,
            vectorized=True,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
        res.update(ci_low=boot.confidence_interval.low, ci_high=boot.confidence_interval.high)
    return {k: float(v) if k != "n" else int(v) for k, v in res.items()}


#: below this many seeds per model the crossed bootstrap's intervals are too narrow (3
#: seeds give only 10 distinct resampled seed sets): it is shown, marked unreliable,
#: and the Welch t interval over seed means is the one that decides a claim
MIN_SEEDS_BOOTSTRAP = 5


def crossed_bootstrap_ci(
    a: np.ndarray,
    b: np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of mean(A) - mean(B) resampling seeds and images, *crossed*.

    ``a`` (seeds_a, images) and ``b`` (seeds_b, images) hold per-image scores on the same
    images (same column order). The design is crossed, not nested: every seed of every
    model scored the same images. Each resample draws images with replacement (one draw
    shared by both models and all seeds) and, independently per model, seeds with
    replacement; the statistic is the mean over the drawn seeds of the mean over the
    drawn images. Written here because scipy's ``bootstrap`` resamples one level only.
    With fewer than :data:`MIN_SEEDS_BOOTSTRAP` seeds the seed draw has too few distinct
    outcomes and the interval is too narrow; :func:`seed_level_comparison` then relies
    on :func:`welch_ci`.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"expected (seeds, images) arrays over the same images, got {a.shape}, {b.shape}"
        )
    rng = np.random.default_rng(seed)
    n_img, sa, sb = a.shape[1], a.shape[0], b.shape[0]
    diffs = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // max(n_img, 1))  # bounded memory for large test sets
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        w = rng.multinomial(n_img, np.full(n_img, 1 / n_img), size=r)  # image counts
        ca = rng.multinomial(sa, np.full(sa, 1 / sa), size=r)  # seed counts, model A
        cb = rng.multinomial(sb, np.full(sb, 1 / sb), size=r)
        ma = (w @ a.T) / n_img  # (r, sa): each seed's mean over the drawn images
        mb = (w @ b.T) / n_img
        diffs[start : start + r] = (ca * ma).sum(1) / sa - (cb * mb).sum(1) / sb
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [tail, 1 - tail])
    return float(lo), float(hi)


def seed_level_comparison(
    a: pd.DataFrame | np.ndarray,
    b: pd.DataFrame | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict[str, float]:
    """Test A against B over training seeds: Welch t-test and Welch t interval.

    ``a`` / ``b``: per-image scores, rows = seeds, columns = images (DataFrames are
    aligned on their columns, the image ids, and must cover the same images). Images
    with a non-finite value in any seed of either model are dropped; ``n`` counts the
    images used. Returns n, n_seeds_a, n_seeds_b, mean_a, mean_b (grand means), mean_diff
    (A - B), statistic and p_value (two-sided Welch t-test on the per-seed means: the seed
    is the unit of replication; NaN when neither model varies over seeds), ci_low /
    ci_high (:func:`welch_ci`, honest at 2-4 seeds: wide, as the data allow) and
    boot_low / boot_high (:func:`crossed_bootstrap_ci`, shown beside it; too narrow below
    :data:`MIN_SEEDS_BOOTSTRAP` seeds).
    """
    from scipy import stats

    if isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame):
        _check_same_images(
            pd.Series(index=a.columns, dtype=float), pd.Series(index=b.columns, dtype=float),
            "model A", "model B",
        )  # fmt: skip
        b = b[a.columns]
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"expected (seeds, images) arrays over the same images, got {x.shape}, {y.shape}"
        )
    keep = np.isfinite(x).all(0) & np.isfinite(y).all(0)
    x, y = x[:, keep], y[:, keep]
    if x.shape[1] == 0:
        raise ValueError("no image has a finite value in every seed of both models")
    if min(len(x), len(y)) < 2:
        raise ValueError("a test over seeds needs at least two seeds per model")
    sx, sy = x.mean(1), y.mean(1)
    res: dict[str, float] = {
        "n": int(x.shape[1]),
        "n_seeds_a": len(x),
        "n_seeds_b": len(y),
        "mean_a": float(sx.mean()),
        "mean_b": float(sy.mean()),
        "mean_diff": float(sx.mean() - sy.mean()),
    }
    if np.ptp(sx) == 0 and np.ptp(sy) == 0:
        d = float(sx.mean() - sy.mean())  # no spread over seeds: test undefined, CI a point
        res.update(statistic=math.nan, p_value=math.nan, ci_low=d, ci_high=d)
    else:
        t = stats.ttest_ind(sx, sy, equal_var=False)
        lo, hi = welch_ci(sx, sy, confidence)
        res.update(statistic=float(t.statistic), p_value=float(t.pvalue), ci_low=lo, ci_high=hi)
    blo, bhi = crossed_bootstrap_ci(x, y, confidence=confidence, n_resamples=n_resamples, seed=seed)
    res.update(boot_low=blo, boot_high=bhi)
    return res


def welch_ci(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Welch t interval of mean(a) - mean(b) over per-seed means (unequal variances,
    Welch-Satterthwaite degrees of freedom), from :func:`scipy.stats.ttest_ind`. At 3
    seeds per model it is wide, which is what 3 seeds can tell."""
    from scipy import stats

    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level=confidence)
    return float(ci.low), float(ci.high)
