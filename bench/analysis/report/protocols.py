"""Accuracy protocols the report keeps apart, and the papers' tables set against them.

A *smoke* protocol (:func:`is_smoke`: a ``*-mini`` dataset, e.g. the 456-image
``isic2017-mini``) checks that training works end to end; its numbers never share a table
or an axis with the *headline* protocol (every other dataset, e.g. ``isic2017-256``: the
2,150 ISIC 2017 pairs the papers split 7:3). :func:`split_protocols` divides accuracy rows
accordingly.

:func:`paper_vs_measured` sets a seed model's measured test metrics (pooled over test
pixels, as the authors compute them) beside ``model_info(name).reported`` on the paper's
dataset, for headline-protocol rows only, with the difference and the caveats that come
from the run's own configuration (selection split, image size, split).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.analysis.report.summaries import paper_dataset

#: the models this suite exists to measure against their papers
SEED_MODELS = ("malunet", "egeunet")

#: the papers' five metrics, in the order the MALUNet / EGE-UNet tables print them
PAPER_METRIC_ORDER = (
    ("miou", "mIoU"),
    ("dsc", "DSC"),
    ("acc", "Acc"),
    ("spe", "Spe"),
    ("sen", "Sen"),
)


#: what a dataset's own preparation changes against the papers' data (its ATTRIBUTION.md)
DATA_CAVEATS = {
    "isic2017-256": "images resized to 256 px and recompressed before they reached segbench "
    "(see the dataset's ATTRIBUTION.md)",
}


def is_smoke(dataset: Any) -> bool:
    """A smoke-test protocol: a ``*-mini`` dataset (a small subset for loader and
    end-to-end checks, never comparable with a paper)."""
    return str(dataset).endswith("-mini")


def split_protocols(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(headline rows, smoke rows) of a frame with a ``dataset`` column; rows without a
    dataset (models not measured yet) go with the headline."""
    if rows.empty or "dataset" not in rows:
        return rows, rows.iloc[0:0]
    smoke = rows["dataset"].map(lambda d: isinstance(d, str) and is_smoke(d))
    return rows[~smoke].reset_index(drop=True), rows[smoke].reset_index(drop=True)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _reported(model: str) -> dict[str, Any]:
    try:
        from models import model_info
        from models.registry import UnknownModelError
    except ImportError:  # results read from another checkout
        return {}
    try:
        return dict(model_info(model).reported or {})
    except UnknownModelError:
        return {}


def _caveats(runs: pd.DataFrame) -> str:
    """What separates these runs' numbers from the paper's, from their configurations."""
    cfgs = [c for c in runs.get("config", []) if isinstance(c, dict)]
    out = []
    sel = sorted({str(c.get("select_split")) for c in cfgs if c.get("select_split")})
    if sel == ["test"]:
        out.append("checkpoint selected on the test split, as the authors did")
    elif sel:
        out.append(
            f"checkpoint selected on the {'/'.join(sel)} split (the authors selected on "
            "test: their figures are optimistic by that choice)"
        )
    if any(c.get("rotation") == "fixed" for c in cfgs):
        out.append("one rotation angle per run, as the authors' code (an ablation)")
    sizes = sorted({int(c["image_size"]) for c in cfgs if c.get("image_size")})
    if sizes:
        out.append(f"trained and scored at {'/'.join(map(str, sizes))} px")
    for dataset in sorted(set(runs.get("dataset", []))):
        if dataset in DATA_CAVEATS:
            out.append(DATA_CAVEATS[dataset])
    splits = sorted(
        {str(c.get("split_file") or f"seeded split {c.get('split_seed')}") for c in cfgs}
    )
    if splits:
        out.append(f"{'; '.join(splits)}, not the authors' own 7:3 draw")
    return "; ".join(out)


