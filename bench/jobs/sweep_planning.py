"""Planning a sweep: the state of every cell (new, finished, resume, rerun, conflict) before anything runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.io import read_json
from bench.jobs.sweep_definition import Cell, SweepError


@dataclass
class CellOutcome:
    """What happened to one cell; ``status`` is one of

    planned states: ``finished`` (will be skipped), ``resume`` (a checkpoint exists),
    ``new``, ``rerun`` (``--force`` on a finished cell), ``conflict`` (the run folder
    holds a finished run of another configuration: never overwritten without
    ``--force``, so it is reported and not run);
    after the sweep: ``skipped``, ``done``, ``failed``, ``conflict``, ``submitted``
    (``--no-wait``), ``running`` (still queued or running in a job array submitted
    earlier: not submitted again), ``cancelled`` (its Slurm job was cancelled, e.g. by
    ``scancel``: a rerun resumes it), ``interrupted``.

    ``slurm_state``: the job's state per ``sacct`` (``COMPLETED``, ``FAILED``,
    ``CANCELLED``, ``TIMEOUT``, ...) for Slurm cells; for a skipped cell, that of the job
    that produced its run (from the previous ``cells.csv``).
    """

    cell: Cell
    status: str
    run_dir: Path
    config_hash: str | None = None
    job_id: str | None = None
    log: Path | None = None
    error: str | None = None
    slurm_state: str | None = None

    def row(self) -> dict[str, Any]:
        shows_log = self.status in ("failed", "cancelled", "interrupted", "submitted", "running")
        where = self.log if shows_log and self.log else self.run_dir
        return {
            "cell": self.cell.label,
            "status": self.status,
            "job": self.job_id or "",
            "slurm_state": self.slurm_state or "",
            "path": str(where) if where else "",
            "error": self.error or "",
        }


def _finished_hash(run_dir: Path) -> str | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        m = read_json(path)
    except ValueError:
        return None  # unreadable: treat as not finished, the engine will redo it
    return m.get("config_hash") if isinstance(m, dict) and m.get("status") == "finished" else None


def plan_cells(
    cells: Sequence[Cell], results_dir: str | Path, force: bool = False
) -> list[CellOutcome]:
    """Each cell's planned state, from its run directory (nothing is run or written)."""
    from bench.engine.rundir import config_differences, run_dir_for

    results_dir = Path(results_dir)
    seen: dict[Path, Cell] = {}
    out = []
    for cell in cells:
        cfg = cell.config()
        digest = cfg.config_hash
        run_dir = run_dir_for(cfg, results_dir)
        if run_dir in seen:
            raise SweepError(
                f"cells {seen[run_dir].label} and {cell.label} would share run folder {run_dir}"
            )
        seen[run_dir] = cell
        done = _finished_hash(run_dir)
        error = None
        if done is not None and force:
            status = "rerun"
        elif done == digest:
            status = "finished"
        elif done is not None:
            status = "conflict"
            diff = "; ".join(config_differences(run_dir, cfg)) or f"hash {done} vs {digest}"
            error = (
                f"finished run of another configuration of this experiment ({diff}); "
                "--force overwrites it"
            )
        elif any((run_dir / "checkpoints").glob("*.pt")):
            status = "resume"
        else:
            status = "new"
        out.append(CellOutcome(cell, status, run_dir, digest, error=error))
    return out
