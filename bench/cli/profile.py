"""``segbench profile``: argument parsing for :mod:`bench.speed.profile`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.cli.common import add_import, add_input_size, add_results, csv_list, positive_int


def _cmd_profile(args: argparse.Namespace) -> int:
    import pandas as pd
    from tabulate import tabulate

    from bench.core.env import command_line
    from bench.speed.profile import run_profile
    from models.registry import UnknownModelError

    try:
        rise, record, stem = run_profile(
            args.model,
            args.batch_sizes,
            input_size=args.input_size,
            threads=args.threads,
            results=args.results,
            command=command_line(),
            iters=args.iters,
            warmup=args.warmup,
            channels_last=args.channels_last,
            bf16=args.bf16,
            by_shape=args.by_shape,
        )
    except UnknownModelError as err:
        print(f"segbench profile: --model {args.model}: {err}", file=sys.stderr)
        return 2
    # the top operators and, last, the total
    shown = pd.concat([rise.iloc[:-1].head(args.top), rise.tail(1)])
    if not args.by_shape:
        shown = shown.drop(columns="input_shapes")
    env = record["settings"]["environment"]
    dtype = "bf16" if args.bf16 else "fp32"
    print(f"{env['device_name']}, {env['torch_threads']} thread(s), {dtype}")
    print(tabulate(shown, headers="keys", showindex=False, floatfmt=".3f"))
    print(f"\n{record['summary']}")
    print(f"profiler self times (overhead included; latency is `segbench speed`'s): {stem}.json")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "profile",
        help="which operators take a model's inference time, per batch size",
        description="Run one model's inference under torch.profiler at each batch size "
        "and tabulate every operator's own CPU time per image, sorted by how much the "
        "largest batch adds over the smallest: the operators behind a per-image time "
        "that rises with the batch (the batch_scaling flag of `segbench speed`). Writes "
        "RESULTS/speed/profile/<model>-<host>.{csv,json}. Profiler overhead is included; "
        "take latencies from `segbench speed`.",
    )
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument(
        "--batch-sizes",
        type=csv_list(positive_int, "batch size"),
        default=[1, 8],
        help="comma-separated batch sizes (default: 1,8)",
    )
    add_input_size(p)
    p.add_argument(
        "--iters",
        type=positive_int,
        default=5,
        help="profiled calls per batch size (default: %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed calls before each profile (default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: the current count)",
    )
    p.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--by-shape", action="store_true", help="one row per operator and input shapes")
    p.add_argument(
        "--top", type=positive_int, default=15, help="operators printed (default: %(default)s)"
    )
    add_results(p)
    add_import(p)
    p.set_defaults(func=_cmd_profile)
