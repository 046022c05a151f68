"""Paired statistics between models on the same test images, claimed only at the level tested.

Both models are scored on the same test images, so image-level comparisons are paired.
But a difference between two *models* is a claim about training runs: one run per model
says nothing about the next seed. So each comparison says at which level it was tested:

* **over seeds** (both models have >= :data:`MIN_SEEDS` finished seeds): a Welch t-test
  on the per-seed means (:func:`scipy.stats.ttest_ind`, ``equal_var=False``; the seed is
  the unit of replication) and the Welch t interval of the difference of the seed means
  (:func:`welch_ci`), which is honest at 3 seeds (wide). A crossed bootstrap over seeds
  and images (:func:`crossed_bootstrap_ci`; "crossed": every seed of both models scored
  the same images) is shown beside it (``boot_low`` / ``boot_high``) but decides nothing:
  below :data:`MIN_SEEDS_BOOTSTRAP` seeds its intervals are too narrow. A difference is
  *significant* only when the Holm-adjusted p-value is below alpha **and** the Welch
  interval excludes 0; where the two disagree, both are shown and nothing is claimed.
* **per image** (fewer seeds): the per-image scores (averaged over the seeds there are)
  get a Wilcoxon signed-rank test and a paired BCa bootstrap interval over images
  (:func:`paired_comparison`). Such a row is labelled "one training run, per-image test"
  (or "fewer than 3 seeds, per-image test") and is never called significant.

Holm's correction (:func:`holm`) runs across the rows that can be claimed, the tests
over seeds, and only those: per-image rows keep their unadjusted p (``p_holm`` NaN), since
they are never claimed. ``holm_family`` gives the family's size. Only runs of
one experiment per model are compared (one configuration except the seed, one
precision; see :data:`bench.analysis.runs.EXPERIMENT_KEY`), chosen by
:func:`bench.analysis.runs.choose_experiment` (recipe, epochs) and, where a model has
several experiments there, ``precision`` (default: fp32 when present).
:func:`pairwise_comparisons` writes
``results/stats/<dataset>_<recipe>-e<epochs>_pairwise.{csv,json}``.

``mean_diff = mean(A) - mean(B)``, printed as "A - B": positive means A scores higher (better for Dice / IoU,
worse for HD95).

CLI: ``segbench compare A B [--dataset D] [--recipe R] [--epochs E] [--precision P]
[--seed K]`` prints one comparison; ``segbench compare --all --dataset D`` compares every
pair and writes the table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis.paired import (  # noqa: F401  (holm, ...: re-exported, part of this API)
    MIN_SEEDS_BOOTSTRAP,
    _check_same_images,
    crossed_bootstrap_ci,
    holm,
    paired_comparison,
    seed_level_comparison,
    welch_ci,
)
from bench.analysis.runinfo import with_run_info
from bench.analysis.runs import (
    EXPERIMENT_KEY,
    _command,
    choose_experiment,
    experiment_differences,
    experiment_label,
    find_runs,
)
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

#: columns after :data:`PAIRWISE_COLUMNS`: how each row was tested, and what it claims
LEVEL_COLUMNS = [
    "level",
    "n_seeds_a",
    "n_seeds_b",
    "test",
    "ci_method",
    "boot_low",
    "boot_high",
    "holm_family",
    "claim",
    "note",
]

#: the rule that decides a claim; recorded in every stats file, so a file written under
#: an older rule is recognised as stale (the report lists it, see report.inventory)
STATS_RULE = (
    "v2: Welch t-test and Welch t interval over per-seed means (>= 3 seeds per model), "
    "Holm over those tests only; crossed bootstrap shown, not used"
)

#: seeds per model needed for a test over seeds (below it: per-image test, no claim)
MIN_SEEDS = 3

LEVEL_SEEDS = "over seeds"
ONE_RUN = "one training run, per-image test"
FEW_SEEDS = f"fewer than {MIN_SEEDS} seeds, per-image test"

_TEST_SEEDS = "Welch t-test over per-seed means"
_CI_SEEDS = "Welch t interval over per-seed means"
_BOOT_SEEDS = (
    "crossed bootstrap over seeds and images (percentile; too narrow below "
    f"{MIN_SEEDS_BOOTSTRAP} seeds, shown only)"
)
_TEST_IMAGES = "Wilcoxon signed-rank over images (per-image scores averaged over seeds)"
_CI_IMAGES = "paired bootstrap over images (BCa)"


def select_runs(
    runs: pd.DataFrame,
    dataset: str,
    model: str,
    recipe: str | None = None,
    epochs: int | None = None,
    precision: str | None = None,
    seed: int | None = None,
) -> pd.DataFrame:
    """The finished runs (:func:`find_runs` rows) of one experiment of ``model``.

    Narrowed by ``recipe`` / ``epochs`` / ``precision`` / ``seed``. When several
    experiments remain and ``precision`` was not given, fp32 ones are preferred; when
    several still remain (e.g. runs that differ in ``lr``), ValueError names what
    differs. FileNotFoundError when nothing is left.
    """
    rows = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
    if recipe is not None:
        rows = rows[rows["recipe"] == recipe]
    if epochs is not None:
        rows = rows[rows["epochs"] == epochs]
    if precision is not None:
        rows = rows[rows["precision"] == precision]
    if seed is not None:
        rows = rows[rows["seed"] == seed]
    if rows.empty:
        which = f"seed {seed}" if seed is not None else "any seed"
        if recipe is not None or epochs is not None or precision is not None:
            which += (
                f", recipe {recipe or 'any'}, epochs {epochs or 'any'}, "
                f"precision {precision or 'any'}"
            )
        have = ", ".join(sorted(set(runs.loc[runs["dataset"] == dataset, "model"]))) or "none"
        raise FileNotFoundError(
            f"no finished run of model {model!r} on dataset {dataset!r} ({which}); "
            f"models with finished runs there: {have}"
        )
    groups = rows.groupby(EXPERIMENT_KEY, sort=True, dropna=False)
    if groups.ngroups > 1 and precision is None and (rows["precision"] == "fp32").any():
        rows = rows[rows["precision"] == "fp32"]
        groups = rows.groupby(EXPERIMENT_KEY, sort=True, dropna=False)
    if groups.ngroups > 1:
        diff = "; ".join(experiment_differences(rows)) or ", ".join(sorted(set(rows["experiment"])))
        raise ValueError(
            f"model {model!r} on dataset {dataset!r} has runs of several experiments ({diff}); "
            "choose one with recipe/epochs/precision (--recipe, --epochs, --precision), or "
            "move the runs of the others out of the results folder"
        )
    _check_one_fingerprint(rows, model, dataset)
    return rows


def _check_one_fingerprint(rows: pd.DataFrame, model: str, dataset: str) -> None:
    """Seeds are pooled only within one training-code fingerprint: ValueError naming
    the seeds of each when the runs recorded several (runs older than the fingerprint,
    "unrecorded", pool with each other only)."""
    info = with_run_info(rows)
    fps = sorted(set(info["fingerprint"]))
    if len(fps) > 1:
        parts = [
            f"{fp}: seed(s) {', '.join(map(str, sorted(info.loc[info['fingerprint'] == fp, 'seed'])))}"
            for fp in fps
        ]
        raise ValueError(
            f"model {model!r} on dataset {dataset!r}: the seeds come from {len(fps)} code "
            f"fingerprints ({'; '.join(parts)}); seeds are pooled only within one. Choose "
            "one with --seed, or move the others' runs out of the results folder"
        )


def per_image_matrix(runs: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Per-image ``metric`` of the given runs (one experiment): rows = seeds, columns =
    image_id (sorted). Every run must have scored the same images."""
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
        per_seed.append((int(s), path, df.set_index("image_id")[metric].astype(float)))
    if not per_seed:
        raise ValueError("no runs given")
    _, first_path, first = per_seed[0]
    for _, path, values in per_seed[1:]:
        _check_same_images(first, values, str(first_path), str(path))
    mat = pd.DataFrame({s: v for s, _, v in per_seed}).T.sort_index(axis=1)
    mat.index.name = "seed"
    return mat


