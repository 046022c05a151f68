"""Statistics over finished runs: mean +- std over seeds, and paired tests between models.

Two questions a benchmark table has to answer honestly:

* **How stable is a number?** :func:`aggregate_runs` reads every finished run under
  ``results/runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/metrics.json`` and gives,
  per dataset, model and experiment (recipe, epochs: protocols never mix), the mean, the
  sample standard deviation (ddof=1; empty for a single seed) and ``n`` over seeds.
  :func:`write_summary` stores it as ``results/tables/sweep_summary.{csv,md,json}``.

* **Is model A really better than model B?** Both are scored on the same test images,
  so the comparison is paired: :func:`pairwise_comparisons` joins the runs'
  ``per_image.csv`` on ``image_id`` (and refuses when the image sets differ) and gives,
  per pair, a Wilcoxon signed-rank test on the per-image differences
  (:func:`scipy.stats.wilcoxon`, zero differences dropped, exact p-value for small
  samples without ties), a bootstrap 95% confidence interval of the mean difference
  (:func:`scipy.stats.bootstrap`, paired resampling of images, BCa, seeded) and the
  Holm-adjusted p-value across all pairs. Only runs of one experiment (recipe, epochs)
  are compared: by default the one with the most epochs that every model has
  (:func:`choose_experiment`). With several seeds per model the per-image values are
  first averaged over seeds (or one ``--seed`` is chosen). The table goes to
  ``results/stats/<dataset>_<recipe>-e<epochs>_pairwise.{csv,json}``; the report marks
  a difference significant when ``p_holm < alpha``.

``mean_diff = mean(A - B)``: positive means A scores higher (better for Dice / IoU,
worse for HD95).

CLI: ``segbench compare A B [--dataset D] [--recipe R] [--epochs E] [--seed K]`` prints
one comparison; ``segbench compare --all --dataset D`` compares every pair and writes
the table.
"""

from __future__ import annotations

import argparse
import itertools
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.io import read_json, write_csv, write_json, write_text

__all__ = [
    "PAIRWISE_COLUMNS",
    "SUMMARY_METRICS",
    "aggregate_runs",
    "choose_experiment",
    "find_runs",
    "holm",
    "load_per_image",
    "paired_comparison",
    "pairwise_comparisons",
    "pairwise_path",
    "register",
    "summary_markdown",
    "write_summary",
]

# Test-split metrics summarised over seeds (keys of metrics.json["test"]).
SUMMARY_METRICS = (
    "dsc",
    "miou",
    "dice_mean",
    "iou_mean",
    "hd95_mean",
    "hd95_median",
    "isic_jaccard",
    "acc",
    "sen",
    "spe",
)
_RUN_EXTRAS = ("train_images_per_s", "epoch_time_s")
# Per-run spread over test images (std of per-image Dice / IoU); read, not aggregated.
_PER_IMAGE_SPREAD = ("dice_std", "iou_std")
# Metrics shown as percentages in Markdown (fractions in CSV/JSON, as in metrics.json).
_PERCENT = {"dsc", "miou", "dice_mean", "iou_mean", "isic_jaccard", "acc", "sen", "spe"}
_GROUP = ["dataset", "model", "recipe", "epochs"]

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


# ----------------------------------------------------------------------------- runs


# runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/ (bench.train.run_dir_for)
RUN_METRICS_GLOB = "runs/*/*/*/seed*/metrics.json"


def _metrics_files(results_dir: str | Path) -> list[Path]:
    return sorted(Path(results_dir).glob(RUN_METRICS_GLOB))


def experiment_label(recipe: Any, epochs: Any) -> str:
    """``<recipe>-e<epochs>``, the experiment part of a run folder (display form)."""
    return f"{recipe}-e{epochs}"


