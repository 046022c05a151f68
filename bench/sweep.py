"""Sweeps: models x datasets x seeds (x input sizes), one engine run per cell, via submitit.

A sweep is a YAML file (see ``bench/sweeps/example.yaml``)::

    name: isic2017-main          # names the log folder (default: the file's stem)
    recipe: fair                 # engine recipe (bench.train.TrainConfig.from_recipe)
    models: [malunet, egeunet, unet]   # names or wildcard patterns of the registry
    datasets:
      - {name: isic2017, root: ../data/isic2017}   # root relative to this file
    seeds: [0, 1, 2]
    input_sizes: [256]           # optional; more than one size gives each its own dataset label
    overrides: {epochs: 300}     # any TrainConfig field
    slurm: {partition: gpu, time: 720, gpus_per_task: 1, array_parallelism: 8}

Every cell is one ``bench.train.run_training`` call with its own run directory
(``results/runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/``). Before anything is
submitted, cells whose ``metrics.json`` is finished with the same config hash are
skipped; the others run, and an interrupted cell resumes from its last checkpoint (the
engine does that). A failed cell is reported with its log files and does not stop the
others. At the end a table lists every cell with its status and run directory or log
path, and the accuracy over seeds (``results/tables/sweep_summary.*``) and the paired
statistics per dataset of the sweep's experiment
(``results/stats/<dataset>_<recipe>-e<epochs>_pairwise.*``, see :mod:`bench.stats`) are
refreshed.

Executors (all submitit, no scheduler of our own):

* ``--executor local`` (default): ``submitit.LocalExecutor``, each cell a subprocess,
  ``--parallel N`` of them at a time (one after another by default). With GPUs present
  each running cell gets one GPU, the least busy.
* ``--executor debug``: ``submitit.DebugExecutor``, cells run in this process one after
  another (for debugging; a failing cell is logged and reported, never dropped into pdb).
* ``--executor slurm``: ``submitit.SlurmExecutor``, ONE Slurm job array with one task
  per cell that is not finished yet, ``--array-parallelism K`` running at once (``%K``).

Running the same sweep on a Slurm cluster
-----------------------------------------
1. Put the checkout, the data and the virtual environment on a file system that the
   login node and the compute nodes share (the job runs the same ``python`` binary
   that submitted it, and workers import ``bench`` from the checkout).
2. On the login node, in the checkout, with the environment active::

       segbench sweep bench/sweeps/example.yaml --executor slurm --partition gpu \\
           --gpus-per-task 1 --cpus-per-task 8 --mem 32G --time 720 --array-parallelism 8

   ``--dry-run`` first shows the cells and what would be skipped. Defaults for these
   options can live in the YAML's ``slurm:`` section; the command line wins.
3. The command waits and prints the summary when the array is done. With ``--no-wait``
   it prints the job ids and log paths and returns; ``squeue -u $USER`` / ``sacct`` show
   progress and ``scancel <jobid>`` stops the array. Logs are in
   ``results/sweeps/<name>/logs/<jobid>_<task>/`` (``--logs`` to change).
4. Cells that reach the time limit or are preempted are requeued by submitit (up to 3
   times) and resume from their last checkpoint. Running the same command again later
   submits only the cells that are unfinished (e.g. failed ones); cells whose job of an
   earlier ``--no-wait`` submission ``sacct`` still reports as pending or running are
   not submitted twice (``results/sweeps/<name>/cells.csv`` remembers the job ids).
   After a ``--no-wait`` array is done, run the command again to collect the results
   and refresh the summary tables.

Data caches: the first cell of a dataset builds its preprocessing cache; cells running
at the same time may build it twice but never see a half-written one (``bench.data``
renames a finished cache into place).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import functools
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.io import read_json, write_csv
from bench.stats import aggregate_runs, pairwise_comparisons, pairwise_path, write_summary

__all__ = [
    "Cell",
    "CellOutcome",
    "CellTask",
    "SlurmOptions",
    "SweepConfig",
    "SweepError",
    "aggregate_runs",
    "load_sweep",
    "make_executor",
    "plan_cells",
    "refresh_statistics",
    "register",
    "run_cells",
    "run_sweep",
    "summary_table",
    "sweep_from_dict",
]

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm", "debug")
_TOP_KEYS = {
    "name",
    "recipe",
    "models",
    "datasets",
    "seeds",
    "input_sizes",
    "overrides",
    "slurm",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SweepError(ValueError):
    """A sweep file or sweep argument is wrong; the message names the file and the key."""


# ------------------------------------------------------------------------ definition


@dataclass(frozen=True)
class SlurmOptions:
    """Options of the Slurm job array (``None`` leaves the cluster's default)."""

    partition: str | None = None
    time: int = 1440  # minutes per task
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    array_parallelism: int = 256  # submitit's default
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()  # shell lines run before the task, e.g. "source .venv/bin/activate"

    def to_submitit(self) -> dict[str, Any]:
        """Keyword arguments of ``SlurmExecutor.update_parameters``."""
        params: dict[str, Any] = {
            "time": int(self.time),
            "array_parallelism": int(self.array_parallelism),
            "job_name": "segbench-sweep",
        }
        for key in (
            "partition",
            "gpus_per_task",
            "cpus_per_task",
            "mem",
            "account",
            "qos",
            "constraint",
        ):
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        if self.setup:
            params["setup"] = list(self.setup)
        return params


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: what ``bench.train.TrainConfig.from_recipe`` receives."""

    model: str
    dataset: str  # label of the run folder: results/runs/<dataset>/...
    data_root: str
    seed: int
    input_size: int | None = None
    recipe: str = "fair"
    overrides: tuple[tuple[str, Any], ...] = ()  # TrainConfig (field, value) pairs, sorted

    @property
    def experiment(self) -> str:
        """``<recipe>-e<epochs>``: the experiment folder of this cell's run."""
        over = dict(self.overrides)
        return _experiment(self.recipe, over.get("recipe"), over.get("epochs"), over.get("amp"))

    @property
    def label(self) -> str:
        """``<dataset>/<model>/<recipe>-e<epochs>/seed<k>``, as in the run folder's path."""
        return f"{self.dataset}/{self.model}/{self.experiment}/seed{self.seed}"

    def config(self, **runtime: Any) -> Any:
        """The engine's ``TrainConfig`` for this cell (validates every field).

        ``runtime`` sets fields that do not enter the config hash (e.g. ``threads``).
        """
        from bench.train import TrainConfig

        kwargs: dict[str, Any] = dict(self.overrides)
        kwargs.update(model=self.model, data=self.data_root, dataset=self.dataset, seed=self.seed)
        if self.input_size is not None:
            kwargs["image_size"] = self.input_size
        kwargs.update(runtime)
        return TrainConfig.from_recipe(self.recipe, **kwargs)


@functools.lru_cache(maxsize=64)
def _experiment(recipe: str, name: Any, epochs: Any, amp: Any = None) -> str:
    from bench.train import TrainConfig, experiment_name

    pairs = (("recipe", name), ("epochs", epochs), ("amp", amp))
    over = {k: v for k, v in pairs if v is not None}
    try:
        cfg = TrainConfig.from_recipe(recipe, **over)
    except (TypeError, ValueError, FileNotFoundError):
        return f"{recipe}-e?"  # a bad recipe is reported when the cell's config is built
    return experiment_name(cfg.recipe, cfg.epochs, cfg.amp)


@dataclass(frozen=True)
class SweepConfig:
    name: str
    path: Path | None
    recipe: str
    models: tuple[str, ...]
    datasets: tuple[tuple[str, str], ...]  # (label, absolute root)
    seeds: tuple[int, ...]
    input_sizes: tuple[int | None, ...] = (None,)
    overrides: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Every cell, dataset-major then model, size, seed (the order of the job array)."""
        several = len(self.input_sizes) > 1
        out = []
        for ds, root in self.datasets:
            for model in self.models:
                for size in self.input_sizes:
                    label = f"{ds}-{size}px" if several else ds
                    for seed in self.seeds:
                        out.append(
                            Cell(
                                model=model,
                                dataset=label,
                                data_root=root,
                                seed=seed,
                                input_size=size,
                                recipe=self.recipe,
                                overrides=tuple(sorted(self.overrides.items())),
                            )
                        )
        return out


def _int_list(value: Any, where: str, minimum: int) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise SweepError(f"{where}: expected integers >= {minimum}, got {v!r}")
        out.append(v)
    if not out:
        raise SweepError(f"{where}: empty list")
    if len(set(out)) != len(out):
        raise SweepError(f"{where}: repeated values in {out}")
    return tuple(out)


def _expand_models(entries: Any, where: str) -> tuple[str, ...]:
    from models import list_models

    if isinstance(entries, str):
        entries = [e.strip() for e in entries.split(",")]
    if not isinstance(entries, list) or not entries:
        raise SweepError(f"{where}: expected a non-empty list of model names or patterns")
    known = list_models()
    out: list[str] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            raise SweepError(f"{where}: not a model name: {entry!r}")
        if any(ch in entry for ch in "*?["):
            hits = [n for n in known if fnmatch.fnmatchcase(n, entry)]
            if not hits:
                raise SweepError(f"{where}: pattern {entry!r} matches no registered model")
        else:
            if entry not in known:
                import difflib

                close = difflib.get_close_matches(entry, known, n=3, cutoff=0.5)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise SweepError(
                    f"{where}: unknown model {entry!r}.{hint} Known: {', '.join(known)}"
                )
            hits = [entry]
        out += [h for h in hits if h not in out]
    return tuple(out)


def _datasets(value: Any, where: str, base: Path) -> tuple[tuple[str, str], ...]:
    if isinstance(value, dict):  # {name: root, ...}
        value = [{"name": k, "root": v} for k, v in value.items()]
    if not isinstance(value, list) or not value:
        raise SweepError(f"{where}: expected a non-empty list of {{name, root}} entries")
    out: list[tuple[str, str]] = []
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            entry = {"root": entry}
        if not isinstance(entry, dict) or "root" not in entry:
            raise SweepError(f"{where}[{i}]: expected {{name: ..., root: ...}}, got {entry!r}")
        extra = set(entry) - {"name", "root"}
        if extra:
            raise SweepError(
                f"{where}[{i}]: unknown key(s) {', '.join(sorted(extra))} (allowed: name, root)"
            )
        root = Path(os.path.expandvars(os.path.expanduser(str(entry["root"]))))
        root = (base / root).resolve() if not root.is_absolute() else root
        if not root.is_dir():
            raise SweepError(f"{where}[{i}]: data root {root} is not a folder")
        name = str(entry.get("name") or root.name)
        if not _NAME_RE.match(name):
            raise SweepError(f"{where}[{i}]: dataset name {name!r} must be a plain folder name")
        if name in {n for n, _ in out}:
            raise SweepError(f"{where}: dataset name {name!r} appears twice")
        out.append((name, str(root)))
    return tuple(out)


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep YAML; every error names the file and the key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: sweep file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return sweep_from_dict(raw, source=path)


def sweep_from_dict(raw: dict[str, Any], source: Path | None = None) -> SweepConfig:
    """Validate a sweep given as a dict (relative data roots: the source file's folder)."""
    where = str(source) if source else "sweep"
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise SweepError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}"
        )
    for key in ("models", "datasets"):
        if key not in raw:
            raise SweepError(f"{where}: missing required key {key!r}")
    base = source.parent if source else Path.cwd()
    name = str(raw.get("name") or (source.stem if source else "sweep"))
    if not _NAME_RE.match(name):
        raise SweepError(f"{where}: name {name!r} must be a plain folder name")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SweepError(f"{where}: overrides: expected a mapping of TrainConfig fields")
    owned = {"model": "models", "data": "datasets", "dataset": "datasets", "seed": "seeds"}
    if raw.get("input_sizes") is not None:
        owned["image_size"] = "input_sizes"
    for key, instead in owned.items():
        if key in overrides:
            raise SweepError(f"{where}: overrides.{key}: set by the sweep itself (use {instead})")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise SweepError(f"{where}: slurm: expected a mapping of Slurm options")
    bad = sorted(set(slurm) - {f.name for f in dataclasses.fields(SlurmOptions)})
    if bad:
        raise SweepError(
            f"{where}: slurm: unknown option(s) {', '.join(bad)}; allowed: "
            + ", ".join(f.name for f in dataclasses.fields(SlurmOptions))
        )
    sizes = raw.get("input_sizes")
    recipe = raw.get("recipe", "fair")
    if not isinstance(recipe, str) or not recipe:
        raise SweepError(f"{where}: recipe: expected a recipe name, got {recipe!r}")
    cfg = SweepConfig(
        name=name,
        path=source,
        recipe=recipe,
        models=_expand_models(raw["models"], f"{where}: models"),
        datasets=_datasets(raw["datasets"], f"{where}: datasets", base),
        seeds=_int_list(raw.get("seeds", [42]), f"{where}: seeds", 0),
        input_sizes=(None,) if sizes is None else _int_list(sizes, f"{where}: input_sizes", 1),
        overrides=dict(overrides),
        slurm=dict(slurm),
    )
    # Building every cell's TrainConfig checks the recipe and the overrides now, not
    # hours later on a compute node.
    for cell in cfg.cells():
        try:
            cell.config()
        except SweepError as err:
            raise SweepError(f"{where}: {err}") from None
        except (TypeError, ValueError, KeyError, FileNotFoundError) as err:
            raise SweepError(f"{where}: cell {cell.label}: {err}") from None
    return cfg


