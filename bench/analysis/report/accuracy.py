"""The accuracy rows of the report: one per experiment (seeds averaged), and each model's
main experiment.

Their own module because the comparisons (:mod:`bench.analysis.report.significance`) test
the main experiments and the per-model summary (:mod:`bench.analysis.report.summaries`)
shows the comparisons' verdicts: both read these rows, neither imports the other for them.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.analysis.runinfo import POOL_KEY, code_text, with_run_info
from bench.analysis.runs import EXPERIMENT_KEY, experiment_settings
from bench.engine.metric_table import METRICS


def accuracy_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment and code fingerprint (:data:`bench.analysis.runinfo.POOL_KEY`:
    the same configuration except the seed, one precision, one training-code
    fingerprint): metrics averaged over seeds, in percent (HD95 in px).

    Seeds are never pooled across recorded fingerprints; runs older than the fingerprint
    (``unrecorded``) are pooled, and ``code`` names their commits and hosts (a mix says
    so). Per row also: ``hosts``, ``train_time_h_mean`` / ``_std`` (hours per seed,
    across resumes), ``time_to_99_h_mean``, ``t_max``, ``lr_end_fraction`` (lr after the
    last epoch over the peak), ``last_epoch_picked`` (seeds whose selected checkpoint is
    the last epoch), ``dice_below_08_mean`` / ``_std`` (percent of test images with
    per-image Dice < 0.8).

    ``*_mean`` / ``*_std`` are the mean and sample standard deviation over seeds (std
    is NaN with one seed); ``dice_img_std`` is the per-image spread averaged over seeds.
    ``experiment`` is the runs' folder name (``<recipe>-e<epochs>[-<amp>]``); ``setting``
    names what tells the row apart from other experiments of the same dataset, model,
    recipe and epochs (e.g. ``lr=0.0005``); ``precision_note`` says when a run fell back
    from the precision it asked for. ``hd95_undefined`` / ``hd95_scored`` count test
    images with an undefined HD95 (empty prediction or mask) and all test images, summed
    over seeds (NaN when a run did not record it).
    """
    cols = [*POOL_KEY, "setting", "n_seeds"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    runs = with_run_info(runs)
    settings = experiment_settings(runs)
    rows = []
    for key, g in runs.groupby(POOL_KEY, sort=True, dropna=False):
        row: dict[str, Any] = dict(zip(POOL_KEY, key))
        _add_run_info(row, g)
        row["epochs"] = int(row["epochs"])
        row["setting"] = settings.get(key[: len(EXPERIMENT_KEY)], "")
        row["n_seeds"] = len(g)
        row["seeds"] = ",".join(str(s) for s in sorted(g["seed"].astype(int)))
        asked = sorted({str(a) for a in g["amp_requested"].dropna()} - {row["precision"]})
        row["precision_note"] = (
            f"{', '.join(asked)} requested; fell back to {row['precision']}" if asked else ""
        )
        # percentages first, then pixels (the column order of the accuracy summary)
        for key_, scale in [(m.key, m.scale) for m in sorted(METRICS, key=lambda m: not m.percent)]:
            if key_ in g and g[key_].notna().any():
                vals = g[key_].dropna() * scale
                name = key_.removesuffix("_mean")
                row[f"{name}_mean"] = float(vals.mean())
                row[f"{name}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        if "dice_std" in g:
            row["dice_img_std"] = float(g["dice_std"].mean() * 100)
        if "n_images" in g:
            n_img = pd.to_numeric(g["n_images"], errors="coerce")
            row["n_images"] = int(n_img.max()) if n_img.notna().any() else math.nan
            undefined = pd.to_numeric(g["hd95_n_undefined"], errors="coerce")
            if undefined.notna().all() and n_img.notna().all():
                row["hd95_undefined"] = int(undefined.sum())
                row["hd95_scored"] = int(n_img.sum())
                row["hd95_undefined_text"] = (
                    f"{row['hd95_undefined']}/{row['hd95_scored']} undefined"
                )
            else:
                row["hd95_undefined_text"] = "undefined count not recorded"
        sizes = sorted({int(v) for v in g["image_size"].dropna()})
        row["image_size"] = ", ".join(map(str, sizes)) if sizes else ""
        rows.append(row)
    return pd.DataFrame(rows)


def _add_run_info(row: dict[str, Any], g: pd.DataFrame) -> None:
    """A row's provenance and cost columns from its runs (see :func:`accuracy_summary`)."""
    row["code"] = code_text(g)
    row["hosts"] = "; ".join(sorted(set(g["hosts"].astype(str))))
    hours = pd.to_numeric(g["train_time_s"], errors="coerce") / 3600
    row["train_time_h_mean"] = float(hours.mean()) if hours.notna().any() else math.nan
    row["train_time_h_std"] = float(hours.std(ddof=1)) if hours.notna().sum() > 1 else math.nan
    if hours.notna().any():
        src = sorted(set(g.loc[hours.notna(), "train_time_source"]))
        row["train_time_text"] = (
            f"{hours.mean():.2f} h/seed"
            + (f" ± {hours.std(ddof=1):.2f}" if hours.notna().sum() > 1 else "")
            + (" (from log.csv)" if src == ["log.csv"] else "")
        )
    t99 = pd.to_numeric(g["time_to_99_s"], errors="coerce") / 3600
    row["time_to_99_h_mean"] = float(t99.mean()) if t99.notna().any() else math.nan
    if t99.notna().any() and "train_time_text" in row:
        row["train_time_text"] += f", 99% of best after {t99.mean():.2f} h"
    t_max = sorted({int(t) for t in pd.to_numeric(g["t_max"], errors="coerce").dropna()})
    row["t_max"] = ", ".join(map(str, t_max))
    lr_end = pd.to_numeric(g["lr_end_fraction"], errors="coerce")
    row["lr_end_fraction"] = float(lr_end.mean()) if lr_end.notna().any() else math.nan
    row["last_epoch_picked"] = int(g["picked_last_epoch"].astype(bool).sum())
    row["last_epoch_picked_text"] = f"{row['last_epoch_picked']} of {len(g)}"
    poor = pd.to_numeric(g["dice_below_08"], errors="coerce") * 100
    row["dice_below_08_mean"] = float(poor.mean()) if poor.notna().any() else math.nan
    row["dice_below_08_std"] = float(poor.std(ddof=1)) if poor.notna().sum() > 1 else math.nan


def _precision_rank(p: Any) -> int:
    return {"fp32": 0, "unknown": 2}.get(str(p), 1)


def main_experiments(acc: pd.DataFrame) -> pd.DataFrame:
    """Of :func:`accuracy_summary` rows, each (dataset, model)'s experiment with the most
    epochs (ties: more seeds, then fp32 before other precisions, then the recipe name):
    the one plots, comparisons and the per-model summary show.

    The paper recipe and its ablations (:func:`bench.engine.config.is_paper_recipe`)
    select their checkpoint on the test split, so their test scores are optimistic and
    never stand beside other models' there: they appear only in the accuracy and
    paper-vs-measured tables."""
    from bench.engine.config import is_paper_recipe

    if acc.empty:
        return acc
    acc = acc[~acc["recipe"].map(lambda r: is_paper_recipe(str(r)))]
    order = acc.assign(_prec=acc["precision"].map(_precision_rank)).sort_values(
        ["dataset", "model", "epochs", "n_seeds", "_prec", "recipe", "experiment_hash"],
        ascending=[True, True, False, False, True, True, True],
        kind="stable",
    )
    order = order.drop(columns="_prec")
    return order.drop_duplicates(["dataset", "model"], keep="first").reset_index(drop=True)