def find_runs(
    results_dir: str | Path = "results",
    dataset: str | None = None,
    model: str | None = None,
    recipe: str | None = None,
    epochs: int | None = None,
) -> pd.DataFrame:
    """One row per finished run (``metrics.json`` with ``status == "finished"``).

    Columns: dataset, model, seed, recipe, epochs, experiment (``<recipe>-e<epochs>``),
    config_hash, run_dir, the test metrics of :data:`SUMMARY_METRICS` (NaN where a run
    lacks one), n_images, train_images_per_s, epoch_time_s, device_name, torch_version.
    The arguments other than ``results_dir`` keep only matching runs.
    """
    rows = []
    for path in _metrics_files(results_dir):
        m = read_json(path)  # a malformed file raises ValueError naming it
        if not isinstance(m, dict) or m.get("status") != "finished":
            continue  # a run in progress or an interrupted one
        run_dir = path.parent
        # The folder names are where the engine put the run; metrics.json says what it is.
        ds = str(m.get("dataset") or run_dir.parents[2].name)
        mdl = str(m.get("model") or run_dir.parents[1].name)
        rcp = str(m.get("recipe", ""))
        ep = m.get("epochs")
        if (
            (dataset is not None and ds != dataset)
            or (model is not None and mdl != model)
            or (recipe is not None and rcp != recipe)
            or (epochs is not None and ep != epochs)
        ):
            continue
        test = m.get("test") or {}
        env = m.get("environment") or {}
        row: dict[str, Any] = {
            "dataset": ds,
            "model": mdl,
            "seed": int(m.get("seed", run_dir.name.removeprefix("seed"))),
            "recipe": rcp,
            "epochs": ep,
            "experiment": experiment_label(rcp, ep),
            "config_hash": m.get("config_hash"),
            "run_dir": str(run_dir),
        }
        for key in (*SUMMARY_METRICS, *_PER_IMAGE_SPREAD):
            row[key] = _float(test.get(key))
        row["n_images"] = test.get("n_images")
        for key in _RUN_EXTRAS:
            row[key] = _float(m.get(key))
        row["device_name"] = env.get("device_name", "")
        row["torch_version"] = (env.get("versions") or {}).get("torch", "")
        rows.append(row)
    cols = (
        ["dataset", "model", "seed", "recipe", "epochs", "experiment", "config_hash", "run_dir"]
        + [*SUMMARY_METRICS, *_PER_IMAGE_SPREAD]
        + ["n_images", *_RUN_EXTRAS, "device_name", "torch_version"]
    )
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["dataset", "model", "recipe", "epochs", "seed"], ignore_index=True)


def choose_experiment(
    runs: pd.DataFrame,
    dataset: str,
    models: Sequence[str] | None = None,
    recipe: str | None = None,
    epochs: int | None = None,
) -> tuple[str, int]:
    """The experiment (recipe, epochs) to compare ``models`` on, from :func:`find_runs` rows.

    Candidates are the experiments on ``dataset`` that every one of ``models`` has a
    finished run of (``models=None``: experiments with at least two models), narrowed
    by ``recipe`` / ``epochs``. Of those the one with the most epochs wins; ties go to
    more models, then more seeds, then the recipe name. ValueError, naming what each
    model has, when nothing fits.
    """
    rows = runs[runs["dataset"] == dataset]
    if models is not None:
        rows = rows[rows["model"].isin(list(models))]
    stats = []
    for (rcp, ep), g in rows.groupby(["recipe", "epochs"], sort=True):
        names = set(g["model"])
        ok = names >= set(models) if models is not None else len(names) >= 2
        if ok and recipe in (None, rcp) and epochs in (None, ep):
            stats.append((int(ep), len(names), len(g), str(rcp)))
    if stats:
        ep, _, _, rcp = max(stats, key=lambda t: (t[0], t[1], t[2], _rev(t[3])))
        return rcp, ep
    have = "; ".join(
        f"{m}: {', '.join(sorted(set(g['experiment'])))}"
        for m, g in rows.groupby("model", sort=True)
    )
    wanted = ""
    if recipe is not None or epochs is not None:
        wanted = f" with recipe {recipe or 'any'} and epochs {epochs or 'any'}"
    who = f"models {', '.join(models)}" if models is not None else "two or more models"
    raise ValueError(
        f"{who} share no experiment (recipe, epochs){wanted} on dataset {dataset!r}; "
        f"finished experiments per model: {have or 'none'}. Train them with the same "
        "--recipe and --epochs, or choose a shared one with --recipe/--epochs"
    )