# -------------------------------------------------------------------------- planning


@dataclass
class CellOutcome:
    """What happened to one cell; ``status`` is one of

    planned states: ``finished`` (will be skipped), ``resume`` (a checkpoint exists),
    ``new``, ``rerun`` (``--force`` on a finished cell), ``conflict`` (the run folder
    holds a finished run of another configuration: never overwritten without
    ``--force``, so it is reported and not run);
    after the sweep: ``skipped``, ``done``, ``failed``, ``conflict``, ``submitted``
    (``--no-wait``), ``running`` (still queued or running in a job array submitted
    earlier: not submitted again), ``interrupted``.
    """

    cell: Cell
    status: str
    run_dir: Path
    config_hash: str | None = None
    job_id: str | None = None
    log: Path | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        shows_log = self.status in ("failed", "interrupted", "submitted", "running")
        where = self.log if shows_log and self.log else self.run_dir
        return {
            "cell": self.cell.label,
            "status": self.status,
            "job": self.job_id or "",
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
    from bench.train import config_differences, run_dir_for

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


# ------------------------------------------------------------------------- execution


class CellTask:
    """The picklable callable that one submitit job runs: one engine run.

    submitit calls :meth:`checkpoint` when Slurm sends the time-limit / preemption
    signal; the job is requeued with the same cell (never with ``force``, so the
    requeued job resumes from the engine's last checkpoint instead of restarting).
    """

    def __init__(
        self,
        results_dir: str | Path,
        force: bool = False,
        quiet: bool = True,
        catch: bool = False,
        threads: int | None = None,
    ) -> None:
        self.results_dir = str(results_dir)
        self.force = force
        self.quiet = quiet
        self.catch = catch  # return failures instead of raising (the in-process executor)
        self.threads = threads

    def __call__(self, cell: Cell) -> dict[str, Any]:
        try:
            from bench.train import run_training

            run_dir = run_training(
                cell.config(**({"threads": self.threads} if self.threads else {})),
                results_dir=self.results_dir,
                resume=True,
                force=self.force,
                quiet=self.quiet,
            )
            metrics = read_json(Path(run_dir) / "metrics.json")
            return {"status": metrics.get("status", "unknown"), "run_dir": str(run_dir)}
        except Exception as err:
            if not self.catch:
                raise
            # The debug executor has no log of its own for print(); logging reaches its files.
            log.error("cell %s failed:\n%s", cell.label, traceback.format_exc())
            return {"status": "failed", "error": f"{type(err).__name__}: {err}"}

    def checkpoint(self, cell: Cell) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(
            CellTask(self.results_dir, False, self.quiet, self.catch, self.threads), cell
        )


def make_executor(
    kind: str,
    folder: str | Path,
    *,
    slurm: SlurmOptions | None = None,
    timeout_min: int | None = None,
) -> Any:
    """A submitit executor of ``kind`` ('local', 'slurm' or 'debug').

    Logs go to ``folder/<job id>/`` (Slurm, debug) or ``folder/<pid>_0_log.{out,err}``
    (local: submitit's local controller would leave a stray literal ``%j`` folder).
    """
    import submitit

    if kind == "local":
        ex = submitit.LocalExecutor(Path(folder))
        # submitit's local default is a 2-minute limit; a cell trains for hours.
        ex.update_parameters(timeout_min=timeout_min or 7 * 24 * 60)
        return ex
    folder = Path(folder) / "%j"
    if kind == "debug":
        return submitit.DebugExecutor(folder)
    if kind == "slurm":
        try:
            ex = submitit.SlurmExecutor(folder)
        except RuntimeError as err:  # submitit: no `srun` on PATH
            raise SweepError(
                f"--executor slurm: {err} Run the sweep on the cluster's login node, "
                "or use --executor local."
            ) from None
        ex.update_parameters(**(slurm or SlurmOptions()).to_submitit())
        return ex
    raise SweepError(f"--executor: unknown executor {kind!r}; choose from {', '.join(EXECUTORS)}")


def _error_line(text: str) -> str:
    """The exception line of a traceback (submitit's FailedJobError wraps the remote
    traceback between dashed lines and appends the log paths)."""
    lines = [ln.strip() for ln in str(text).splitlines()]
    if any(ln.startswith("Traceback") for ln in lines):
        start = max(i for i, ln in enumerate(lines) if ln.startswith("Traceback"))
        body = []
        for ln in lines[start + 1 :]:
            if ln and set(ln) == {"-"}:
                break
            body.append(ln)
        lines = body
    lines = [ln for ln in lines if ln]
    return lines[-1][:300] if lines else ""


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no usable CUDA is not an error for a CPU sweep
        return 0


def _collect(job: Any, outcome: CellOutcome) -> None:
    """Fill ``outcome`` from a finished job; a failure never raises here."""
    outcome.job_id = str(job.job_id)
    outcome.log = Path(job.paths.stderr)
    try:
        res = job.result()
    except Exception as err:  # FailedJobError (with the remote traceback), UncompletedJobError
        outcome.status = "failed"
        outcome.error = _error_line(str(err)) or type(err).__name__
        return
    if isinstance(res, dict) and res.get("status") == "failed":
        outcome.status, outcome.error = "failed", res.get("error")
    else:
        outcome.status = "done"
        if isinstance(res, dict) and res.get("run_dir"):
            outcome.run_dir = Path(res["run_dir"])


def _local_window(
    executor: Any, task: CellTask, todo: list[CellOutcome], parallel: int, gpus: int, poll_s: float
) -> Iterator[tuple[Any, CellOutcome]]:
    """Keep at most ``parallel`` LocalExecutor jobs running (submitit starts every
    submitted local job at once and has no concurrency limit); yield each as it ends."""
    pending = list(todo)
    running: list[tuple[Any, CellOutcome, int | None]] = []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                outcome = pending.pop(0)
                gpu = None
                if gpus:
                    busy = [g for _, _, g in running]
                    gpu = min(range(gpus), key=busy.count)
                    executor.update_parameters(gpus_per_node=1, visible_gpus=(gpu,))
                job = executor.submit(task, outcome.cell)
                outcome.job_id, outcome.log = str(job.job_id), Path(job.paths.stderr)
                running.append((job, outcome, gpu))
            finished = [r for r in running if r[0].done()]
            for r in finished:
                running.remove(r)
                yield r[0], r[1]
            if not finished:
                time.sleep(poll_s)
    finally:
        for job, outcome, _ in running:  # Ctrl-C: the engine saves a checkpoint on SIGINT
            job.cancel(check=False)
            outcome.status = "interrupted"


def run_cells(
    cells: Sequence[Cell],
    *,
    results_dir: str | Path = "results",
    executor: str = "local",
    parallel: int = 1,
    slurm: SlurmOptions | None = None,
    logs_dir: str | Path | None = None,
    force: bool = False,
    wait: bool = True,
    quiet: bool = False,
    poll_s: float = 0.5,
    previous_jobs: dict[str, str] | None = None,
) -> list[CellOutcome]:
    """Plan, skip the finished cells, run the rest on a submitit executor, collect.

    Never raises for a failing cell: its outcome is ``failed`` with the job's stderr
    log path and the last line of the error. ``wait=False`` (Slurm only) returns right
    after submission with ``submitted`` outcomes.

    ``previous_jobs`` maps cell labels to Slurm job ids of an earlier ``--no-wait``
    submission: a cell whose job ``sacct`` reports as still pending or running is not
    submitted again (its outcome is ``running``, and with ``wait`` it is waited for).
    Where ``sacct`` cannot tell, the cell is submitted again.
    """
    if executor not in EXECUTORS:
        raise SweepError(
            f"--executor: unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}"
        )
    if parallel < 1:
        raise SweepError(f"--parallel must be at least 1, got {parallel}")
    if not wait and executor != "slurm":
        raise SweepError(
            "--no-wait needs --executor slurm (local and debug cells live in this process)"
        )
    results_dir = Path(results_dir)
    outcomes = plan_cells(cells, results_dir, force=force)
    todo = [o for o in outcomes if o.status in ("new", "resume", "rerun")]
    for o in outcomes:
        if o.status == "finished":
            o.status = "skipped"
    if not todo:
        return outcomes
    logs_dir = Path(logs_dir) if logs_dir else results_dir / "sweeps" / "sweep" / "logs"
    threads = None
    if executor == "local" and parallel > 1 and not _gpu_count():
        threads = max(1, (os.cpu_count() or 1) // parallel)  # share the CPU, don't oversubscribe
    task = CellTask(
        results_dir,
        force=force,
        quiet=quiet,
        catch=executor == "debug",
        threads=threads,
    )
    ex = make_executor(executor, logs_dir, slurm=slurm)
    attached = _attach_active(todo, previous_jobs, logs_dir) if executor == "slurm" else []
    todo = [o for o in todo if o.status != "running"]

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(todo) + len(attached), desc="sweep", unit="cell", disable=quiet or not wait
    )
    try:
        if executor == "local":
            for job, outcome in _local_window(ex, task, todo, parallel, _gpu_count(), poll_s):
                _collect(job, outcome)
                bar.update()
                bar.set_postfix_str(f"{outcome.cell.label}: {outcome.status}")
        elif executor == "debug":
            for outcome in todo:
                job = ex.submit(task, outcome.cell)
                _collect(job, outcome)
                bar.update()
        else:  # one job array, one task per cell
            import submitit

            jobs = ex.map_array(task, [o.cell for o in todo]) if todo else []
            for job, outcome in zip(jobs, todo):
                outcome.status, outcome.job_id = "submitted", str(job.job_id)
                outcome.log = Path(job.paths.stderr)
            pairs = list(zip(jobs, todo)) + attached
            if wait and pairs:
                by_id = {str(j.job_id): o for j, o in pairs}
                for job in submitit.helpers.as_completed(
                    [j for j, _ in pairs], poll_frequency=max(poll_s, 30)
                ):
                    _collect(job, by_id[str(job.job_id)])
                    bar.update()
    except KeyboardInterrupt:
        for o in outcomes:
            if o.status in ("new", "resume", "rerun"):
                o.status = "interrupted"
        print("interrupted: rerun the same command to resume the unfinished cells", file=sys.stderr)
    finally:
        bar.close()
    return outcomes


_SLURM_ACTIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
}


