"""Finished runs over seeds: how stable is a number?

:func:`find_runs` reads every finished run under
``results/runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/metrics.json``;
:func:`aggregate_runs` gives, per dataset, model and experiment (recipe, epochs: protocols
never mix), the mean, the sample standard deviation (ddof=1; empty for a single seed) and
``n`` over seeds, and :func:`write_summary` stores it as
``results/tables/sweep_summary.{csv,md,json}``. :func:`choose_experiment` picks the
experiment that paired comparisons (:mod:`bench.analysis.stats`) use. Which metrics, with
which units, come from :mod:`bench.engine.metric_table`.
"""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.io import read_json, write_csv, write_json, write_text
from bench.engine.metric_table import METRICS

# Test-split metrics summarised over seeds (keys of metrics.json["test"]).
SUMMARY_METRICS = tuple(m.key for m in METRICS)


_RUN_EXTRAS = ("train_images_per_s", "epoch_time_s")


# Per-run spread over test images (std of per-image Dice / IoU); read, not aggregated.
_PER_IMAGE_SPREAD = ("dice_std", "iou_std")


# Metrics shown as percentages in Markdown (fractions in CSV/JSON, as in metrics.json).
_PERCENT = {m.key for m in METRICS if m.percent}


_GROUP = ["dataset", "model", "recipe", "epochs"]


# runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/ (bench.engine.rundir.run_dir_for)
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
    heads = {m.key: m.summary_header for m in METRICS if m.summary_header}
    shown = list(heads)
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
    from bench.core.env import environment

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
