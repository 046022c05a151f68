"""``segbench paper-gap``: measure what separates a run's test DSC from its paper's figure.

For one finished run (its weights: ``checkpoints/best.pt`` where it was trained, else the
committed weights it published, sha256-checked) this job re-scores the run's test split,
checks that it reproduces the run's own test DSC, and measures the causes of
:mod:`bench.analysis.paper_gap` that need no new training:

- test sampling: bootstrap over the run's test images;
- model selection: from the run's log, when it selected on the test split as the
  authors did;
- data preparation: the run's test images that also exist at full resolution (``--full-res``,
  e.g. ``isic2017-mini``) scored from there, resized here as segbench resizes every
  folder, against the same images from the run's (recompressed) folder; the images'
  mean absolute difference and the ground-truth masks' agreement are recorded beside it;
- duplicate leaks: how many test images a plain random 7:3 draw (the authors') leaks,
  and the most that could add;
- training seeds: the spread of the pooled DSC over the experiment's other seeds of the
  same training code (none measured with one seed);
- an ablation (``--ablation RUN``): a finished run of the same model, seed, data and split
  whose configuration differs in one of the authors' habits (e.g. recipe
  ``paper-fixed-angle``), re-scored on the same test images: its DSC minus the run's, with
  a paired interval, and both runs' test DSC at every validated epoch.

The record goes to ``results/paper-gap/<dataset>/<model>-<experiment>-s<seed>.json``;
``segbench report`` sets it beside the paper-vs-measured table.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis.paper_gap import (
    leak_bound,
    paired_pooled_difference,
    pooled_dsc,
    random_split_leaks,
    sampling_interval,
    seed_spread,
    selection_effect,
)
from bench.core.io import read_json, write_json
from bench.engine.rundir import read_finished_run, results_relative

FORMAT = "segbench-paper-gap/1"
#: the run's own test DSC must come back within this (pp), else the weights or the data
#: are not the run's (a few pixels flipped by another thread count stay far below it)
REPRODUCE_TOLERANCE_PP = 0.01


def run_weights(run: Path) -> dict[str, Any]:
    """The weights to score ``run`` with: its ``checkpoints/best.pt``, else the committed
    weights whose index entry names this run (file checked against its sha256)."""
    best = run / "checkpoints" / "best.pt"
    if best.is_file():
        return {"source": "checkpoint", "file": str(best)}
    from models.weights import list_weights, verified_path

    rel = results_relative(run)
    for entry in list_weights():
        if entry.meta.get("run") == rel:
            return {
                "source": "published",
                "file": str(verified_path(entry)),
                "name": f"{entry.model}:{entry.name}",
                "sha256": entry.sha256,
            }
    raise FileNotFoundError(
        f"{run}: no checkpoints/best.pt and no committed weights trained by it "
        "(segbench weights list); measure where the run was trained, or publish it first"
    )


def _by_id(prepared: Any, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(images, masks) of ``ids`` from every part of a prepared dataset, in that order."""
    where = {i: (part, j) for part, got in prepared.split_ids.items() for j, i in enumerate(got)}
    imgs = {p: prepared.images(p) for p in prepared.split_ids if prepared.split_ids[p]}
    msks = {p: prepared.masks(p) for p in prepared.split_ids if prepared.split_ids[p]}
    images = np.stack([imgs[where[i][0]][where[i][1]] for i in ids])
    masks = np.stack([msks[where[i][0]][where[i][1]] for i in ids])
    return images, masks


def _preparation_difference(
    run_prepared: Any, full_prepared: Any, ids: list[str]
) -> dict[str, Any]:
    """How the two preparations of the same images differ as arrays: mean absolute
    image difference (grey levels of 255) and pooled Dice of the two ground truths."""
    a_img, a_msk = _by_id(run_prepared, ids)
    b_img, b_msk = _by_id(full_prepared, ids)
    if a_img.shape != b_img.shape:
        raise ValueError(f"image arrays {a_img.shape} and {b_img.shape} differ in shape")
    mad = np.abs(a_img.astype(np.int16) - b_img.astype(np.int16)).mean(axis=(1, 2, 3))
    a, b = a_msk.astype(bool), b_msk.astype(bool)
    return {
        "image_mean_abs_difference": float(mad.mean()),
        "image_mean_abs_difference_max": float(mad.max()),
        "mask_agreement_dsc": 100 * pooled_dsc((a & b).sum(), (a & ~b).sum(), (~a & b).sum()),
    }


def _rescored(
    run: Path, metrics: dict[str, Any], weights: dict[str, Any], *, data: str | Path | None,
    out: Path, progress: bool, label: str = "",
) -> tuple[pd.DataFrame, float]:  # fmt: skip
    """``run``'s test split re-scored with ``weights``: per-image rows (with confusion
    counts) and the pooled DSC in %, which must be the DSC the run recorded."""
    from bench.engine.run_eval import evaluate_model

    scored = evaluate_model(
        run_dir=run, checkpoint=weights["file"], data=data, out=out, compute_hd95=False,
        progress=progress, command="",
    )  # fmt: skip
    per = scored.result.per_image
    got = 100 * pooled_dsc(per["tp"], per["fp"], per["fn"])
    want = 100 * float(metrics["test"]["dsc"])
    if abs(got - want) > REPRODUCE_TOLERANCE_PP:
        raise ValueError(
            f"{label}{run}: re-scoring its test split gives DSC {got:.4f}, the run recorded "
            f"{want:.4f}: these weights or this data are not the run's"
        )
    return per, got