def paper_vs_measured(acc: pd.DataFrame, runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per seed model, its headline-protocol accuracy rows metric by metric beside the
    paper: model -> frame with metric, paper (%), measured (mean ± std over seeds, %),
    measured − paper (pp), dataset, experiment, precision, seeds, caveats.

    ``acc`` is :func:`bench.analysis.report.accuracy.accuracy_summary` output (one row
    per experiment and fingerprint), ``runs`` the runs behind it. A seed model with no
    headline row gets the paper's figures and "not measured yet". Models whose registry
    entry reports nothing are left out.
    """
    out: dict[str, pd.DataFrame] = {}
    for model in SEED_MODELS:
        rep = _reported(model)
        if not rep:
            continue
        rows: list[dict[str, Any]] = []
        mine = (
            acc[(acc["model"] == model) & ~acc["dataset"].map(is_smoke)] if not acc.empty else acc
        )
        for _, r in mine.iterrows():
            key = paper_dataset(str(r["dataset"]))
            paper = rep.get(key) if key else None
            if not isinstance(paper, dict):
                continue
            sub = runs[
                (runs["dataset"] == r["dataset"])
                & (runs["model"] == model)
                & (runs["experiment_hash"].astype(str) == str(r["experiment_hash"]))
                & (runs["experiment"] == r["experiment"])
            ]
            caveat = _caveats(sub)
            for metric, label in PAPER_METRIC_ORDER:
                mean, sd = r.get(f"{metric}_mean", math.nan), r.get(f"{metric}_std", math.nan)
                p = paper.get(metric)
                rows.append(
                    {
                        "model": model,
                        "dataset": r["dataset"],
                        "paper_dataset": key,
                        "experiment": r["experiment"],
                        "precision": r["precision"],
                        "n_seeds": int(r["n_seeds"]),
                        "code": r.get("code", ""),
                        "metric": label,
                        "paper": float(p) if p is not None else math.nan,
                        "measured_mean": mean,
                        "measured_std": sd,
                        "difference": (mean - float(p)) if p is not None else math.nan,
                        "difference_text": (
                            f"{mean - float(p):+.2f}"
                            if p is not None and math.isfinite(_num(mean))
                            else "–"
                        ),
                        "note": caveat
                        if p is not None
                        else "not reported in model_info().reported",
                    }
                )
        if not rows:
            key = (
                "isic2017"
                if "isic2017" in rep
                else next((k for k, v in rep.items() if isinstance(v, dict)), None)
            )
            paper = rep.get(key, {}) if key else {}
            for metric, label in PAPER_METRIC_ORDER:
                p = paper.get(metric)
                rows.append(
                    {
                        "model": model,
                        "paper_dataset": key,
                        "metric": label,
                        "paper": float(p) if p is not None else math.nan,
                        "note": "not measured yet on the headline protocol",
                    }
                )
        out[model] = pd.DataFrame(rows)
    return out


def schedule_note(runs: pd.DataFrame) -> str:
    """Whether the runs' training was finished by their own schedule, in numbers.

    ``runs`` carry :mod:`bench.analysis.runinfo` columns. When the cosine schedule had not
    reached its end (lr after the last epoch above 10% of the peak) the text says the
    runs are under-trained, with the lr fraction, the epochs and T_max, and how many runs
    selected their last epoch (they may still have been improving)."""
    if runs.empty or "lr_end_fraction" not in runs:
        return ""
    parts = []
    for (epochs, t_max), g in runs.groupby(["epochs", "t_max"], sort=True, dropna=False):
        frac = pd.to_numeric(g["lr_end_fraction"], errors="coerce")
        last = int(g["picked_last_epoch"].astype(bool).sum())
        t_txt = (
            f"T_max {t_max:g}" if isinstance(t_max, float) and math.isfinite(t_max) else "T_max ?"
        )
        if frac.notna().any() and float(frac.mean()) > 0.1:
            parts.append(
                f"under-trained: {len(g)} run(s) of {int(epochs)} epochs with a cosine schedule "
                f"of {t_txt} end with the learning rate still at {frac.mean():.2f}x its peak, "
                f"and {last} of {len(g)} selected their last epoch (still improving when "
                "training stopped)"
            )
        else:
            parts.append(
                f"{len(g)} run(s) of {int(epochs)} epochs, {t_txt}: {last} of {len(g)} "
                "selected their last epoch"
            )
    return "; ".join(parts)


def protocol_lines(runs: pd.DataFrame, smoke: bool) -> list[str]:
    """One line per dataset of the protocol: the images its runs were split into (from
    their manifests where recorded, else the test images scored) and the schedule."""
    if runs.empty:
        return []
    lines = []
    for dataset, g in runs.groupby("dataset", sort=True):
        if is_smoke(dataset) != smoke:
            continue
        splits = sorted({s for s in g.get("split_counts", pd.Series(dtype=str)) if s})
        n_test = sorted({int(n) for n in pd.to_numeric(g["n_images"], errors="coerce").dropna()})
        where = (
            "; ".join(splits)
            if splits
            else f"{'/'.join(map(str, n_test))} test images (split sizes not recorded)"
        )
        line = f"- `{dataset}`: {where}; {len(g)} finished run(s)"
        leaks = pd.to_numeric(g.get("duplicate_leaks", pd.Series(dtype=float)), errors="coerce")
        if leaks.notna().any():
            bad = int((leaks > 0).sum())
            line += (
                f"; {bad} of them trained on a split that duplicate images cross (see its manifest)"
                if bad
                else "; no duplicate-image group crosses their splits (recorded in each manifest)"
            )
            if leaks.isna().any():
                line += f" ({int(leaks.isna().sum())} run(s) predate that record)"
        sched = schedule_note(g)
        lines.append(line + (f"; {sched}" if sched else ""))
    return lines
