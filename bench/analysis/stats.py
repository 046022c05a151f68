"""Paired statistics between models: is model A really better than model B?

Both are scored on the same test images, so the comparison is paired:
:func:`pairwise_comparisons` joins the runs' ``per_image.csv`` on ``image_id`` (and
refuses when the image sets differ) and gives, per pair, a Wilcoxon signed-rank test on
the per-image differences (:func:`scipy.stats.wilcoxon`, zero differences dropped, exact
p-value for small samples without ties), a bootstrap 95% confidence interval of the mean
difference (:func:`scipy.stats.bootstrap`, paired resampling of images, BCa, seeded) and
the Holm-adjusted p-value across all pairs. Only runs of one experiment (recipe, epochs)
are compared: by default the one with the most epochs that every model has
(:func:`bench.analysis.runs.choose_experiment`). With several seeds per model the
per-image values are first averaged over seeds (or one ``--seed`` is chosen). The table
goes to ``results/stats/<dataset>_<recipe>-e<epochs>_pairwise.{csv,json}``; the report
marks a difference significant when ``p_holm < alpha``.

``mean_diff = mean(A - B)``: positive means A scores higher (better for Dice / IoU,
worse for HD95).

CLI: ``segbench compare A B [--dataset D] [--recipe R] [--epochs E] [--seed K]`` prints
one comparison; ``segbench compare --all --dataset D`` compares every pair and writes
the table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis.runs import _command, choose_experiment, experiment_label, find_runs
from bench.core.io import write_csv, write_json

PAIRWISE_COLUMNS = [
    "model_a",
    "model_b",
    "n",
    "mean_a",
    "mean_b",
    "mean_diff",
    "ci_low",
    "ci_high",
    "statistic",
    "p_value",
    "p_holm",
    "significant",
]


def load_per_image(
    results_dir: str | Path,
    dataset: str,
    model: str,
    seed: int | None = None,
    metric: str = "dice",
    recipe: str | None = None,
    epochs: int | None = None,
) -> pd.Series:
    """Per-image ``metric`` of one model in one experiment, indexed by image_id.

    With ``seed=None`` the values are averaged over every finished seed (which must all
    have scored the same images); ``series.attrs["seeds"]`` lists the seeds used.
    ``recipe`` / ``epochs`` pick the experiment; they may be left out only when the
    model has runs of a single experiment on ``dataset`` (never mixed).
    """
    runs = find_runs(results_dir, dataset=dataset, model=model, recipe=recipe, epochs=epochs)
    if seed is not None:
        runs = runs[runs["seed"] == seed]
    exps = sorted(set(runs["experiment"]))
    if len(exps) > 1:
        raise ValueError(
            f"model {model!r} on dataset {dataset!r} has runs of several experiments "
            f"({', '.join(exps)}); choose one with recipe/epochs (--recipe, --epochs)"
        )
    if runs.empty:
        which = f"seed {seed}" if seed is not None else "any seed"
        if recipe is not None or epochs is not None:
            which += f", recipe {recipe or 'any'}, epochs {epochs or 'any'}"
        known = find_runs(results_dir, dataset=dataset)
        have = ", ".join(sorted(set(known["model"]))) or "none"
        raise FileNotFoundError(
            f"no finished run of model {model!r} on dataset {dataset!r} ({which}) under "
            f"{Path(results_dir) / 'runs'}; models with finished runs there: {have}"
        )
    per_seed = []
    for run_dir, s in zip(runs["run_dir"], runs["seed"]):
        path = Path(run_dir) / "per_image.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (the run finished without per-image scores)")
        df = pd.read_csv(path, dtype={"image_id": str})
        for col in ("image_id", metric):
            if col not in df.columns:
                raise ValueError(
                    f"{path}: no column {col!r} (columns: {', '.join(map(str, df.columns))})"
                )
        if df["image_id"].duplicated().any():
            dup = df.loc[df["image_id"].duplicated(), "image_id"].iloc[0]
            raise ValueError(f"{path}: image_id {dup!r} appears more than once")
        per_seed.append((s, path, df.set_index("image_id")[metric].astype(float)))
    _, first_path, first = per_seed[0]
    for _, path, values in per_seed[1:]:
        _check_same_images(first, values, str(first_path), str(path))
    mean = pd.concat([v for _, _, v in per_seed], axis=1).mean(axis=1)
    mean.name = model
    mean.attrs["seeds"] = [int(s) for s, _, _ in per_seed]
    mean.attrs["experiment"] = exps[0]
    return mean.sort_index()


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


def pairwise_comparisons(
    results_dir: str | Path = "results",
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    *,
    seed: int | None = None,
    recipe: str | None = None,
    epochs: int | None = None,
    metric: str = "dice",
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    rng_seed: int = 0,
    write: bool = True,
) -> pd.DataFrame:
    """Every pair of models on one dataset and experiment, Holm-corrected across the pairs.

    Only runs of one experiment (recipe, epochs) are compared, chosen by
    :func:`choose_experiment` (default: the most epochs every model has; ``recipe`` /
    ``epochs`` narrow the choice). ``models`` defaults to every model with a finished
    run of that experiment (sorted by name; A is the first of each pair). With
    ``write`` the table goes to ``<results>/stats/<dataset>_<recipe>-e<epochs>_pairwise.csv``
    and, with the command, machine, versions and parameters, to ``..._pairwise.json``.

    Columns: :data:`PAIRWISE_COLUMNS` plus seeds_a, seeds_b, metric, dataset, recipe
    and epochs.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    results_dir = Path(results_dir)
    runs = find_runs(results_dir)
    if dataset is None:
        found = sorted(set(runs["dataset"]))
        if len(found) != 1:
            raise ValueError(
                "give a dataset: finished runs exist for "
                + (", ".join(found) if found else f"no dataset under {results_dir / 'runs'}")
            )
        dataset = found[0]
    on_ds = runs[runs["dataset"] == dataset]
    names = sorted(set(on_ds["model"])) if models is None else list(models)
    if len(set(names)) < 2:
        raise ValueError(
            f"need at least two models with finished runs on dataset {dataset!r} "
            f"under {results_dir / 'runs'}, found: {', '.join(names) or 'none'}"
        )
    missing = [m for m in names if m not in set(on_ds["model"])]
    if missing:
        raise FileNotFoundError(
            f"no finished run of model(s) {', '.join(missing)} on dataset {dataset!r} under "
            f"{results_dir / 'runs'}; models with finished runs there: "
            f"{', '.join(sorted(set(on_ds['model']))) or 'none'}"
        )
    recipe, epochs = choose_experiment(on_ds, dataset, models, recipe, epochs)
    if models is None:
        exp = on_ds[(on_ds["recipe"] == recipe) & (on_ds["epochs"] == epochs)]
        names = sorted(set(exp["model"]))
    scores = {
        m: load_per_image(
            results_dir, dataset, m, seed=seed, metric=metric, recipe=recipe, epochs=epochs
        )
        for m in names
    }
    rows = []
    for ma, mb in itertools.combinations(names, 2):
        r = paired_comparison(
            scores[ma], scores[mb], confidence=confidence, n_resamples=n_resamples, seed=rng_seed
        )
        rows.append(
            {
                "model_a": ma,
                "model_b": mb,
                **r,
                "seeds_a": ",".join(map(str, scores[ma].attrs["seeds"])),
                "seeds_b": ",".join(map(str, scores[mb].attrs["seeds"])),
                "metric": metric,
                "dataset": dataset,
                "recipe": recipe,
                "epochs": epochs,
            }
        )
    df = pd.DataFrame(rows)
    df["p_holm"] = holm(df["p_value"].to_numpy())
    df["significant"] = df["p_holm"] < alpha
    df = df[PAIRWISE_COLUMNS + ["seeds_a", "seeds_b", "metric", "dataset", "recipe", "epochs"]]
    if write:
        from bench.core.env import environment

        csv_path = pairwise_path(results_dir, dataset, recipe, epochs)
        write_csv(csv_path, df)
        write_json(
            csv_path.with_name(csv_path.stem + ".json"),
            {
                "command": _command(),
                "dataset": dataset,
                "recipe": recipe,
                "epochs": epochs,
                "parameters": {
                    "metric": metric,
                    "seed": seed if seed is not None else "all seeds averaged per image",
                    "alpha": alpha,
                    "confidence": confidence,
                    "n_resamples": n_resamples,
                    "rng_seed": rng_seed,
                    "test": "two-sided Wilcoxon signed-rank (scipy.stats.wilcoxon, zero_method=wilcox)",
                    "ci": "paired bootstrap of the mean difference (scipy.stats.bootstrap, BCa)",
                    "correction": "Holm across all pairs of this table",
                },
                "environment": environment(),
                "rows": df.to_dict(orient="records"),
            },
        )
    return df


def pairwise_path(results_dir: str | Path, dataset: str, recipe: str, epochs: int) -> Path:
    """``<results>/stats/<dataset>_<recipe>-e<epochs>_pairwise.csv``."""
    name = f"{dataset}_{experiment_label(recipe, epochs)}_pairwise.csv"
    return Path(results_dir) / "stats" / name