def _trajectory(run: Path, best_epoch: int, split: str) -> dict[str, float]:
    """The run's DSC at every epoch validated on ``split`` ({} when its log has none)."""
    try:
        return selection_effect(pd.read_csv(run / "log.csv"), best_epoch, split)["dsc_by_epoch"]
    except (OSError, ValueError):
        return {}


#: configuration fields that may differ between a run and its ablation besides the ones
#: the ablation is about: names, hashes and where / how fast it ran
_ABLATION_IGNORED = {"recipe", "config_hash", "data", "device", "threads", "cache_dir"}


def _ablation(
    run: Path,
    metrics: dict[str, Any],
    config: dict[str, Any],
    per: pd.DataFrame,
    other: Path,
    *,
    data: str | Path | None,
    out: Path,
    resamples: int,
    progress: bool,
) -> dict[str, Any]:
    """The ablation run ``other`` against ``run``: what differs, and ablation minus run on
    the same test images (see the module docstring)."""
    from bench.engine.run_record import recorded_dataset

    o_metrics, o_config = read_finished_run(other, "--ablation ")
    mine, theirs = recorded_dataset(run), recorded_dataset(other)
    for key in ("fingerprint", "split_hash"):
        if mine.get(key) != theirs.get(key):
            raise ValueError(
                f"--ablation {other}: dataset {key} {theirs.get(key)} is not the run's "
                f"{mine.get(key)}: not scored on the same images"
            )
    differs = sorted(
        k
        for k in set(config) | set(o_config)
        if k not in _ABLATION_IGNORED and config.get(k) != o_config.get(k)
    )
    if not differs:
        raise ValueError(f"--ablation {other}: trained with the run's own configuration")
    weights = run_weights(other)
    o_per, _ = _rescored(other, o_metrics, weights, data=data, out=out, progress=progress,
                         label="--ablation ")  # fmt: skip
    if set(o_per["image_id"]) != set(per["image_id"]):
        raise ValueError(f"--ablation {other}: scores other test images than the run")
    diff = paired_pooled_difference(o_per, per, resamples=resamples)
    split = o_config.get("select_split", "test")
    traj = {
        "run": _trajectory(run, int(metrics["best_epoch"]), split),
        "ablation": _trajectory(other, int(o_metrics["best_epoch"]), split),
    }
    return {
        **diff,
        "order": "ablation - run",
        "run": results_relative(other),
        "recipe": o_metrics.get("recipe"),
        "differs_in": {k: [config.get(k), o_config.get(k)] for k in differs},
        "code_fingerprint": o_metrics.get("code_fingerprint"),
        "weights": weights if weights["source"] == "published" else {"source": "checkpoint"},
        "dsc_by_epoch": traj,
    }


def _seed_dscs(run: Path, metrics: dict[str, Any]) -> dict[int, float]:
    """Pooled test DSC of every finished seed of ``run``'s experiment folder trained with
    the same code fingerprint (``run`` included)."""
    out: dict[int, float] = {}
    for m in sorted(run.parent.glob("seed*/metrics.json")):
        try:
            rec = read_json(m)
        except (OSError, ValueError):
            continue
        if rec.get("status") != "finished":
            continue
        if rec.get("code_fingerprint") != metrics.get("code_fingerprint"):
            continue
        out[int(rec["seed"])] = float(rec["test"]["dsc"])
    return out


