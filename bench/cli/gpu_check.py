"""``segbench gpu-check``: argument parsing for :func:`bench.jobs.gpu_check.run_gpu_check`."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gpu-check",
        help="validate the CUDA-only paths on this machine's GPU in a few minutes",
        description="Run segbench's GPU checks (timing, AMP, TF32, memory, tied-parameter "
        "optimizer, sync-free data path, speed-worker recovery, channels_last, DDP) and print "
        "a pass/fail table; see docs/gpu.md. Writes nothing under results/. Without a GPU "
        "every row is skipped. Exit code 1 when a check fails.",
    )
    p.add_argument("--device", default="cuda", help="cuda (default) or cuda:N")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated check names (default: all; see the table for the names)",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    p.set_defaults(func=_cmd_gpu_check)


def _cmd_gpu_check(args: argparse.Namespace) -> int:
    from bench.core.io import write_json
    from bench.jobs.gpu_check import format_checks, run_gpu_check

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None

    def show(r: object) -> None:
        print(f"  {r.name}: {r.status}", file=sys.stderr, flush=True)  # type: ignore[attr-defined]

    import torch

    progress = show if torch.cuda.is_available() else None
    results = run_gpu_check(args.device, only=only, progress=progress)
    print(format_checks(results))
    if args.json:
        write_json(args.json, {"checks": [r.as_dict() for r in results]})
    return 1 if any(r.status == "fail" for r in results) else 0
