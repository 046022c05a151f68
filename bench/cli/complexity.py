"""``segbench complexity``: argument parsing for :mod:`bench.cost`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.cli.common import add_import, add_input_size, add_results
from bench.core import exitcodes
from bench.core.device import resolve_device
from bench.core.env import command_line
from bench.core.names import expand_models
from bench.core.shapes import parse_sizes, shape_label
from bench.cost.breakdown import breakdown_table, write_breakdown
from bench.cost.complexity import COUNTED, display_table, notes, ops_label, run_complexity
from bench.cost.flops import analyze
from bench.cost.golden import GOLDEN_SHAPE, update_golden
from bench.cost.resolution import resolution_sweep, write_resolution_sweep


def _print(df: Any) -> None:
    print(df.to_string(index=False))


def _cmd(args: argparse.Namespace) -> int:
    from models import create_model

    shape = args.input_size
    try:
        sizes = parse_sizes(args.sweep) if args.sweep else None
        resolve_device(args.device, allow=("cpu", "cuda", "meta"))
        names = expand_models(args.models)
    except (ValueError, KeyError) as err:
        print(f"segbench complexity: {err}", file=sys.stderr)
        return 2
    out = Path(args.results) / "complexity"
    command = command_line()
    progress = not args.quiet
    only_table = not (args.breakdown or sizes or args.update_golden)
    code = exitcodes.OK

    if args.update_golden:
        if shape != GOLDEN_SHAPE:
            print(
                f"segbench complexity: the golden file is at {shape_label(GOLDEN_SHAPE)}; "
                f"drop --input-size {shape_label(shape)}",
                file=sys.stderr,
            )
            return 2
        path = out / "golden.json"
        try:
            entries = update_golden(
                names,
                path,
                device=args.device,
                command=command,
                prune=args.models is None,
                progress=progress,
            )
        except RuntimeError as err:
            print(f"segbench complexity --update-golden: {err}", file=sys.stderr)
            return 1
        print(f"wrote {path} ({len(entries)} models: {', '.join(sorted(entries))})")

    if args.breakdown:
        try:
            model = create_model(args.breakdown, in_channels=shape[1])
        except KeyError as err:
            print(f"segbench complexity: --breakdown: {err}", file=sys.stderr)
            return 2
        c = analyze(model, shape, device=args.device)
        print(
            f"{args.breakdown} at {shape_label(shape)}: {c.params_total:,} params, "
            f"{c.macs:,} MACs, {c.other_flops:,} other FLOPs, "
            f"{c.activation_bytes / 2**20:,.1f} MB activations"
        )
        _print(breakdown_table(c, args.depth))
        if c.unsupported_ops:
            print(f"ops without a rule: {ops_label(c.unsupported_ops)}")
        print(f"wrote {write_breakdown(c, out, args.breakdown, shape, command)}")

    if sizes:
        df = resolution_sweep(
            names, sizes, batch=shape[0], channels=shape[1], device=args.device, progress=progress
        )
        csv, js = write_resolution_sweep(df, out, sizes, args.device, command)
        show = df[["model", "size", "gmacs", "activation_mb", "status"]].rename(
            columns={"gmacs": "segbench GMACs", "activation_mb": "activation MB"}
        )
        _print(show)
        for line in exitcodes.failure_lines(
            (f"{r['model']} @{r['size']}", r["reason"])
            for _, r in df.iterrows()
            if isinstance(r["reason"], str) and r["reason"]
        ):
            print(f"  {line}")
        print(f"wrote {csv} and {js}")
        if not df["status"].isin(COUNTED).any():  # sizes a model cannot take are skipped
            print("segbench complexity --sweep: no size could be counted", file=sys.stderr)
            code = max(code, exitcodes.FAILED)

    if only_table:
        df = run_complexity(
            names,
            shape,
            out,
            cross_check=not args.no_cross_check,
            progress=progress,
            device=args.device,
            command=command,
        )
        _print(display_table(df))
        for line in notes(df[df["status"].isin(COUNTED)]):  # failures go to stderr below
            print(f"  {line}")
        print(f"wrote {out / 'complexity.csv'} and {out / 'complexity.json'}")
        failed = df[~df["status"].isin(COUNTED)]
        if len(failed):
            what = exitcodes.summary_line("models", len(df) - len(failed), len(failed))
            print(f"segbench complexity: {what}:", file=sys.stderr)
            for line in exitcodes.failure_lines(zip(failed["model"], failed["reason"])):
                print(f"  {line}", file=sys.stderr)
        code = max(code, exitcodes.outcome_code(len(df) - len(failed), len(failed)))
    return code


def register(subparsers: Any) -> None:
    """Add ``segbench complexity``."""
    p = subparsers.add_parser(
        "complexity",
        help="parameters, exact MACs, thop/fvcore cross-checks, sweep, golden file",
        description="Count parameters and exact MACs (conv, linear, matmul, einsum, attention) "
        "at the aten dispatch level, with other FLOPs and activation memory, beside thop's "
        "(the papers' 'GFLOPs'), fvcore's and torch FlopCounterMode's counts. Writes "
        "complexity.{csv,json} under RESULTS/complexity. With --breakdown, --sweep or "
        "--update-golden only those are done.",
    )
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated names or wildcard patterns (default: all models)",
    )
    add_input_size(p, "1x3x256x256", shape=True)
    p.add_argument(
        "--breakdown",
        metavar="MODEL",
        default=None,
        help="print the per-module tree of one model (writes breakdown-MODEL.csv)",
    )
    p.add_argument("--depth", type=int, default=2, help="tree depth for --breakdown (default: 2)")
    p.add_argument(
        "--sweep",
        metavar="SIZES",
        default=None,
        help="comma-separated square sizes for a resolution sweep, e.g. "
        "128,256,512,1024 (writes sweep.{csv,json})",
    )
    p.add_argument(
        "--no-cross-check",
        action="store_true",
        help="skip thop, fvcore and FlopCounterMode (faster)",
    )
    p.add_argument(
        "--update-golden",
        action="store_true",
        help="recount and rewrite RESULTS/complexity/golden.json (all models, or --models)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where the forward runs: cpu, cuda, or meta (shapes only, no compute; "
        "same MACs, attention may take another kernel path; default: cpu)",
    )
    add_results(p, help="results folder; files go to RESULTS/complexity")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_import(p)
    p.set_defaults(func=_cmd)
