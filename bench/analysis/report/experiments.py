"""The report's experiment comparisons: one model trained two ways, same test images.

A user asks "does training in bf16 (or with the authors' loss, or another lr) change
accuracy beyond seed noise?". That is a comparison of two experiments of one model on one
dataset, not of two models: each model's main experiment (the one the plots show, see
:func:`bench.analysis.report.accuracy.main_experiments`) against every other experiment of
that model there, on per-image Dice of the same test images. The level of the test follows
the seeds, exactly as for models (:func:`bench.analysis.stats.compare_pair`): with >= 3
seeds on both sides a Welch t-test and Welch t interval over seed means; with fewer, a
per-image test that is never called significant. Holm corrects across the rows of this
table tested over seeds (a family of its own, apart from the model comparisons).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from bench.analysis.report.accuracy import accuracy_summary, main_experiments
from bench.analysis.report.load import Results
from bench.analysis.report.significance import in_points, runs_of_experiment, seeds_label
from bench.analysis.stats import compare_models, finalize_comparisons, per_image_matrix
from bench.engine.config import RUNTIME_FIELDS, with_later_defaults

#: bootstrap resamples per comparison (seeded: the report is deterministic)
N_RESAMPLES = 9999

# fields that never change what is learnt (where / how fast it ran) or that name the run
# rather than its settings
_NOT_SETTINGS = set(RUNTIME_FIELDS) | {"seed", "config_hash", "experiment_hash", "recipe"}


def config_difference(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    """``"loss: bce_dice_logits -> bce_dice_probs; amp: None -> bf16"``: the settings in
    which configuration ``b`` differs from ``a`` (runtime fields and the seed left out)."""
    if a is None or b is None:
        return "config not recorded"
    parts = []
    a, b = with_later_defaults(a), with_later_defaults(b)
    for key in sorted((set(a) | set(b)) - _NOT_SETTINGS):
        va, vb = a.get(key), b.get(key)
        if json.dumps(va, sort_keys=True) != json.dumps(vb, sort_keys=True):
            parts.append(f"{key}: {_show(va)} -> {_show(vb)}")
    return "; ".join(parts) or "nothing but the recipe name"


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def _config(runs: pd.DataFrame) -> dict[str, Any] | None:
    cfgs = [c for c in runs["config"] if isinstance(c, dict)] if "config" in runs else []
    return cfgs[0] if cfgs else None


def _label(row: pd.Series) -> str:
    return seeds_label(row["experiment"], row["precision"], int(row["n_seeds"]))


def experiment_comparisons(
    res: Results, alpha: float = 0.05, n_resamples: int = N_RESAMPLES
) -> pd.DataFrame:
    """Each model's main experiment (A) against each of its other experiments (B) on one
    dataset; columns as :func:`bench.analysis.stats.compare_models` plus dataset, model,
    a, b (labels with precision and seeds) and ``differs`` (what B changes). Empty when no
    model has two experiments. Cached on ``res``."""
    cached = res.cache.get(("experiments", alpha, n_resamples))
    if cached is not None:
        return cached
    acc = accuracy_summary(res.runs)
    parts = []
    if not acc.empty:
        main = main_experiments(acc).set_index(["dataset", "model"])
        for (dataset, model), fam in acc.groupby(["dataset", "model"], sort=True):
            if len(fam) < 2:
                continue
            ref = main.loc[(dataset, model)]
            ref_row = pd.Series({**ref.to_dict(), "dataset": dataset, "model": model})
            ref_runs = runs_of_experiment(res.runs, ref_row)
            for _, other in fam.iterrows():
                if other["experiment_hash"] == ref_row["experiment_hash"] and (
                    other["precision"] == ref_row["precision"]
                ):
                    continue
                other_runs = runs_of_experiment(res.runs, other)
                a, b = _label(ref_row), _label(other)
                row: dict[str, Any] = {"dataset": dataset, "model": model, "a": a, "b": b}
                row["differs"] = config_difference(_config(ref_runs), _config(other_runs))
                try:
                    scores = {
                        "A": per_image_matrix(ref_runs, "dice"),
                        "B": per_image_matrix(other_runs, "dice"),
                    }
                except (FileNotFoundError, ValueError) as err:
                    row.update(level="not compared", note=str(err), p_value=math.nan)
                    parts.append(pd.DataFrame([row]))
                    continue
                df = compare_models(scores, n_resamples=n_resamples, finalize=False)
                parts.append(df.assign(**row))
    if not parts:
        out = pd.DataFrame()
    else:
        out = finalize_comparisons(pd.concat(parts, ignore_index=True), alpha)
    res.cache[("experiments", alpha, n_resamples)] = out
    return out


def experiment_table(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The comparisons as the report shows them: Dice in percent, differences in points."""
    return in_points(comparisons)