def _attach_active(
    todo: list[CellOutcome], previous: dict[str, str] | None, logs_dir: Path
) -> list[tuple[Any, CellOutcome]]:
    """Cells whose earlier Slurm job is still queued or running (per ``sacct``)."""
    import submitit

    wanted = {
        o.cell.label: previous[o.cell.label]
        for o in todo
        if previous and previous.get(o.cell.label)
    }
    if not wanted:
        return []
    jobs = {
        label: submitit.SlurmJob(folder=logs_dir / "%j", job_id=jid)
        for label, jid in wanted.items()
    }
    watcher = submitit.SlurmJob.watcher
    for job in jobs.values():
        watcher.register_job(job.job_id)
    watcher.update()  # one sacct call for all of them
    attached = []
    for o in todo:
        job = jobs.get(o.cell.label)
        if job is None:
            continue
        state = (watcher.get_info(job.job_id, mode="cache").get("State") or "").split(" ")[0]
        if state in _SLURM_ACTIVE:
            o.status, o.job_id, o.log = "running", str(job.job_id), Path(job.paths.stderr)
            attached.append((job, o))
    return attached


def summary_table(outcomes: Sequence[CellOutcome]) -> pd.DataFrame:
    """cell, status, job, path (run dir, or the log of a failed / submitted cell), error."""
    return pd.DataFrame(
        [o.row() for o in outcomes], columns=["cell", "status", "job", "path", "error"]
    )