def measure_gap(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    full_res: str | Path | None = None,
    ablation: str | Path | None = None,
    resamples: int = 2000,
    draws: int = 1000,
    progress: bool = False,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every cause for ``run_dir`` (see the module docstring); returns the record.

    ``data``: the run's dataset folder when its recorded path does not exist here;
    ``full_res``: a folder holding some of the same images at full resolution (optional;
    without it the data-preparation effect is recorded as not measured). ``ablation``: a
    finished run that differs from ``run_dir`` in one of the authors' habits (optional).
    """
    from bench.core.env import command_line, environment, git_commit
    from bench.core.measure import pinned_threads
    from bench.data.cache import default_cache_root, prepare_data
    from bench.data.duplicates import find_duplicates
    from bench.engine.config import split_kwargs
    from bench.engine.run_eval import evaluate_model
    from models import model_info

    run = Path(run_dir)
    metrics, config = read_finished_run(run)
    model, dataset = metrics["model"], metrics["dataset"]
    reported = dict(model_info(model).reported or {})
    paper_key = next((k for k in reported if dataset.startswith(k)), None)
    paper = reported.get(paper_key) if paper_key else None
    if not isinstance(paper, dict) or paper.get("dsc") is None:
        raise ValueError(
            f"{model}'s registry entry reports no DSC for {dataset} (model_info(...).reported "
            f"has {sorted(reported) or 'nothing'}): no paper figure to measure the gap to"
        )
    weights = run_weights(run)
    log(f"{model} {run.parent.name} seed {metrics['seed']}: weights from {weights['file']}")
    started = time.time()

    with (
        tempfile.TemporaryDirectory() as tmp,
        pinned_threads(config.get("threads")),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        # 1. the run's own test split, re-scored: it must give the run's test DSC back
        per, got = _rescored(run, metrics, weights, data=data, out=Path(tmp) / "own",
                             progress=progress)  # fmt: skip
        causes: dict[str, Any] = {"test_sampling": sampling_interval(per, resamples=resamples)}

        # 2. model selection (only as the authors did it: on the test split)
        if config.get("select_split") == "test":
            causes["selection"] = selection_effect(
                pd.read_csv(run / "log.csv"), int(metrics["best_epoch"])
            )
        else:
            causes["selection"] = {
                "skipped": f"selected on the {config.get('select_split')} split, not on "
                "test: no test-selection optimism to measure"
            }

        # 3. data preparation: the same test images from the full-resolution folder
        data_root = data or config.get("data")
        prepared = prepare_data(
            data_root, size=int(config["image_size"]), **split_kwargs(config), progress=progress
        )
        if full_res is None:
            causes["data_preparation"] = {"skipped": "no --full-res folder given"}
        else:
            other = evaluate_model(
                run_dir=run, checkpoint=weights["file"], data=full_res, split="all",
                out=Path(tmp) / "full", compute_hd95=False, progress=progress, command="",
            )  # fmt: skip
            test_ids = set(per["image_id"])
            full = other.result.per_image[other.result.per_image["image_id"].isin(test_ids)]
            ids = sorted(full["image_id"])
            if len(ids) < 2:
                causes["data_preparation"] = {
                    "skipped": f"{full_res} holds {len(ids)} of the run's test images"
                }
            else:
                diff = paired_pooled_difference(
                    per[per["image_id"].isin(set(ids))], full, resamples=resamples
                )
                full_prepared = prepare_data(  # the cache evaluate_model built
                    full_res, size=int(config["image_size"]), **split_kwargs(config),
                    progress=progress,
                )  # fmt: skip
                causes["data_preparation"] = {
                    **diff,
                    "folder": str(full_res),
                    "order": "run's folder - full-resolution folder resized here",
                    **_preparation_difference(prepared, full_prepared, ids),
                }

        # 4. duplicate leaks of a plain random split
        groups, _ = find_duplicates(
            prepared.index, cache_root=default_cache_root(), progress=progress
        )
        pool = [i for part in ("train", "val", "test") for i in prepared.split_ids.get(part, [])]
        leaks = random_split_leaks(
            pool, [g.ids for g in groups], test_fraction=float(config["test_fraction"]),
            draws=draws,
        )  # fmt: skip
        in_groups = [i for g in groups for i in g.ids]
        causes["duplicates"] = {
            **leaks,
            **leak_bound(per, in_groups, leaks["leaked_test_images_mean"]),
        }

        # 5. an ablation run on the same test images
        if ablation is not None:
            causes["ablation"] = _ablation(
                run, metrics, config, per, Path(ablation), data=data, out=Path(tmp) / "ablation",
                resamples=resamples, progress=progress,
            )  # fmt: skip

    # 6. training seeds of the same code
    causes["seeds"] = seed_spread(_seed_dscs(run, metrics))
    paper_dsc = float(paper["dsc"])
    return {
        "format": FORMAT,
        "model": model,
        "dataset": dataset,
        "experiment": run.parent.name,
        "seed": int(metrics["seed"]),
        "recipe": metrics.get("recipe"),
        "run": results_relative(run),
        "code_fingerprint": metrics.get("code_fingerprint"),
        "weights": weights if weights["source"] == "published" else {"source": "checkpoint"},
        "paper": {"dataset": paper_key, "dsc": paper_dsc},
        "measured_dsc": got,
        "recorded_dsc": 100 * float(metrics["test"]["dsc"]),
        "difference_pp": got - paper_dsc,
        "causes": causes,
        # what scoring said on the way (e.g. which full-resolution images were left out
        # because the run trained on them)
        "notes": [str(w.message) for w in caught],
        "seconds": time.time() - started,
        "command": command if command is not None else command_line(),
        "git_commit": git_commit(),
        "environment": environment("cpu"),
    }


def gap_path(results: str | Path, record: dict[str, Any]) -> Path:
    """Where :func:`measure_gap`'s record is kept under ``results``."""
    return (
        Path(results)
        / "paper-gap"
        / record["dataset"]
        / f"{record['model']}-{record['experiment']}-s{record['seed']}.json"
    )


def write_gap(results: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically to :func:`gap_path`; returns the path."""
    path = gap_path(results, record)
    write_json(path, record)
    return path
