"""``segbench benchmark``: argument parsing for :func:`bench.jobs.benchmark.run_benchmark`."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cli.common import add_import
from bench.core import exitcodes
from bench.core.names import expand_models
from bench.jobs.benchmark import RESULTS_DIR, run_benchmark


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds: expected comma-separated integers, got {text!r}"
        ) from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds: give at least one seed")
    return seeds


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a positive {kind.__name__}, got {text!r}"
            ) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def _command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces these arguments (quoted in results/README.md)."""
    parts = ["segbench", "benchmark"]
    for spec in getattr(args, "imports", None) or []:
        parts += ["--import", spec]
    if args.models:
        parts += ["--models", args.models]
    if args.device != "auto":
        parts += ["--device", args.device]
    if Path(args.results) != RESULTS_DIR:
        parts += ["--results", str(args.results)]
    for flag in ("quick", "skip_complexity", "skip_speed"):
        if getattr(args, flag):
            parts.append("--" + flag.replace("_", "-"))
    if args.min_time is not None:
        parts += ["--min-time", f"{args.min_time:g}"]
    if args.backend is not None:
        parts += ["--backend", ",".join(args.backend)]
    if args.budget != 10.0:
        parts += ["--budget", f"{args.budget:g}"]
    if args.data is not None:
        parts += ["--data", str(args.data), "--recipe", args.recipe]
        if args.epochs is not None:
            parts += ["--epochs", str(args.epochs)]
        if args.seeds is not None:
            parts += ["--seeds", ",".join(map(str, args.seeds))]
        if args.force:
            parts.append("--force")
    return shlex.join(parts)


def _backends(text: str) -> list[str]:
    from bench.deploy.backends import RUNTIMES

    items = [b.strip() for b in text.split(",") if b.strip()]
    if not items or any(b not in RUNTIMES for b in items):
        raise argparse.ArgumentTypeError(
            f"--backend: comma-separated among {', '.join(RUNTIMES)}, got {text!r}"
        )
    return items


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from models import UnknownModelError

    prog = "segbench benchmark"
    try:
        models = expand_models(args.models)
    except (ValueError, UnknownModelError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    if args.budget < 0:
        print(
            f"{prog}: --budget must be >= 0 minutes (0 = no limit), got {args.budget:g}",
            file=sys.stderr,
        )
        return 2
    if args.data is not None and not Path(args.data).is_dir():
        print(f"{prog}: --data {args.data}: no such directory", file=sys.stderr)
        return 2
    if args.data is None and (args.epochs is not None or args.seeds is not None or args.force):
        print(
            f"{prog}: --epochs/--seeds/--force need --data ROOT (no training without data)",
            file=sys.stderr,
        )
        return 2
    try:
        res = run_benchmark(
            models,
            device=args.device,
            results_dir=args.results,
            quick=args.quick,
            skip_complexity=args.skip_complexity,
            skip_speed=args.skip_speed,
            data=args.data,
            epochs=args.epochs,
            seeds=args.seeds,
            recipe=args.recipe,
            force_train=args.force,
            min_time_s=args.min_time,
            budget_min=args.budget or None,
            progress=not args.quiet,
            command=_command_line(args),
            backends=args.backend,
        )
    except ValueError as err:  # bad device and the like, before any stage ran
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    for failure in res.failures:
        print(f"{prog}: FAILED {failure}", file=sys.stderr)
    ran = [st for st in res.stages if st.name != "setup" and st.status != "skipped"]
    failed = sum(st.status == "failed" for st in ran)
    if res.failures and not failed:  # a failure inside a stage that still produced results
        failed = 1
    return exitcodes.outcome_code(len(ran) - failed, failed)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="the whole suite: complexity, speed, [training], report",
        description="Run every stage and write results/: complexity of every model, speed on "
        "the best available device (CUDA when present, else CPU; inference at batch 1 and 8 "
        "on eager PyTorch and onnxruntime plus an eager training step at batch 8 for the "
        "models that fit the time budget, fp32), then tables, Pareto plots and "
        "results/README.md. With --data, also train and evaluate the chosen models "
        "(finished runs are reused) and report their measured accuracy.",
    )
    p.add_argument(
        "--models",
        default=None,
        metavar="PATTERN",
        help="comma-separated names or wildcard patterns (default: every registered model)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (default: cuda when present, else cpu), cpu or cuda"
    )
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help="results folder to write and report on (default: results)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test profile: no FLOP-counter cross-checks, inference at "
        "batch 1 only, short timings",
    )
    p.add_argument(
        "--skip-complexity", action="store_true", help="keep existing complexity results"
    )
    p.add_argument("--skip-speed", action="store_true", help="keep existing speed results")
    p.add_argument(
        "--budget",
        type=float,
        default=10.0,
        metavar="MIN",
        help="time budget in minutes for the stages before training: the speed "
        "stage times the training step only for the models that still fit "
        "(cheapest first); 0 = no limit (default: 10)",
    )
    p.add_argument(
        "--min-time",
        type=_positive(float),
        default=None,
        metavar="S",
        help="speed: minimum timed seconds per configuration (default: the "
        "profile's, 0.5 or 0.3 with --quick)",
    )
    p.add_argument(
        "--backend",
        type=_backends,
        default=None,
        help="speed: inference backends, comma-separated among torch, onnxruntime, openvino "
        "(default: torch,onnxruntime)",
    )
    g = p.add_argument_group("training (only with --data)")
    g.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="ROOT",
        help="dataset root (e.g. ../shared/data/isic2017-mini); enables training",
    )
    g.add_argument(
        "--epochs", type=_positive(int), default=None, help="epochs per run (default: the recipe's)"
    )
    g.add_argument(
        "--seeds",
        type=_seeds,
        default=None,
        metavar="LIST",
        help="comma-separated seeds, one run each (default: the recipe's)",
    )
    g.add_argument(
        "--recipe", default="fair", help="training recipe name or YAML file (default: fair)"
    )
    g.add_argument(
        "--force",
        action="store_true",
        help="re-run every training cell, also finished ones and ones that hold a run of "
        "another configuration (overwritten)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")
    add_import(p)
    p.set_defaults(func=_cmd_benchmark)