def run_sweep(
    sweep: SweepConfig,
    *,
    results_dir: str | Path = "results",
    executor: str = "local",
    parallel: int = 1,
    slurm: SlurmOptions | None = None,
    logs_dir: str | Path | None = None,
    force: bool = False,
    wait: bool = True,
    quiet: bool = False,
    report: bool = True,
    **kwargs: Any,
) -> list[CellOutcome]:
    """Run a sweep; then write its status table and refresh summary tables and statistics."""
    results_dir = Path(results_dir)
    base = results_dir / "sweeps" / sweep.name
    previous = None
    if executor == "slurm" and (base / "cells.csv").is_file():
        prev = pd.read_csv(base / "cells.csv", dtype=str).fillna("")
        active = prev[prev["status"].isin(["submitted", "running"]) & (prev["job"] != "")]
        previous = dict(zip(active["cell"], active["job"]))
    outcomes = run_cells(
        sweep.cells(),
        results_dir=results_dir,
        executor=executor,
        parallel=parallel,
        slurm=slurm,
        logs_dir=logs_dir or base / "logs",
        force=force,
        wait=wait,
        quiet=quiet,
        previous_jobs=previous,
        **kwargs,
    )
    write_csv(base / "cells.csv", summary_table(outcomes))
    if report and any(o.status in ("done", "skipped") for o in outcomes):
        first = outcomes[0].cell.config()  # every cell of a sweep shares recipe and epochs
        refresh_statistics(
            results_dir,
            sorted({o.cell.dataset for o in outcomes}),
            quiet=quiet,
            recipe=first.recipe,
            epochs=first.epochs,
        )
    return outcomes


