"""Executing a sweep through submitit (local subprocesses, a Slurm job array, or in-process), collecting outcomes and refreshing the statistics."""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.runs import write_summary
from bench.analysis.stats import pairwise_comparisons, pairwise_path
from bench.core.env import command_line
from bench.core.io import read_json, write_csv
from bench.core.progress import progress_bar
from bench.jobs.sweep_definition import Cell, SlurmOptions, SweepConfig, SweepError, select_cells
from bench.jobs.sweep_planning import CellOutcome, plan_cells
from bench.jobs.sweep_slurm import ACTIVE_STATES, final_states, job_state, wait_jobs

log = logging.getLogger(__name__)


EXECUTORS = ("local", "slurm", "debug")


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
        command: str | None = None,
    ) -> None:
        self.results_dir = str(results_dir)
        self.command = command  # the sweep's command line, recorded in each run's manifest
        self.force = force
        self.quiet = quiet
        self.catch = catch  # return failures instead of raising (the in-process executor)
        self.threads = threads

    def __call__(self, cell: Cell) -> dict[str, Any]:
        try:
            from bench.engine.train import run_training

            run_dir = run_training(
                cell.config(**({"threads": self.threads} if self.threads else {})),
                results_dir=self.results_dir,
                resume=True,
                force=self.force,
                quiet=self.quiet,
                command=f"{self.command} [cell {cell.label}]" if self.command else None,
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
    return lines[-1] if lines else ""  # in full: the end of a message says what to do


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no usable CUDA is not an error for a CPU sweep
        return 0


def _collect(job: Any, outcome: CellOutcome, slurm_state: str | None = None) -> None:
    """Fill ``outcome`` from a finished job; a failure never raises here.

    ``slurm_state`` (Slurm jobs: the state ``sacct`` reported): a job cancelled before
    it wrote a result is ``cancelled``, not ``failed``; a job Slurm ended otherwise
    without a result (timeout, out of memory, node failure) is ``failed`` naming the state.
    """
    outcome.job_id = str(job.job_id)
    outcome.log = Path(job.paths.stderr)
    outcome.slurm_state = slurm_state or None
    no_result = slurm_state and not job.paths.result_pickle.exists()
    if no_result and slurm_state == "CANCELLED":
        outcome.status = "cancelled"
        outcome.error = (
            f"Slurm job {job.job_id} was cancelled (sacct: CANCELLED); rerun the sweep to "
            "resume it from its last checkpoint"
        )
        return
    try:
        res = job.result()
    except Exception as err:  # FailedJobError (with the remote traceback), UncompletedJobError
        outcome.status = "failed"
        outcome.error = _error_line(str(err)) or type(err).__name__
        if no_result:
            outcome.error = f"Slurm job {job.job_id} ended {slurm_state}: {outcome.error}"
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
    slurm_poll_s: float = 30.0,
) -> list[CellOutcome]:
    """Plan, skip the finished cells, run the rest on a submitit executor, collect.

    Never raises for a failing cell: its outcome is ``failed`` with the job's stderr
    log path and the last line of the error. ``wait=False`` (Slurm only) returns right
    after submission with ``submitted`` outcomes.

    ``previous_jobs`` maps cell labels to Slurm job ids of an earlier ``--no-wait``
    submission: a cell whose job ``sacct`` reports as still pending or running is not
    submitted again (its outcome is ``running``, and with ``wait`` it is waited for).
    Where ``sacct`` cannot tell, the cell is submitted again. ``slurm_poll_s``: seconds
    between the ``sacct`` calls while waiting on Slurm jobs (one call covers all).
    """
    if executor not in EXECUTORS:
        raise SweepError(
            f"--executor: unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}"
        )
    if parallel < 1:
        raise SweepError(f"--parallel must be at least 1, got {parallel}")
    if not slurm_poll_s > 0:
        raise SweepError(f"--poll must be a positive number of seconds, got {slurm_poll_s}")
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
        command=command_line(),
    )
    ex = make_executor(executor, logs_dir, slurm=slurm)
    attached = _attach_active(todo, previous_jobs, logs_dir) if executor == "slurm" else []
    todo = [o for o in todo if o.status != "running"]

    bar = progress_bar(
        total=len(todo) + len(attached), desc="sweep", unit="cell", enabled=not quiet and wait
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
            jobs = ex.map_array(task, [o.cell for o in todo]) if todo else []
            for job, outcome in zip(jobs, todo):
                outcome.status, outcome.job_id = "submitted", str(job.job_id)
                outcome.log = Path(job.paths.stderr)
            pairs = list(zip(jobs, todo)) + attached
            if wait and pairs:
                for job, outcome in wait_jobs(pairs, slurm_poll_s):
                    _collect(job, outcome, job_state(str(job.job_id)))
                    bar.update()
                    bar.set_postfix_str(f"{outcome.cell.label}: {outcome.status}")
                # sacct records a job's end a moment after its result file: the final states
                states = final_states(o.job_id for _, o in pairs if o.job_id)
                for _, outcome in pairs:
                    outcome.slurm_state = states.get(str(outcome.job_id)) or outcome.slurm_state
    except KeyboardInterrupt:
        for o in outcomes:
            if o.status in ("new", "resume", "rerun"):
                o.status = "interrupted"
        log.warning("interrupted: rerun the same command to resume the unfinished cells")
    finally:
        bar.close()
    return outcomes


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
        state = job_state(job.job_id)
        if state in ACTIVE_STATES:
            o.status, o.job_id, o.log = "running", str(job.job_id), Path(job.paths.stderr)
            o.slurm_state = state
            attached.append((job, o))
    return attached


#: The columns of a sweep's status table (``results/sweeps/<name>/cells.csv``).
TABLE_COLUMNS = ["cell", "status", "job", "slurm_state", "path", "error"]


def summary_table(outcomes: Sequence[CellOutcome]) -> pd.DataFrame:
    """cell, status, job, slurm_state, path (run dir, or the log of a failed / cancelled /
    submitted cell), error."""
    return pd.DataFrame([o.row() for o in outcomes], columns=TABLE_COLUMNS)


def _status_table(sweep: SweepConfig, outcomes: Sequence[CellOutcome], path: Path) -> pd.DataFrame:
    """This invocation's rows, plus the earlier rows of the cells it did not select
    (``--only``), in sweep order: the table keeps describing the whole sweep."""
    table = summary_table(outcomes)
    if not path.is_file():
        return table
    prev = pd.read_csv(path, dtype=str).fillna("")
    kept = prev[~prev["cell"].isin(table["cell"])]
    if kept.empty:
        return table
    order = {c.label: i for i, c in enumerate(sweep.cells())}
    # a table written before a column existed has it empty
    both = pd.concat([table.astype(str), kept], ignore_index=True)[TABLE_COLUMNS].fillna("")
    return both.sort_values(
        "cell", key=lambda col: col.map(order).fillna(len(order)), kind="stable"
    )


def _keep_producing_job(outcomes: Sequence[CellOutcome], prev: pd.DataFrame) -> None:
    """A skipped cell keeps the job id and Slurm state of the job that finished it (its
    row of the previous table), so ``cells.csv`` keeps naming where each run came from."""
    rows = {r["cell"]: r for r in prev.to_dict("records") if r["status"] in ("done", "skipped")}
    for o in outcomes:
        row = rows.get(o.cell.label)
        if o.status == "skipped" and row and not o.job_id:
            o.job_id, o.slurm_state = row["job"] or None, row["slurm_state"] or None


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
    only: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CellOutcome]:
    """Run a sweep; then write its status table and refresh summary tables and statistics.

    ``only``: label patterns (:func:`~bench.jobs.sweep_definition.select_cells`); the
    other cells are neither run nor touched, and keep their rows in ``cells.csv``.
    """
    results_dir = Path(results_dir)
    base = results_dir / "sweeps" / sweep.name
    previous = None
    prev = pd.DataFrame(columns=TABLE_COLUMNS)
    if (base / "cells.csv").is_file():
        prev = pd.read_csv(base / "cells.csv", dtype=str).reindex(columns=TABLE_COLUMNS).fillna("")
    if executor == "slurm":
        active = prev[prev["status"].isin(["submitted", "running"]) & (prev["job"] != "")]
        previous = dict(zip(active["cell"], active["job"]))
    outcomes = run_cells(
        select_cells(sweep.cells(), only),
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
    _keep_producing_job(outcomes, prev)
    write_csv(base / "cells.csv", _status_table(sweep, outcomes, base / "cells.csv"))
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
    :func:`bench.analysis.runs.choose_experiment` pick.
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
                log.warning("no pairwise statistics for %s: %s", ds, err)
        else:
            if not quiet:
                rcp, ep = str(df["recipe"].iloc[0]), int(df["epochs"].iloc[0])
                print(f"wrote {pairwise_path(results_dir, ds, rcp, ep)}")