def _rev(text: str) -> tuple[int, ...]:
    """Sort key that makes ``max`` prefer the alphabetically first name."""
    return tuple(-ord(c) for c in text)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def aggregate_runs(results_dir: str | Path = "results") -> pd.DataFrame:
    """Mean, std (ddof=1) and n over seeds per dataset, model, recipe and epochs.

    Columns: dataset, model, recipe, epochs, n, seeds ("0,1,2"), ``<metric>_mean`` and
    ``<metric>_std`` for each of :data:`SUMMARY_METRICS` plus train_images_per_s and
    epoch_time_s, then devices and torch_versions (the distinct values among the runs,
    so a table says where its numbers came from). Empty (with these columns) when no
    run has finished.
    """
    runs = find_runs(results_dir)
    values = list(SUMMARY_METRICS) + list(_RUN_EXTRAS)
    cols = _GROUP + ["n", "seeds"]
    for v in values:
        cols += [f"{v}_mean", f"{v}_std"]
    cols += ["devices", "torch_versions"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    runs["epochs"] = runs["epochs"].astype("Int64")
    out = []
    for key, grp in runs.groupby(_GROUP, sort=True, dropna=False):
        row: dict[str, Any] = dict(zip(_GROUP, key))
        row["n"] = len(grp)
        row["seeds"] = ",".join(str(s) for s in sorted(grp["seed"]))
        for v in values:
            col = grp[v].astype(float)
            row[f"{v}_mean"] = col.mean()
            row[f"{v}_std"] = col.std(ddof=1)  # NaN for one seed: no spread to report
        row["devices"] = "; ".join(sorted({d for d in grp["device_name"] if d}))
        row["torch_versions"] = "; ".join(sorted({t for t in grp["torch_version"] if t}))
        out.append(row)
    return pd.DataFrame(out, columns=cols)


def _pm(mean: float, std: float, percent: bool) -> str:
    if math.isnan(mean):
        return "-"
    scale, digits = (100.0, 2) if percent else (1.0, 2)
    text = f"{mean * scale:.{digits}f}"
    if not math.isnan(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def summary_markdown(df: pd.DataFrame) -> str:
    """A Markdown table of :func:`aggregate_runs` output: percentages, ``mean ± std``."""
    shown = ["dsc", "miou", "dice_mean", "iou_mean", "hd95_mean", "isic_jaccard"]
    heads = {
        "dsc": "DSC % (pooled)",
        "miou": "mIoU % (pooled)",
        "dice_mean": "Dice % (per image)",
        "iou_mean": "IoU % (per image)",
        "hd95_mean": "HD95 px",
        "isic_jaccard": "ISIC Jaccard %",
    }
    table = pd.DataFrame(
        {
            "dataset": df["dataset"],
            "model": df["model"],
            "recipe": df["recipe"],
            "epochs": df["epochs"],
            "n": df["n"],
            **{
                heads[m]: [
                    _pm(a, b, m in _PERCENT)
                    for a, b in zip(df[f"{m}_mean"].astype(float), df[f"{m}_std"].astype(float))
                ]
                for m in shown
            },
        }
    )
    if table.empty:
        return "_no finished runs_\n"
    return table.to_markdown(index=False) + "\n"


def _command() -> str:
    return shlex.join(["segbench", *sys.argv[1:]]) if sys.argv else "segbench"


def write_summary(
    results_dir: str | Path = "results", df: pd.DataFrame | None = None, command: str | None = None
) -> list[Path]:
    """Write :func:`aggregate_runs` to ``<results>/tables/sweep_summary.{csv,md,json}``.

    The JSON and the Markdown header carry the command, machine and versions that
    aggregated the runs; each row also names the devices and torch versions of its runs.
    """
    from bench.env import environment

    results_dir = Path(results_dir)
    df = aggregate_runs(results_dir) if df is None else df
    command = command or _command()
    env = environment()
    out = results_dir / "tables"
    md = (
        "# Accuracy over seeds (mean ± std, n seeds)\n\n"
        f"Aggregated by `{command}` on {env['cpu']} "
        f"(torch {env['versions'].get('torch', '?')}, git {env['git_commit']}). "
        "Each row's runs were produced on the devices listed in sweep_summary.csv.\n\n"
        + summary_markdown(df)
    )
    rows = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return [
        write_csv(out / "sweep_summary.csv", df),
        write_text(out / "sweep_summary.md", md),
        write_json(
            out / "sweep_summary.json", {"command": command, "environment": env, "rows": rows}
        ),
    ]


# ------------------------------------------------------------------ paired statistics


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
        from bench.env import environment

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


# ------------------------------------------------------------------------------ CLI


def _cmd_compare(args: argparse.Namespace) -> int:
    results = Path(args.results)
    if not (results / "runs").is_dir():
        print(
            f"error: --results {results}: no runs/ folder (run a sweep or `segbench train` first)",
            file=sys.stderr,
        )
        return 2
    if args.all == bool(args.models):
        print("error: give two or more models, or --all", file=sys.stderr)
        return 2
    if args.models and len(set(args.models)) < 2:
        print("error: compare needs at least two different models", file=sys.stderr)
        return 2
    dataset = args.dataset
    if dataset is None:
        runs = find_runs(results)
        if args.models:
            have = [set(runs.loc[runs["model"] == m, "dataset"]) for m in args.models]
            common = sorted(set.intersection(*have))
        else:
            common = sorted(set(runs["dataset"]))
        if len(common) != 1:
            print(
                "error: --dataset needed; "
                + (
                    f"finished runs of all these models exist for: {', '.join(common)}"
                    if common
                    else "no dataset has finished runs of all these models"
                ),
                file=sys.stderr,
            )
            return 2
        dataset = common[0]
    try:
        df = pairwise_comparisons(
            results,
            dataset,
            args.models or None,
            seed=args.seed,
            recipe=args.recipe,
            epochs=args.epochs,
            metric=args.metric,
            alpha=args.alpha,
            confidence=args.confidence,
            n_resamples=args.resamples,
            rng_seed=args.rng_seed,
            write=args.all,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seeds = f"seed {args.seed}" if args.seed is not None else "per-image mean over seeds"
    recipe, epochs = str(df["recipe"].iloc[0]), int(df["epochs"].iloc[0])
    print(
        f"{dataset}, recipe {recipe}, {epochs} epochs: per-image {args.metric}, {seeds}; "
        "diff = A - B, "
        f"{100 * args.confidence:g}% paired bootstrap CI (BCa, {args.resamples} resamples), "
        f"two-sided Wilcoxon signed-rank, Holm across {len(df)} pair(s), alpha {args.alpha}"
    )
    shown = df.copy()
    for col in ("mean_a", "mean_b", "mean_diff", "ci_low", "ci_high"):
        shown[col] = shown[col].map(lambda v: f"{v:.4f}")
    for col in ("p_value", "p_holm"):
        shown[col] = shown[col].map(lambda v: f"{v:.3g}")
    shown = shown.drop(columns=["statistic", "metric", "dataset", "recipe", "epochs"])
    print(shown.to_string(index=False))
    if args.all:
        print(f"wrote {pairwise_path(results, dataset, recipe, epochs)}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare",
        help="paired statistics between models on the same test images",
        description="Compare models on the same test images: two-sided Wilcoxon "
        "signed-rank test on per-image scores, paired bootstrap CI of the mean "
        "difference, Holm correction across pairs. Reads results/runs/; with --all "
        "writes results/stats/<dataset>_<recipe>-e<epochs>_pairwise.{csv,json}. Only runs of "
        "one experiment (recipe, epochs) are compared: by default the one with the most "
        "epochs that all the models have.",
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="two or more models (A B ...)")
    p.add_argument(
        "--all",
        action="store_true",
        help="every model with finished runs on the dataset; writes the table",
    )
    p.add_argument(
        "--dataset", default=None, help="dataset name (default: the only one both models share)"
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="compare runs of this recipe (default: the experiment with the most epochs)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="compare runs of this many epochs (default: the most all the models have)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="use this seed only (default: average each image over all seeds)",
    )
    p.add_argument(
        "--metric", default="dice", help="per_image.csv column to compare (default: dice)"
    )
    p.add_argument(
        "--alpha", type=float, default=0.05, help="family-wise significance level (default: 0.05)"
    )
    p.add_argument(
        "--confidence", type=float, default=0.95, help="confidence level of the CI (default: 0.95)"
    )
    p.add_argument(
        "--resamples", type=int, default=9999, help="bootstrap resamples (default: 9999)"
    )
    p.add_argument("--rng-seed", type=int, default=0, help="bootstrap random seed (default: 0)")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.set_defaults(func=_cmd_compare)