def refresh_statistics(
    results_dir: str | Path,
    datasets: Sequence[str],
    quiet: bool = False,
    recipe: str | None = None,
    epochs: int | None = None,
) -> None:
    """Rewrite the over-seeds summary and each dataset's pairwise table (where possible).

    ``recipe`` / ``epochs`` name the experiment to compare (the sweep's); None lets
    :func:`bench.stats.choose_experiment` pick.
    """
    paths = write_summary(results_dir)
    if not quiet:
        print(f"wrote {paths[0]} and {paths[1]}")
    for ds in datasets:
        try:
            df = pairwise_comparisons(results_dir, ds, recipe=recipe, epochs=epochs)
        except (ValueError, FileNotFoundError) as err:
            # Fewer than two models finished, or image sets differ: the sweep itself succeeded.
            if not quiet:
                print(f"no pairwise statistics for {ds}: {err}", file=sys.stderr)
        else:
            if not quiet:
                rcp, ep = str(df["recipe"].iloc[0]), int(df["epochs"].iloc[0])
                print(f"wrote {pairwise_path(results_dir, ds, rcp, ep)}")


# ------------------------------------------------------------------------------ CLI


def _slurm_options(args: argparse.Namespace, sweep: SweepConfig) -> SlurmOptions:
    merged: dict[str, Any] = dict(sweep.slurm)
    for key in (
        "partition",
        "time",
        "gpus_per_task",
        "cpus_per_task",
        "mem",
        "array_parallelism",
        "account",
        "qos",
        "constraint",
    ):
        value = getattr(args, key)
        if value is not None:
            merged[key] = value
    if args.setup:
        merged["setup"] = args.setup
    if isinstance(merged.get("setup"), str):
        merged["setup"] = [merged["setup"]]
    merged["setup"] = tuple(merged.get("setup") or ())
    for key in ("time", "array_parallelism", "gpus_per_task", "cpus_per_task"):
        v = merged.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise SweepError(f"slurm option {key}: expected a positive integer, got {v!r}")
    return SlurmOptions(**merged)


