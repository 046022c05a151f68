"""The report's model comparisons: each model's main experiment against the others.

The report does not trust a stored ``stats/*.csv`` (it may have been written under an
older rule, or for other runs): it compares the runs it shows with
:func:`bench.analysis.stats.compare_models`, so a difference is called significant only
when it was tested over seeds (>= 3 per model) with a Holm-adjusted p-value below
alpha and a Welch t interval over seed means that excludes 0. Comparisons run within
one dataset and one protocol (recipe, epochs), each side within one code fingerprint;
Holm corrects across the comparisons tested over seeds that the report shows (the
per-image rows are never claimed and are not adjusted). Every difference is A - B.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.analysis.report.accuracy import accuracy_summary, main_experiments
from bench.analysis.report.load import Results
from bench.analysis.runinfo import POOL_KEY, with_run_info
from bench.analysis.runs import EXPERIMENT_KEY
from bench.analysis.stats import compare_models, finalize_comparisons, per_image_matrix

#: family-wise significance level of the report's comparisons
ALPHA = 0.05

#: bootstrap resamples per comparison (seeded: the report is deterministic)
N_RESAMPLES = 9999

COMPARISON_COLUMNS = [
    "dataset",
    "recipe",
    "epochs",
    "model_a",
    "precision_a",
    "n_seeds_a",
    "model_b",
    "precision_b",
    "n_seeds_b",
    "n",
    "mean_a",
    "mean_b",
    "mean_diff",
    "ci_low",
    "ci_high",
    "boot_low",
    "boot_high",
    "level",
    "test",
    "ci_method",
    "p_value",
    "p_holm",
    "holm_family",
    "significant",
    "claim",
    "note",
    "code_a",
    "code_b",
]


def report_comparisons(
    res: Results, alpha: float = ALPHA, n_resamples: int = N_RESAMPLES
) -> tuple[pd.DataFrame, list[str]]:
    """(comparison rows, models left out with the reason), cached on ``res``.

    Pairs: the main experiments (:func:`main_experiments`) of one dataset that share
    recipe and epochs; per-image Dice from each run's ``per_image.csv``. A model whose
    runs have no per-image scores, or whose seeds scored different images, is left out
    and named in the second element.
    """
    cached = res.cache.get(("comparisons", alpha, n_resamples))
    if cached is not None:
        return cached
    acc = main_experiments(accuracy_summary(res.runs))
    parts, skipped = [], []
    if not acc.empty:
        for (dataset, recipe, epochs), fam in acc.groupby(["dataset", "recipe", "epochs"]):
            if len(fam) < 2:
                continue
            scores, precision, code = {}, {}, {}
            for _, row in fam.iterrows():
                try:
                    scores[row["model"]] = per_image_matrix(
                        runs_of_experiment(res.runs, row), "dice"
                    )
                except (FileNotFoundError, ValueError) as err:
                    skipped.append(f"{row['model']} ({dataset}, {row['experiment']}): {err}")
                    continue
                precision[row["model"]] = row["precision"]
                code[row["model"]] = row.get("code", "")
            if len(scores) < 2:
                continue
            df = compare_models(scores, n_resamples=n_resamples, finalize=False)
            df["dataset"], df["recipe"], df["epochs"] = dataset, recipe, int(epochs)
            df["precision_a"] = df["model_a"].map(precision)
            df["precision_b"] = df["model_b"].map(precision)
            df["code_a"], df["code_b"] = df["model_a"].map(code), df["model_b"].map(code)
            differ = df["precision_a"] != df["precision_b"]
            # an all-empty note column comes back as float NaN: text, and no "nan" in it
            df["note"] = df["note"].astype(object).where(df["note"].notna(), "")
            df.loc[differ, "note"] = [
                "; ".join(x for x in (str(n), "precisions differ") if x)
                for n in df.loc[differ, "note"]
            ]
            df["note"] = [
                "; ".join(x for x in (str(n), _mixed_code(a, ca), _mixed_code(b, cb)) if x)
                for n, a, ca, b, cb in zip(
                    df["note"], df["model_a"], df["code_a"], df["model_b"], df["code_b"]
                )
            ]
            parts.append(df)
    if parts:
        out = finalize_comparisons(pd.concat(parts, ignore_index=True), alpha)
        out = out[COMPARISON_COLUMNS]
    else:
        out = pd.DataFrame(columns=COMPARISON_COLUMNS)
    res.cache[("comparisons", alpha, n_resamples)] = (out, skipped)
    return out, skipped


def _mixed_code(model: str, code: Any) -> str:
    """A note when a side's seeds ran different commits or hosts (code unrecorded)."""
    text = str(code or "")
    if "mixed" not in text:
        return ""
    return f"{model}'s seeds ran different commits or hosts (code fingerprint unrecorded)"


def significance_column(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Per model, the significant differences over seeds, e.g. ``better than unet``.

    Only rows with ``significant`` (tested over seeds, Holm, CI excludes 0) count; a
    per-image test on one training run never appears here. The dataset is named when
    the comparisons span several. Empty frame when nothing is significant.
    """
    sig = comparisons[comparisons["significant"].astype(bool)] if not comparisons.empty else None
    if sig is None or sig.empty:
        return pd.DataFrame()
    several = comparisons["dataset"].nunique() > 1
    marks: dict[str, list[str]] = {}
    for _, r in sig.iterrows():
        tag = f" @{r['dataset']}" if several else ""
        a_better = float(r["mean_diff"]) > 0
        marks.setdefault(r["model_a"], []).append(
            f"{'better' if a_better else 'worse'} than {r['model_b']}{tag}"
        )
        marks.setdefault(r["model_b"], []).append(
            f"{'worse' if a_better else 'better'} than {r['model_a']}{tag}"
        )
    return pd.DataFrame(
        [{"model": m, "significant_over_seeds": "; ".join(sorted(v))} for m, v in marks.items()]
    )


def runs_of_experiment(runs: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    """The runs of one accuracy row: those equal to ``row`` on every EXPERIMENT_KEY field
    and, when the row has one, on its code fingerprint (seeds never pool across it)."""
    key = list(EXPERIMENT_KEY)
    if "fingerprint" in row.index:
        runs, key = with_run_info(runs), POOL_KEY
    keep = pd.Series(True, index=runs.index)
    for k in key:
        keep &= runs[k].astype(str) == str(row[k])
    return runs[keep]


def seeds_label(name: str, precision: Any, n: Any) -> str:
    """``"malunet (fp32, 3 seeds)"``: a compared side with its precision and seed count."""
    return f"{name} ({precision}, {n} seed{'s' if n != 1 else ''})"


def in_points(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Dice fractions to percent, differences and CI bounds to points, plus the CI text."""
    df = comparisons.copy()
    for col in ("mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "boot_low", "boot_high"):
        df[col] = pd.to_numeric(df.get(col, math.nan), errors="coerce") * 100
    df["ci"] = [
        f"[{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) and math.isfinite(hi) else "–"
        for lo, hi in zip(df["ci_low"].astype(float), df["ci_high"].astype(float))
    ]
    return df


def comparison_table(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The comparisons as the report shows them: differences in Dice percentage points."""
    df = in_points(comparisons)
    df["experiment"] = [f"{r}-e{e}" for r, e in zip(df["recipe"], df["epochs"])]
    df["a"] = [seeds_label(*x) for x in zip(df["model_a"], df["precision_a"], df["n_seeds_a"])]
    df["b"] = [seeds_label(*x) for x in zip(df["model_b"], df["precision_b"], df["n_seeds_b"])]
    return df
