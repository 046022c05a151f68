"""Trivial baselines on the runs' own test split: the floor of the accuracy table.

A centred disc (the training split's mean lesion area) and the mean training mask score
without learning anything; a reader needs them to see how much of a model's DSC is the
dataset's easy part (lesions are large and central). :func:`run_baselines` scores them on
exactly the test images the finished runs of a dataset were scored on (the split settings
are read from the runs' ``config.json``; the image ids are checked against a run's
``per_image.csv``) and writes ``<results>/baselines/<dataset>/<kind>/{metrics.json,
per_image.csv}``, which ``segbench report`` shows as rows and as horizontal lines in the
accuracy plots. Deterministic: the predictors depend only on the training masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.runs import find_runs
from bench.core.io import write_csv, write_json
from bench.engine.config import TrainConfig
from bench.engine.evaluate import BASELINES, EvalSettings, baseline_model, evaluate_split

#: the baselines written by default (``all``, every pixel lesion, on request)
DEFAULT_KINDS = ("disc", "mean-mask")

#: run settings that decide which images are scored and how
SPLIT_KEYS = (
    "image_size",
    "split_file",
    "split_seed",
    "val_fraction",
    "test_fraction",
    "eval_split",
    "threshold",
    "split_mode",
)


def split_settings(results_dir: str | Path, dataset: str) -> tuple[dict[str, Any], str]:
    """The split settings of the finished runs on ``dataset`` and where they came from.

    All runs with a ``config.json`` must agree (they were scored on one test split);
    otherwise ValueError names the disagreeing values. Without runs, the fair recipe's
    defaults (said so in the second element).
    """
    runs = find_runs(results_dir, dataset=dataset)
    configs = [c for c in runs["config"] if isinstance(c, dict)] if not runs.empty else []
    if not configs:
        cfg = TrainConfig.from_recipe("fair").to_dict()
        return {k: cfg[k] for k in SPLIT_KEYS if k in cfg}, "the fair recipe (no finished runs)"
    out: dict[str, Any] = {}
    for key in SPLIT_KEYS:
        values = {repr(c.get(key)) for c in configs if key in c}
        if len(values) > 1:
            raise ValueError(
                f"the finished runs on {dataset!r} under {Path(results_dir) / 'runs'} were "
                f"scored with different {key} ({', '.join(sorted(values))}); give "
                "--size/--split-seed explicitly or keep one protocol per results folder"
            )
        if values:
            out[key] = next(c[key] for c in configs if key in c)
    return out, f"the {len(configs)} finished run(s) on {dataset}"


def run_baselines(
    data: str | Path,
    results_dir: str | Path = "results",
    kinds: Sequence[str] = DEFAULT_KINDS,
    *,
    dataset: str | None = None,
    overrides: dict[str, Any] | None = None,
    command: str = "",
    progress: bool = False,
) -> list[Path]:
    """Score the trivial baselines ``kinds`` on the test split of ``data``; return the
    metrics files written.

    ``dataset`` is the results name (default: the data folder's name, as
    ``segbench train`` names it). Split settings come from :func:`split_settings`,
    ``overrides`` (e.g. ``{"image_size": 64}``) on top. When runs exist, the scored
    image ids must equal a run's ``per_image.csv`` ids (ValueError otherwise): a
    baseline on other images would be a floor under the wrong table.
    """
    from bench.core.env import environment
    from bench.data.cache import prepare_data

    bad = [k for k in kinds if k not in BASELINES]
    if bad or not kinds:
        raise ValueError(
            f"baseline kind(s) {', '.join(bad) or '(none)'}: choose from {', '.join(BASELINES)}"
        )
    name = dataset or TrainConfig(data=str(data)).dataset_name
    settings, source = split_settings(results_dir, name)
    settings.update(overrides or {})
    split = str(settings.get("eval_split", "test"))
    extra = {"split_mode": settings["split_mode"]} if "split_mode" in settings else {}
    prepared = prepare_data(
        data,
        size=int(settings.get("image_size", 256)),
        split_file=settings.get("split_file"),
        seed=int(settings.get("split_seed", 42)),
        val_fraction=float(settings.get("val_fraction", 0.1)),
        test_fraction=float(settings.get("test_fraction", 0.3)),
        progress=progress,
        **extra,
    )
    _check_same_test_images(results_dir, name, list(prepared.split_ids[split]))
    written = []
    for kind in kinds:
        model = baseline_model(kind, prepared.masks("train"))
        # the fixed map ignores the image: no scaling to match ("unit")
        scoring = EvalSettings(scaling="unit", threshold=float(settings.get("threshold", 0.5)))
        res = evaluate_split(model, prepared, split, scoring)
        out = Path(results_dir) / "baselines" / name / kind
        write_csv(out / "per_image.csv", res.per_image)
        written.append(
            write_json(
                out / "metrics.json",
                {
                    "model": f"baseline-{kind}",
                    "kind": kind,
                    "dataset": name,
                    "split": split,
                    "command": command,
                    "settings": settings,
                    "settings_from": source,
                    "n_train_masks": len(prepared.split_ids["train"]),
                    split: res.metrics,
                    "environment": environment("cpu"),
                },
            )
        )
    return written


def _check_same_test_images(results_dir: str | Path, dataset: str, ids: list[str]) -> None:
    runs = find_runs(results_dir, dataset=dataset)
    for run_dir in runs["run_dir"] if not runs.empty else []:
        path = Path(run_dir) / "per_image.csv"
        if not path.is_file():
            continue
        theirs = pd.read_csv(path, dtype={"image_id": str}, usecols=["image_id"])["image_id"]
        if sorted(theirs) != sorted(ids):
            only_run = sorted(set(theirs) - set(ids))[:3]
            only_here = sorted(set(ids) - set(theirs))[:3]
            raise ValueError(
                f"the baselines' test split ({len(ids)} images) is not the one {path} was "
                f"scored on ({len(theirs)} images; only there: {only_run or '-'}, only here: "
                f"{only_here or '-'}); check --data and the split settings"
            )
        return  # the runs share one split file: one run is enough