def load_per_image(
    results_dir: str | Path,
    dataset: str,
    model: str,
    seed: int | None = None,
    metric: str = "dice",
    recipe: str | None = None,
    epochs: int | None = None,
    precision: str | None = None,
) -> pd.Series:
    """Per-image ``metric`` of one model in one experiment, indexed by image_id.

    With ``seed=None`` the values are averaged over every finished seed (which must all
    have scored the same images); ``series.attrs["seeds"]`` lists the seeds used.
    The experiment is chosen by :func:`select_runs` (never mixed).
    """
    runs = select_runs(
        find_runs(results_dir, dataset=dataset), dataset, model, recipe, epochs, precision, seed
    )
    mat = per_image_matrix(runs, metric)
    mean = mat.mean(axis=0)
    mean.name = model
    mean.attrs["seeds"] = [int(s) for s in mat.index]
    mean.attrs["experiment"] = str(runs["experiment"].iloc[0])
    return mean.sort_index()


def compare_pair(
    a: pd.DataFrame,
    b: pd.DataFrame,
    *,
    min_seeds: int = MIN_SEEDS,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict[str, object]:
    """One comparison at the level the seeds allow (see the module doc); no Holm yet.

    ``a`` / ``b`` are :func:`per_image_matrix` frames. Both with >= ``min_seeds`` seeds:
    :func:`seed_level_comparison`; otherwise :func:`paired_comparison` of the per-image
    scores averaged over seeds, labelled with its level.
    """
    na, nb = len(a), len(b)
    if min(na, nb) >= min_seeds:
        r: dict[str, object] = dict(
            seed_level_comparison(a, b, confidence=confidence, n_resamples=n_resamples, seed=seed)
        )
        r.update(level=LEVEL_SEEDS, test=_TEST_SEEDS, ci_method=_CI_SEEDS)
        return r
    # the per-image rows have no bootstrap over seeds: their CI is the one over images
    sa, sb = a.mean(axis=0), b.mean(axis=0)
    sa.name, sb.name = "A", "B"
    r = dict(paired_comparison(sa, sb, confidence=confidence, n_resamples=n_resamples, seed=seed))
    r.update(
        n_seeds_a=na,
        n_seeds_b=nb,
        level=ONE_RUN if min(na, nb) == 1 else FEW_SEEDS,
        test=_TEST_IMAGES,
        ci_method=_CI_IMAGES,
    )
    return r


def finalize_comparisons(df: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Holm across the rows tested over seeds (the claimable family), then what each
    row may claim.

    ``p_holm`` is the Holm-adjusted p over the rows with ``level`` "over seeds" only;
    per-image rows are never claimed and keep NaN there (their ``p_value`` stays, as
    description). ``holm_family`` is the family's size. ``significant`` is True only
    for rows tested over seeds whose Holm-adjusted p-value is below ``alpha`` and whose
    CI excludes 0. ``claim`` says so in words: "significant", "not significant", or,
    for per-image rows, "none: <level>" (never "significant"). ``note`` shows both
    numbers where the test and the CI disagree.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    df = df.copy()
    if df.empty:
        for col in ("p_holm", "holm_family", "significant", "claim", "note"):
            df[col] = pd.Series(dtype=object)
        return df
    claimable = (df["level"] == LEVEL_SEEDS).to_numpy()
    p_raw = pd.to_numeric(df["p_value"], errors="coerce").to_numpy(dtype=float)
    adjusted = holm(p_raw[claimable])
    p_holm = np.full(len(df), np.nan)
    p_holm[claimable] = adjusted
    df["p_holm"] = p_holm
    family = int(np.isfinite(adjusted).sum())
    df["holm_family"] = [family if c else 0 for c in claimable]
    claims, notes, sig = [], [], []
    for _, r in df.iterrows():
        lo, hi, p = float(r["ci_low"]), float(r["ci_high"]), float(r["p_holm"])
        excludes = (lo > 0 or hi < 0) if math.isfinite(lo) and math.isfinite(hi) else False
        tested = math.isfinite(p) and p < alpha
        note = r.get("note") if "note" in df else ""
        note = note if isinstance(note, str) else ""
        if r["level"] != LEVEL_SEEDS:
            sig.append(False)
            claims.append(f"none: {r['level']}")
        else:
            sig.append(tested and excludes)
            claims.append("significant" if tested and excludes else "not significant")
            if tested != excludes:
                # in the units of the report's CI column: Dice/IoU in pp, HD95 in px
                k, unit = (1.0, " px") if r.get("metric") == "hd95" else (100.0, " pp")
                ci = f"CI [{k * lo:+.2f}, {k * hi:+.2f}]{unit}"
                p_un = float(r["p_value"])
                why = (
                    f"test: p {p_un:.3g}, Holm p {p:.3g} (over {family} tests) "
                    f"{'<' if tested else '>='} {alpha:g}; "
                    f"{ci} {'excludes' if excludes else 'includes'} 0"
                )
                if not math.isfinite(p):
                    why = f"test undefined (no spread over seeds); {ci}"
                note = "; ".join(x for x in (note, f"test and CI disagree ({why})") if x)
        notes.append(note)
    df["significant"] = sig
    df["claim"] = claims
    df["note"] = notes
    return df


def compare_models(
    scores: dict[str, pd.DataFrame],
    pairs: Sequence[tuple[str, str]] | None = None,
    *,
    alpha: float = 0.05,
    min_seeds: int = MIN_SEEDS,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    rng_seed: int = 0,
    finalize: bool = True,
) -> pd.DataFrame:
    """Every pair (or ``pairs``) of ``scores`` (name -> :func:`per_image_matrix`) compared
    with :func:`compare_pair`; Holm across the rows (:func:`finalize_comparisons`) unless
    ``finalize=False`` (the caller pools rows of several tables first).

    A pair that cannot be compared (different image sets, no finite value) becomes a row
    with NaN statistics and the reason in ``note``.
    """
    names = list(scores)
    pairs = list(itertools.combinations(names, 2)) if pairs is None else list(pairs)
    rows = []
    for ma, mb in pairs:
        row: dict[str, object] = {"model_a": ma, "model_b": mb}
        try:
            row.update(
                compare_pair(
                    scores[ma],
                    scores[mb],
                    min_seeds=min_seeds,
                    confidence=confidence,
                    n_resamples=n_resamples,
                    seed=rng_seed,
                )
            )
        except ValueError as err:
            row.update(
                n_seeds_a=len(scores[ma]),
                n_seeds_b=len(scores[mb]),
                level="not compared",
                p_value=math.nan,
                ci_low=math.nan,
                ci_high=math.nan,
                note=str(err),
            )
        rows.append(row)
    df = pd.DataFrame(rows, columns=[*PAIRWISE_COLUMNS, *LEVEL_COLUMNS])
    df = df.drop(columns=["p_holm", "holm_family", "significant", "claim"])
    return finalize_comparisons(df, alpha) if finalize else df


def pairwise_comparisons(
    results_dir: str | Path = "results",
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    *,
    seed: int | None = None,
    recipe: str | None = None,
    epochs: int | None = None,
    precision: str | None = None,
    metric: str = "dice",
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    rng_seed: int = 0,
    write: bool = True,
) -> pd.DataFrame:
    """Every pair of models on one dataset and experiment, Holm-corrected across the pairs.

    The experiment (recipe, epochs) is chosen by :func:`choose_experiment` (default: the
    most epochs every model has), each model's runs in it by :func:`select_runs`
    (``precision``; default fp32 where a model has several). ``models`` defaults to
    every model with a finished run of that experiment (sorted by name; A is the first
    of each pair). Each pair is tested at the level its seeds allow (module doc); with
    ``seed`` one seed per model is used, so every row is a per-image test. With ``write``
    the table goes to ``<results>/stats/<dataset>_<recipe>-e<epochs>_pairwise.csv`` and,
    with the command, machine, versions and parameters, to ``..._pairwise.json``.

    Columns: :data:`PAIRWISE_COLUMNS`, :data:`LEVEL_COLUMNS`, then seeds_a, seeds_b,
    precision_a, precision_b, metric, dataset, recipe and epochs.
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
    if precision is not None:
        on_ds = on_ds[on_ds["precision"] == precision]
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
    chosen = {m: select_runs(on_ds, dataset, m, recipe, epochs, precision, seed) for m in names}
    scores = {m: per_image_matrix(r, metric) for m, r in chosen.items()}
    df = compare_models(
        scores,
        alpha=alpha,
        confidence=confidence,
        n_resamples=n_resamples,
        rng_seed=rng_seed,
    )
    df["seeds_a"] = [",".join(map(str, scores[m].index)) for m in df["model_a"]]
    df["seeds_b"] = [",".join(map(str, scores[m].index)) for m in df["model_b"]]
    df["precision_a"] = [str(chosen[m]["precision"].iloc[0]) for m in df["model_a"]]
    df["precision_b"] = [str(chosen[m]["precision"].iloc[0]) for m in df["model_b"]]
    df = df.assign(metric=metric, dataset=dataset, recipe=recipe, epochs=epochs)
    df = df[
        PAIRWISE_COLUMNS
        + LEVEL_COLUMNS
        + [
            "seeds_a",
            "seeds_b",
            "precision_a",
            "precision_b",
            "metric",
            "dataset",
            "recipe",
            "epochs",
        ]
    ]
    if write:
        from bench.core.env import environment

        csv_path = pairwise_path(results_dir, dataset, recipe, epochs)
        write_csv(csv_path, df)
        write_json(
            csv_path.with_name(csv_path.stem + ".json"),
            {
                "command": _command(),
                "rule": STATS_RULE,
                "dataset": dataset,
                "recipe": recipe,
                "epochs": epochs,
                "parameters": {
                    "metric": metric,
                    "seed": seed if seed is not None else "all seeds",
                    "precision": precision or "fp32 where a model has several",
                    "alpha": alpha,
                    "confidence": confidence,
                    "n_resamples": n_resamples,
                    "rng_seed": rng_seed,
                    "min_seeds_for_a_test_over_seeds": MIN_SEEDS,
                    "test_over_seeds": _TEST_SEEDS + " (scipy.stats.ttest_ind, equal_var=False)",
                    "ci_over_seeds": _CI_SEEDS + " (scipy ttest_ind confidence_interval)",
                    "bootstrap_over_seeds": _BOOT_SEEDS,
                    "test_per_image": _TEST_IMAGES + " (scipy.stats.wilcoxon, zero_method=wilcox)",
                    "ci_per_image": _CI_IMAGES + " (scipy.stats.bootstrap)",
                    "correction": "Holm across the rows of this table tested over seeds "
                    "(per-image rows are never claimed and not adjusted)",
                    "significant": "tested over seeds, Holm p < alpha and CI excludes 0",
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