def _print_table(df: pd.DataFrame) -> None:
    # Paths in full (a log path is what the user needs next); errors listed below the table.
    print(df.drop(columns=["error"]).to_string(index=False))
    for _, row in df[df["error"].astype(bool)].iterrows():
        print(f"  {row['cell']}: {row['error']}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    try:
        sweep = load_sweep(args.config)
        slurm = _slurm_options(args, sweep)
        if args.dry_run:
            outcomes = plan_cells(sweep.cells(), args.results, force=args.force)
            df = summary_table(outcomes)
            n_run = sum(o.status in ("new", "resume", "rerun") for o in outcomes)
            n_done = sum(o.status == "finished" for o in outcomes)
            print(
                f"sweep {sweep.name}: {len(outcomes)} cells, {n_run} to run, {n_done} finished"
                f", {len(outcomes) - n_run - n_done} in conflict; executor {args.executor}"
            )
            _print_table(df)
            if args.executor == "slurm":
                print("slurm options:", slurm.to_submitit())
            return 0
        outcomes = run_sweep(
            sweep,
            results_dir=args.results,
            executor=args.executor,
            parallel=args.parallel,
            slurm=slurm,
            logs_dir=args.logs,
            force=args.force,
            wait=not args.no_wait,
            quiet=args.quiet,
        )
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    df = summary_table(outcomes)
    counts = df["status"].value_counts().to_dict()
    print(f"sweep {sweep.name}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    _print_table(df)
    if counts.get("submitted"):
        array = sorted({str(j).split("_")[0] for j in df.loc[df["status"] == "submitted", "job"]})
        print(
            f"submitted Slurm job {', '.join(array)}: `squeue -j {array[0]}` shows progress; run "
            "the same command again when it is done to collect and summarise the results"
        )
    if counts.get("failed") or counts.get("conflict"):
        print(
            "failed cells: see the log paths above; rerun the command to retry only those",
            file=sys.stderr,
        )
        return 1
    return 130 if counts.get("interrupted") else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a models x datasets x seeds sweep (local, or a Slurm job array)",
        description="Run every cell of a sweep file (models x datasets x seeds [x input "
        "sizes]) as one engine run each, through submitit. Finished cells are skipped, "
        "interrupted ones resume, failures are reported with their log path. See "
        "bench/sweeps/example.yaml and the bench.sweep docstring for cluster use.",
    )
    p.add_argument("config", help="sweep YAML file")
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local (default): subprocesses on this machine; slurm: one job array; "
        "debug: in-process, one after another",
    )
    p.add_argument(
        "--parallel", type=int, default=1, help="local executor: cells running at once (default: 1)"
    )
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument(
        "--logs", default=None, help="submitit log folder (default: RESULTS/sweeps/NAME/logs)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="show the cells and their state; run nothing"
    )
    p.add_argument("--force", action="store_true", help="re-run finished cells too")
    p.add_argument(
        "--no-wait", action="store_true", help="slurm: return after submitting the array"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("slurm options (override the sweep file's slurm: section)")
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument(
        "--time", type=int, default=None, help="time limit per cell in minutes (default 1440)"
    )
    g.add_argument("--gpus-per-task", type=int, default=None, help="GPUs per cell")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per cell")
    g.add_argument("--mem", default=None, help="memory per node, e.g. 32G")
    g.add_argument(
        "--array-parallelism",
        type=int,
        default=None,
        help="cells running at once (the array's %%K; default 256)",
    )
    g.add_argument("--account", default=None, help="Slurm account")
    g.add_argument("--qos", default=None, help="Slurm quality of service")
    g.add_argument("--constraint", default=None, help="Slurm node constraint")
    g.add_argument(
        "--setup",
        action="append",
        default=None,
        metavar="CMD",
        help="shell line run before each cell, e.g. 'source .venv/bin/activate' (repeatable)",
    )
    p.set_defaults(func=_cmd_sweep)
