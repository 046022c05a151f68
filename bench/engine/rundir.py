"""Run directories: ``<results>/runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/``, experiment names, configuration conflicts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from bench.core.io import read_json
from bench.engine.config import _FIELD_NAMES, RUNTIME_FIELDS, TrainConfig, with_later_defaults


def experiment_name(recipe: str, epochs: int, amp: str | None = None) -> str:
    """Folder name of an experiment, ``<recipe>-e<epochs>[-<amp>]`` (e.g. ``fair-e300``).

    The recipe is a name or a file's stem; characters unsafe in a folder name become ``-``.
    Mixed-precision runs get their own folder (``fair-e20-bf16``): they are another experiment.
    """
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", str(recipe)).strip("-.") or "recipe"
    return f"{slug}-e{int(epochs)}" + (f"-{amp}" if amp else "")


def run_dir_for(cfg: TrainConfig, results_dir: str | Path = "results") -> Path:
    """``<results>/runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>``."""
    exp = experiment_name(cfg.recipe, cfg.epochs, cfg.amp)
    return Path(results_dir) / "runs" / cfg.dataset_name / cfg.model / exp / f"seed{cfg.seed}"


def read_finished_run(run_dir: str | Path, label: str = "") -> tuple[dict, dict]:
    """``(metrics.json, config.json)`` of a finished run; ValueError naming the folder (after
    ``label``, e.g. ``"--ablation "``) when it is not one."""
    run = Path(run_dir)
    try:
        metrics, config = read_json(run / "metrics.json"), read_json(run / "config.json")
    except (OSError, ValueError) as err:
        raise ValueError(f"{label}{run}: not a finished segbench run ({err})") from None
    if metrics.get("status") != "finished":
        raise ValueError(f"{label}{run}: status {metrics.get('status')!r}, not finished")
    return metrics, config


def results_relative(path: str | Path) -> str:
    """``path`` from its last ``results`` folder on (``results/runs/<dataset>/...``): the
    same in every checkout, so a committed file can point at a committed run folder; the
    path as given when it lies in no ``results`` folder."""
    parts = Path(path).resolve().parts
    at = max((k for k, p in enumerate(parts) if p == "results"), default=None)
    return "/".join(parts[at:]) if at is not None else str(path)


def config_differences(run_dir: Path, cfg: TrainConfig) -> list[str]:
    """Result-defining fields where ``run_dir/config.json`` differs from ``cfg``.

    ``"key: old -> new"`` strings; empty when the file is missing or unreadable (the
    caller then names the config hashes only).
    """
    try:
        old = read_json(run_dir / "config.json")
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict):
        return []
    old = with_later_defaults(old)
    # JSON round trip so tuples compare equal to the lists config.json holds
    new = json.loads(json.dumps(cfg.to_dict()))
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(new) | (set(old) & _FIELD_NAMES))
        if k not in RUNTIME_FIELDS and old.get(k) != new.get(k)
    ]


def _conflict_text(run_dir: Path, cfg: TrainConfig, old_hash: Any) -> str:
    diff = config_differences(run_dir, cfg)
    what = "; ".join(diff) if diff else f"config hash {old_hash} vs {cfg.config_hash}"
    return f"differs in {what}"


_RUN_FILES = (
    "metrics.json",
    "per_image.csv",
    "per_image_original.csv",
    "log.csv",
    "config.json",
    "manifest.json",
)


def _clear_run(run_dir: Path) -> None:
    for name in _RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    for ev in run_dir.glob("events.out.tfevents.*"):
        ev.unlink()
