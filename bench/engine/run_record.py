"""What a run records about where its numbers came from, and the checks that compare it.

A run's result is tied to three things: the data (the dataset's content fingerprint and
its split's hash), the weights (the checkpoint file's sha256 and epoch) and the code (the
code fingerprint, :mod:`bench.engine.provenance`). This module builds the run's
``manifest.json`` and ``metrics.json`` records from a :class:`bench.engine.trainer._Trainer`
and says what changed between a recorded dataset and the one given now, for resume,
``evaluate --run`` and a finished run asked for again (issue 28, items 1-4).

Runs written before a field existed lack it: a comparison then covers only what both
sides recorded (never an error for an old run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.io import read_json
from bench.engine.provenance import code_fingerprint, training_cost
from models.weights import file_sha256


class DatasetChanged(ValueError):
    """The dataset given now is not the one a run was trained on (content or split)."""


def dataset_identity(prepared: Any) -> dict[str, Any]:
    """The part of a prepared dataset that decides which images a run sees."""
    return {
        "root": str(prepared.root),
        "fingerprint": prepared.fingerprint,
        "split_hash": prepared.split_hash,
        "split_counts": {k: len(v) for k, v in prepared.split_ids.items()},
    }


def recorded_dataset(run_dir: Path, ckpt: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dataset identity a run recorded: the checkpoint's own (written since issue 28),
    else ``manifest.json``'s ``dataset`` block; ``{}`` when neither exists."""
    if ckpt is not None and isinstance(ckpt.get("dataset"), dict):
        return dict(ckpt["dataset"])
    try:
        man = read_json(Path(run_dir) / "manifest.json")
    except (OSError, ValueError):
        return {}
    ds = man.get("dataset") if isinstance(man, dict) else None
    return dict(ds) if isinstance(ds, dict) else {}


def dataset_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded dataset identity and the current one.

    Compared: the content fingerprint (file names and sizes, and the split) and the split
    hash, each only where ``old`` recorded it; when either differs, the split counts and
    the folder are named too, so the message says what changed. ``[]``: same data.
    """
    diffs = [
        f"{label} {old[key]} -> {new.get(key)}"
        for key, label in (("fingerprint", "content fingerprint"), ("split_hash", "split hash"))
        if old.get(key) and new.get(key) and old[key] != new[key]
    ]
    if diffs:
        oc, nc = old.get("split_counts"), new.get("split_counts")
        if oc and nc and oc != nc:
            diffs.append(f"split counts {_counts(oc)} -> {_counts(nc)}")
        if old.get("root") and old.get("root") != new.get("root"):
            diffs.append(f"folder {old['root']} -> {new.get('root')}")
    return diffs


def _counts(c: Mapping[str, Any]) -> str:
    return "/".join(f"{k} {v}" for k, v in c.items())


def checkpoint_record(path: Path) -> dict[str, Any] | None:
    """``{"file", "sha256", "epoch"}`` of a run's checkpoint (None when absent): what an
    evaluation or the run's own metrics name as the weights a number came from."""
    from bench.engine.checkpoints import read_checkpoint_file

    path = Path(path)
    if not path.is_file():
        return None
    obj = read_checkpoint_file(path)
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    return {
        "file": f"{path.parent.name}/{path.name}",
        "sha256": file_sha256(path),
        "epoch": int(epoch) if isinstance(epoch, int) else None,
    }


