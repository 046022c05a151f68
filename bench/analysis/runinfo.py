"""What each accuracy row rests on: code fingerprint, hosts, commits, training time and
schedule, read from every finished run's own files.

:func:`bench.analysis.runs.find_runs` gives one row per finished run with its test
metrics; this module adds, per run, what a reader needs to judge the row built from it:

- ``fingerprint``: the training-code fingerprint the run recorded (``metrics.json`` or
  ``manifest.json`` ``code_fingerprint``: a hash of models/, bench/engine, bench/data),
  or :data:`UNRECORDED` for runs older than the fingerprint. Seeds are pooled into one
  row only within one fingerprint (:data:`POOL_KEY`); unrecorded runs are pooled but
  their row names the commits and hosts they came from (:func:`code_text`).
- ``hosts``: the machines the run's epochs ran on (``metrics.json`` ``hosts``), else the
  device name of its environment (older runs did not name the host more precisely).
- ``train_time_s``: training + validation time summed over every epoch
  (``train_time_total_s``, correct across resumes), else the same sum from ``log.csv``
  (whose rows survive resumes as well); ``time_to_99_s`` / ``epoch_to_99``: time and
  epoch to 99% of the run's best selection score, where recorded.
- ``t_max``, ``lr_end_fraction`` (the learning rate after the last epoch over the peak,
  from the cosine schedule of the run's config: 0.66 for 20 epochs of T_max = 50),
  ``best_epoch`` and ``picked_last_epoch`` (the model selection chose the last epoch:
  the run may still have been improving).
- ``dice_below_08``: the share of test images with per-image Dice below 0.8
  (``per_image.csv``); ``split_counts``: images per split and ``duplicate_leaks``: the
  duplicate-image groups that cross it (``manifest.json``; NaN when not recorded).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.runs import EXPERIMENT_KEY
from bench.core.io import read_json

#: the fingerprint value of a run that recorded none (made before fingerprints existed)
UNRECORDED = "unrecorded"

#: one row of the accuracy tables: one experiment within one code fingerprint
POOL_KEY = [*EXPERIMENT_KEY, "fingerprint"]

#: per-image Dice below this counts as a poor segmentation (share shown per row)
POOR_DICE = 0.8

INFO_COLUMNS = [
    "fingerprint",
    "hosts",
    "commit",
    "train_time_s",
    "train_time_source",
    "time_to_99_s",
    "epoch_to_99",
    "t_max",
    "lr_end_fraction",
    "best_epoch",
    "picked_last_epoch",
    "dice_below_08",
    "split_counts",
    "duplicate_leaks",
]


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    obj = read_json(path)
    return obj if isinstance(obj, dict) else {}


def _num(v: Any) -> float:
    try:
        out = float(v)
    except (TypeError, ValueError):
        return math.nan
    return out


def lr_end_fraction(config: dict[str, Any] | None, epochs: int, t_max: Any = None) -> float:
    """Learning rate after the last epoch over the peak, for the engine's cosine schedule
    (``torch.optim.lr_scheduler.CosineAnnealingLR`` stepped once per epoch):
    ``(eta_min + (lr - eta_min) (1 + cos(pi min(E, T) / T)) / 2) / lr``. NaN when the
    config lacks the numbers. ``t_max`` (the run's recorded effective T_max) wins over
    the config's, whose ``None`` means "the epoch budget"."""
    cfg = config or {}
    lr, eta = _num(cfg.get("lr")), _num(cfg.get("eta_min", 0.0))
    t = _num(t_max) if t_max is not None else _num(cfg.get("t_max") or epochs)
    if not (math.isfinite(lr) and lr > 0 and math.isfinite(t) and t > 0 and epochs > 0):
        return math.nan
    eta = eta if math.isfinite(eta) else 0.0
    cos = (1 + math.cos(math.pi * min(epochs, t) / t)) / 2
    return (eta + (lr - eta) * cos) / lr


def _log_time(run_dir: Path) -> float:
    """Training + validation seconds summed over log.csv's epochs (NaN without a log)."""
    path = run_dir / "log.csv"
    if not path.is_file():
        return math.nan
    try:
        log = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return math.nan
    if "epoch_time_s" not in log:
        return math.nan
    if "epoch" in log:  # a resumed run may repeat an epoch's row: keep the last
        log = log.drop_duplicates("epoch", keep="last")
    t = pd.to_numeric(log["epoch_time_s"], errors="coerce").fillna(0)
    if "val_time_s" in log:
        t = t + pd.to_numeric(log["val_time_s"], errors="coerce").fillna(0)
    return float(t.sum())


def _poor_share(run_dir: Path) -> float:
    path = run_dir / "per_image.csv"
    if not path.is_file():
        return math.nan
    try:
        dice = pd.to_numeric(pd.read_csv(path, usecols=["dice"])["dice"], errors="coerce")
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return math.nan
    dice = dice.dropna()
    return float((dice < POOR_DICE).mean()) if len(dice) else math.nan


def run_info(run_dir: str | Path, config: dict[str, Any] | None, epochs: int) -> dict[str, Any]:
    """The :data:`INFO_COLUMNS` of one finished run (see the module doc)."""
    run_dir = Path(run_dir)
    m = _json(run_dir / "metrics.json")
    man = _json(run_dir / "manifest.json")
    env = m.get("environment") if isinstance(m.get("environment"), dict) else {}
    fp = m.get("code_fingerprint") or man.get("code_fingerprint")
    hosts = m.get("hosts") if isinstance(m.get("hosts"), list) else []
    host_text = ", ".join(map(str, hosts)) or str(env.get("device_name") or "?")
    commit = str(env.get("git_commit") or man.get("git_commit") or "")
    total = _num(m.get("train_time_total_s"))
    source = "metrics.json"
    if not math.isfinite(total):
        total, source = _log_time(run_dir), "log.csv"
    best = m.get("best_epoch")
    t_max = m.get("t_max")
    return {
        "fingerprint": str(fp) if fp else UNRECORDED,
        "hosts": host_text,
        "commit": commit,
        "train_time_s": total,
        "train_time_source": source if math.isfinite(total) else "",
        "time_to_99_s": _num(m.get("time_to_99pct_best_s")),
        "epoch_to_99": _num(m.get("epoch_to_99pct_best")),
        "t_max": _num(t_max) if t_max is not None else _num((config or {}).get("t_max") or epochs),
        "lr_end_fraction": lr_end_fraction(config, epochs, t_max),
        "best_epoch": _num(best),
        "picked_last_epoch": bool(best is not None and int(best) == int(epochs)),
        "dice_below_08": _poor_share(run_dir),
        "split_counts": _split_text(man),
        "duplicate_leaks": _leaks(man),
    }


def _leaks(manifest: dict[str, Any]) -> float:
    """Duplicate-image groups that cross the run's split (manifest; NaN: not recorded)."""
    leaks = (manifest.get("dataset") or {}).get("duplicate_leaks")
    return float(len(leaks)) if isinstance(leaks, list) else math.nan


def _split_text(manifest: dict[str, Any]) -> str:
    """``"train 1354 / val 151 / test 645"`` from the manifest (``""`` when unrecorded)."""
    counts = (manifest.get("dataset") or {}).get("split_counts")
    if not isinstance(counts, dict) or not counts:
        return ""
    order = sorted(counts, key=lambda k: ({"train": 0, "val": 1, "test": 2}.get(k, 3), k))
    return " / ".join(f"{k} {counts[k]}" for k in order)


def with_run_info(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` (find_runs rows) with :data:`INFO_COLUMNS` added; unchanged when present."""
    if runs.empty or "fingerprint" in runs:
        return runs
    infos = [
        run_info(d, c if isinstance(c, dict) else None, int(e))
        for d, c, e in zip(runs["run_dir"], runs["config"], runs["epochs"])
    ]
    extra = pd.DataFrame(infos, index=runs.index, columns=INFO_COLUMNS)
    return pd.concat([runs, extra], axis=1)


def _short(commit: str) -> str:
    return commit.removesuffix("-dirty")[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def code_text(g: pd.DataFrame) -> str:
    """The code a row's seeds ran: ``fingerprint 0a1b2c3d4e5f6a7b``, or for runs older than
    the fingerprint ``unrecorded: commit 5ef1fa8 (seed 42, AMD EPYC); b310e9a (seeds 1, 2,
    AMD EPYC)``, so a row that mixes commits or hosts says so."""
    fps = sorted(set(g["fingerprint"]))
    if fps != [UNRECORDED]:
        return "; ".join(f"fingerprint {f}" for f in fps)
    parts = []
    for (commit, host), sub in g.groupby(["commit", "hosts"], sort=True):
        seeds = sorted(int(s) for s in sub["seed"])
        label = "seed" if len(seeds) == 1 else "seeds"
        parts.append(
            f"commit {_short(str(commit)) or '?'} ({label} {', '.join(map(str, seeds))}, {host})"
        )
    mixed = " (mixed: seeds from different commits or hosts)" if len(parts) > 1 else ""
    return f"{UNRECORDED}{mixed}: " + "; ".join(parts)
