"""``segbench sweep``: argument parsing for :func:`bench.jobs.sweep_execution.run_sweep`."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pandas as pd

from bench.cli.common import add_results
from bench.core import exitcodes
from bench.jobs.sweep_definition import (
    SLURM_KEYS,
    SweepError,
    load_sweep,
    select_cells,
    slurm_options,
)
from bench.jobs.sweep_execution import EXECUTORS, run_sweep, summary_table
from bench.jobs.sweep_planning import plan_cells


def _print_table(df: pd.DataFrame) -> None:
    # Paths in full (a log path is what the user needs next); errors listed below the table.
    drop = ["error"] + (["slurm_state"] if not df["slurm_state"].astype(bool).any() else [])
    print(df.drop(columns=drop).to_string(index=False))
    for _, row in df[df["error"].astype(bool)].iterrows():
        print(f"  {row['cell']}: {row['error']}")


@contextlib.contextmanager
def _terminate_like_ctrl_c() -> Iterator[None]:
    """SIGTERM (``kill``, a container stop, systemd) handled like Ctrl-C while the sweep
    runs: the local cells are cancelled (and the sweep exits with the interrupted code)
    instead of being orphaned. Python's default would end the sweep at once, and
    submitit's local cells ignore SIGTERM, so they would keep training with nobody
    collecting them. A handler someone else installed is left alone."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    ):
        yield
        return

    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_sweep(args: argparse.Namespace) -> int:
    try:
        sweep = load_sweep(args.config)
        slurm = slurm_options(sweep, {k: getattr(args, k) for k in SLURM_KEYS}, setup=args.setup)
        if args.dry_run:
            cells = select_cells(sweep.cells(), args.only)
            outcomes = plan_cells(cells, args.results, force=args.force)
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
        # only local cells can be orphaned: a Slurm array outlives its client by design,
        # and in-process (debug) cells keep the engine's own graceful SIGTERM handling
        local = args.executor == "local"
        with _terminate_like_ctrl_c() if local else contextlib.nullcontext():
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
                only=args.only,
                slurm_poll_s=args.poll,
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
    if counts.get("interrupted"):
        return exitcodes.INTERRUPTED
    failed = counts.get("failed", 0) + counts.get("conflict", 0) + counts.get("cancelled", 0)
    if failed:
        print(
            "failed or cancelled cells: see the log paths above; rerun the command to retry "
            "only those (a cancelled cell resumes from its last checkpoint)",
            file=sys.stderr,
        )
    return exitcodes.outcome_code(counts.get("done", 0) + counts.get("skipped", 0), failed)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a models x datasets x seeds sweep (local, or a Slurm job array)",
        description="Run every cell of a sweep file (models x datasets x seeds [x input "
        "sizes]) as one engine run each, through submitit. Finished cells are skipped, "
        "interrupted ones resume, failures are reported with their log path. See "
        "bench/jobs/sweeps/example.yaml and the bench.jobs.sweep_definition docstring for cluster use.",
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
    add_results(p)
    p.add_argument(
        "--logs", default=None, help="submitit log folder (default: RESULTS/sweeps/NAME/logs)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="show the cells and their state; run nothing"
    )
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="PATTERN",
        help="run only the cells whose label (DATASET/MODEL/EXPERIMENT/seedK, as --dry-run "
        "lists them) matches this shell pattern, e.g. '*/smp_unet_resnet34/*'; a pattern "
        "without '/' matches one part, e.g. 'seed1' or 'unet' (repeatable; a pattern that "
        "matches no cell is an error)",
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
        "--poll",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds between sacct calls while waiting for the cells (default 30)",
    )
    g.add_argument(
        "--setup",
        action="append",
        default=None,
        metavar="CMD",
        help="shell line run before each cell, e.g. 'source .venv/bin/activate' (repeatable)",
    )
    p.set_defaults(func=_cmd_sweep)