def start_manifest(tr: Any) -> dict[str, Any]:
    """A run's ``manifest.json`` (written at every start or resume)."""
    from bench.core.env import command_line, environment
    from bench.engine.determinism import _backend_settings

    cfg, p = tr.cfg, tr.prepared
    env = environment(tr.device)
    return {
        "command": tr.command or command_line(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_at_epoch": tr.epoch or None,
        "git_commit": env.get("git_commit"),
        # hash of the code that decides the result (models/, bench/engine, bench/data)
        "code_fingerprint": code_fingerprint(),
        "versions": env.get("versions"),
        "device": tr.device,
        "world_size": tr.d.world_size,
        "per_process_batch": tr.per_rank_batch,
        "channels_last": tr.channels_last,
        "deterministic": tr.deterministic,
        "deterministic_requested": cfg.deterministic,
        "amp": tr.amp,
        "amp_requested": cfg.amp,
        "amp_note": tr.amp_note,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "environment": env,
        "torch_backends": _backend_settings(),
        "dataset": {
            "name": cfg.dataset_name,
            "data_name": p.name,
            "root": str(cfg.data),
            "layout": p.layout.name,
            "fingerprint": p.fingerprint,
            "split_file": str(p.split_file),
            "split_hash": p.split_hash,
            "split_counts": {k: len(v) for k, v in p.split_ids.items()},
            # duplicate-image groups on more than one side of the split ([] = none)
            "duplicate_leaks": p.duplicate_leaks,
            "image_size": cfg.image_size,
        },
        "model": {
            "name": cfg.model,
            # "" for segbench's own models; else the distribution + version, module or
            # file that registered it (an external model, labelled so in reports)
            "source": tr.info.source,
            "kwargs": tr.model_kwargs,
            # parameters sharing one storage (MALUNet's tied IEA memory); [] = untied
            "tied_parameters": tr.tied,
            "params": sum(t.numel() for t in tr.model.parameters()),
            "loss_weights": [tr.info.loss_weights[0], list(tr.info.loss_weights[1])],
        },
    }


def final_metrics(tr: Any, res: Any, wall: float) -> dict[str, Any]:
    """A finished run's ``metrics.json``."""
    from bench.core.env import environment

    cfg = tr.cfg
    speeds = [r["images_per_s"] for r in tr.history]
    times = [r["epoch_time_s"] for r in tr.history]
    cost = training_cost(tr.history, tr.sel_split)
    out: dict[str, Any] = {
        "model": cfg.model,
        "model_source": tr.info.source,  # "" = shipped with segbench
        "dataset": cfg.dataset_name,
        "seed": cfg.seed,
        "recipe": cfg.recipe,
        "epochs": cfg.epochs,
        "config_hash": tr.chash,
        # the config without the seed: runs that share it are seeds of one experiment
        "experiment_hash": cfg.experiment_hash,
        # the precision the run really trained in (a CPU bf16 crash falls back to fp32)
        "amp": tr.amp,
        "amp_requested": cfg.amp,
        "status": "finished",
        # the precision the run really used (amp may fall back to fp32, see amp.py)
        "precision": tr.amp or "fp32",
        "hd95_convention": cfg.hd95,
        "model_kwargs": tr.model_kwargs,
        "tied_parameter_groups": len(tr.tied),
        "deterministic": tr.deterministic,
        "best_epoch": tr.best["epoch"],
        "selection": {
            "split": cfg.select_split,
            "metric": cfg.select_metric,
            "value": tr.best["value"],
        },
        # the weights the test score came from, and the data it was trained and scored on:
        # evaluations and the report compare against these (issue 28)
        "checkpoint": checkpoint_record(tr.best_path),
        "data_identity": dataset_identity(tr.prepared),
        "test": res.metrics,
    }
    if res.original is not None:
        out["test_original_resolution"] = res.original
    # medians over epochs: robust to the first (warm-up) epoch and to load spikes
    out.update(
        {
            "train_images_per_s": float(np.median(speeds)) if speeds else None,
            "epoch_time_s": float(np.median(times)) if times else None,
            # this process only (a resumed run's earlier processes are not in it)
            "wall_time_s": wall,
            # summed over every epoch of the run, across resumes (see training_cost)
            **cost,
            "code_fingerprint": code_fingerprint(),
            "t_max": cfg.effective_t_max,
            "eval_split": cfg.eval_split,
            "environment": environment(tr.device),
        }
    )
    return out
