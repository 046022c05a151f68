"""The measured causes of a paper-vs-measured difference, as report tables.

Reads ``paper-gap/<dataset>/<model>-<experiment>-s<seed>.json`` (written by ``segbench
paper-gap``, :mod:`bench.jobs.paper_gap`) and gives, per seed model, one row per run and
cause: the measured effect in percentage points of pooled test DSC, its interval and how
it was measured, plus one sentence per run that says only what the numbers beside it
show (is the paper's figure inside the spread that another test draw gives?).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.report.load import ReportInputError
from bench.core.io import read_json

#: the record format this module reads (bench.jobs.paper_gap.FORMAT)
GAP_FORMAT = "segbench-paper-gap/1"
GAP_GLOB = "paper-gap/*/*.json"


def load_gaps(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every paper-gap record under ``results_dir``, sorted; a file that is not one is an
    error naming it."""
    out = []
    for path in sorted(Path(results_dir).glob(GAP_GLOB)):
        try:
            rec = read_json(path)
        except (OSError, ValueError) as err:
            raise ReportInputError(f"{path}: unreadable ({err})") from None
        if not isinstance(rec, dict) or rec.get("format") != GAP_FORMAT:
            raise ReportInputError(
                f"{path}: not a {GAP_FORMAT} record (rerun `segbench paper-gap` on its run)"
            )
        out.append(rec)
    return sorted(out, key=lambda r: (r["model"], r["dataset"], r["experiment"], r["seed"]))


def _pp(v: Any) -> str:
    return f"{v:+.2f}" if isinstance(v, int | float) and math.isfinite(v) else "–"


def _interval(v: Any) -> str:
    if not isinstance(v, list | tuple) or len(v) != 2:
        return "–"
    return f"[{v[0]:+.2f}, {v[1]:+.2f}]"


def _not_measured(cause: str, record: dict[str, Any]) -> dict[str, Any]:
    """The row of a cause the record holds as ``{"skipped": why}``."""
    return {"cause": cause, "effect": math.nan, "interval": None,
            "how": f"not measured: {record['skipped']}"}  # fmt: skip


def _rows(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per cause of one record."""
    c = rec["causes"]
    s = c["test_sampling"]
    rows = [
        {
            "cause": "test sampling",
            "effect": math.nan,
            "interval": s["interval_pp"],
            "how": f"{100 * s['confidence']:g}% percentile bootstrap of the pooled DSC over "
            f"the {s['n_images']} test images ({s['resamples']:,} resamples): how far "
            "another test draw of the same size moves the measured value",
        }
    ]
    sel = c["selection"]
    if "skipped" in sel:
        rows.append(_not_measured("model selection", sel))
    else:
        rows.append(
            {
                "cause": "model selection",
                "effect": sel["effect_pp"],
                "interval": None,
                "how": f"test DSC of the epoch selected on the test split (epoch "
                f"{sel['selected_epoch']}, {sel['selected_dsc']:.2f}) minus that of the last "
                f"epoch ({sel['last_epoch']}, {sel['last_dsc']:.2f}), from the run's log: "
                "what selecting on test added, in this run as in the authors'",
            }
        )
    prep = c["data_preparation"]
    if "skipped" in prep:
        rows.append(_not_measured("data preparation", prep))
    else:
        rows.append(
            {
                "cause": "data preparation",
                "effect": prep["difference_pp"],
                "interval": prep["interval_pp"],
                "how": f"the {prep['n_images']} test images also in "
                f"{Path(prep['folder']).name} scored from the run's recompressed 256-px "
                f"folder minus scored from the full-resolution files resized here "
                f"({prep['a_dsc']:.2f} vs {prep['b_dsc']:.2f}; images differ by "
                f"{prep['image_mean_abs_difference']:.1f} grey levels on average, ground "
                f"truths agree to {prep['mask_agreement_dsc']:.2f}% DSC); at scoring only: "
                "training on the recompressed images is not measured",
            }
        )
    d = c["duplicates"]
    rows.append(
        {
            "cause": "duplicate leak (authors' split)",
            "effect": d["bound_pp"],
            "interval": None,
            "bound": True,
            "how": f"a plain random {1 - d['n_test'] / d['n_images']:.0%}:"
            f"{d['n_test'] / d['n_images']:.0%} draw (the authors' kind; {d['draws']:,} "
            f"draws) leaves {d['leaked_test_images_mean']:.1f} test images with a copy in "
            f"training on average (max {d['leaked_test_images_max']}); upper bound: that "
            f"many of this split's {d['test_images_with_copies']} test images with copies "
            "scored perfectly (segbench's split keeps copies on one side)",
        }
    )
    if "ablation" in c:
        a = c["ablation"]
        what = ", ".join(f"{k} {v[0]} → {v[1]}" for k, v in a["differs_in"].items())
        rows.append(
            {
                "cause": f"ablation: {what}",
                "effect": a["difference_pp"],
                "interval": a["interval_pp"],
                "how": f"pooled test DSC of {a['run']} (recipe {a['recipe']}) minus this run's, "
                f"both re-scored on the same {a['n_images']} test images ("
                f"{a['a_dsc']:.2f} vs {a['b_dsc']:.2f}); paired bootstrap interval; one seed "
                "each, so training noise is inside the difference"
                + (
                    f"; code fingerprints {rec.get('code_fingerprint')} vs {a['code_fingerprint']}"
                    if a.get("code_fingerprint") != rec.get("code_fingerprint")
                    else ""
                ),
            }
        )
    seeds = c["seeds"]
    rows.append(
        {
            "cause": "training seed",
            "effect": math.nan,
            "interval": None,
            "spread": seeds["std_pp"],
            "how": (
                f"std of the pooled DSC over seeds {', '.join(map(str, seeds['seeds']))} "
                "of the same code"
                if seeds["std_pp"] is not None
                else "not measured: one seed"
            ),
        }
    )
    for r in rows:
        r.update(
            {
                "model": rec["model"],
                "experiment": rec["experiment"],
                "seed": rec["seed"],
                "effect_text": (
                    f"≤ {_pp(r['effect'])}"
                    if r.get("bound")
                    else f"std {r['spread']:.2f}"
                    if r.get("spread") is not None
                    else _pp(r["effect"])
                ),
                "interval_text": _interval(r["interval"]),
            }
        )
    return rows


def gap_tables(records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """model -> one row per (run, cause) of its records."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_model.setdefault(rec["model"], []).extend(_rows(rec))
    return {m: pd.DataFrame(rows) for m, rows in by_model.items()}


def gap_verdict(rec: dict[str, Any]) -> str:
    """One sentence per run: measured, paper, their difference, and whether the paper's
    figure lies inside the range another test draw gives around the measured value."""
    where = f"{rec['model']} {rec['experiment']} (recipe {rec.get('recipe')}) seed {rec['seed']}"
    m, p = rec["measured_dsc"], rec["paper"]["dsc"]
    lo, hi = rec["causes"]["test_sampling"]["interval_pp"]
    inside = m + lo <= p <= m + hi
    return f"{where}: measured {m:.2f}, paper {p:.2f}, measured − paper {m - p:+.2f} pp. " + (
        f"The paper's figure lies inside [{m + lo:.2f}, {m + hi:.2f}], the range another "
        "draw of the test images gives around the measured value: the test split alone "
        "can account for the difference."
        if inside
        else f"The paper's figure lies outside [{m + lo:.2f}, {m + hi:.2f}], the range "
        "another draw of the test images gives: the test split alone does not account "
        "for the difference; the other rows say how much each measured cause can."
    )
