"""What a run's result rests on: the code that decided it and the machine time it took."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

#: folders whose source decides a training result (relative to the repository root)
CODE_ROOTS = ("models", "bench/engine", "bench/data")


def training_cost(history: list[dict[str, Any]], sel_split: str | None) -> dict[str, Any]:
    """Training time of a run from its per-epoch rows, correct across resumes.

    ``train_time_total_s``: training + validation time of every epoch (the rows survive
    resumes, a process's wall time does not); ``time_to_99pct_best_s``: the same sum up
    to the first epoch whose selection-split DSC reached 99% of the run's best (None
    without DSC rows; with validation every k epochs it is only known to within k
    epochs); ``hosts``: every machine an epoch ran on.
    """
    t = np.array(
        [float(r.get("epoch_time_s") or 0) + float(r.get("val_time_s") or 0) for r in history]
    )
    out: dict[str, Any] = {
        "train_time_total_s": float(t.sum()) if len(t) else None,
        "time_to_99pct_best_s": None,
        "epoch_to_99pct_best": None,
        "hosts": sorted({str(r["host"]) for r in history if r.get("host")}),
    }
    key = f"{sel_split}_dsc" if sel_split else None
    dsc = [r.get(key) if key else None for r in history]
    valid = [(k, float(v)) for k, v in enumerate(dsc) if v is not None and np.isfinite(v)]
    if valid:
        best = max(v for _, v in valid)
        k = next(k for k, v in valid if v >= 0.99 * best)
        out["time_to_99pct_best_s"] = float(t[: k + 1].sum())
        out["epoch_to_99pct_best"] = int(history[k]["epoch"])
    return out


def code_fingerprint(root: str | Path | None = None) -> str:
    """sha256 prefix of the source that decides a training result: every ``.py`` and
    ``.yaml`` file under :data:`CODE_ROOTS` (relative path and content). Runs are pooled
    as seeds of one experiment only within one fingerprint."""
    base = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for rel in CODE_ROOTS:
        folder = base / rel
        for f in sorted(folder.rglob("*")):
            if f.suffix in (".py", ".yaml") and "__pycache__" not in f.parts:
                h.update(f"{f.relative_to(base).as_posix()}\n".encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]
