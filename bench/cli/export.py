"""``segbench export``: argument parsing for :mod:`bench.jobs.export` (``--int8`` /
``--bf16``: :mod:`bench.jobs.precision`).

Exit codes: 0 every model exported and matched PyTorch; 3 some models failed (their rows
say why); 1 every model failed; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.cli.common import add_import, add_input_size, add_results, choice, csv_list, positive_int
from bench.deploy.export import EXPORTERS

EXIT_PARTIAL = 3


def _cell(v: Any, fmt: str) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "" if v is None else str(v)
    return "-" if f != f else fmt.format(f)


def _print_export(df: Any) -> None:
    cols = [("model", "{}"), ("status", "{}"), ("exporter", "{}"), ("opset", "{:.0f}"),
            ("max_abs_diff", "{:.2e}"), ("rel_max_diff", "{:.1e}"),
            ("mask_diff_fraction", "{:.1e}"), ("export_s", "{:.1f}"), ("reason", "{}")]  # fmt: skip
    cols = [(c, f) for c, f in cols if c in df]
    table = [[c for c, _ in cols]] + [
        [_cell(r.get(c), f) if c != "reason" else str(r.get(c) or "")[:90] for c, f in cols]
        for r in df.to_dict(orient="records")
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _print_precision(df: Any) -> None:
    cols = [("model", "{}"), ("variant", "{}"), ("status", "{}"), ("latency_ms", "{:.2f}"),
            ("speedup_vs_eager_fp32", "{:.2f}x"), ("out_rel_max_diff", "{:.1e}"),
            ("out_mask_diff", "{:.2%}"), ("dsc", "{:.4f}"), ("dsc_change_pts", "{:+.2f}"),
            ("reason", "{}")]  # fmt: skip
    cols = [(c, f) for c, f in cols if c in df]
    table = [[c for c, _ in cols]] + [
        [_cell(r.get(c), f) if c != "reason" else str(r.get(c) or "")[:80] for c, f in cols]
        for r in df.to_dict(orient="records")
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def exit_code(statuses: list[str]) -> int:
    """0 all ok, 1 all failed (or nothing done), 3 some failed."""
    failed = sum(s != "ok" for s in statuses)
    if not statuses or failed == len(statuses):
        return 1
    return EXIT_PARTIAL if failed else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from bench.core.names import expand_models
    from bench.jobs.export import run_export, weights_from
    from bench.jobs.precision import run_precision

    out = Path(args.results) / "deploy"
    spec = None if args.models in (None, "all") else args.models
    if args.weights:
        from bench.jobs.export import named_weights

        given = expand_models(spec) if spec else []
        if len(given) != 1:
            raise ValueError("--weights NAME needs exactly one model in --models")
        weights = named_weights(given[0], args.weights)
    else:
        weights = weights_from(args.checkpoint, args.run, args.input_size)
    if weights.model is not None:  # a run fixes the model
        names = expand_models(spec) if spec else [weights.model]
        if names != [weights.model]:
            raise ValueError(f"--run {args.run} trained {weights.model}, not {', '.join(names)}")
    else:
        names = expand_models(spec)
    if args.checkpoint and len(names) != 1:
        raise ValueError(f"--checkpoint holds one model's weights; --models gave {len(names)}")
    if args.int8 and not args.data and "static" in args.int8:
        print(
            "segbench export: static int8 needs calibration images; without --data it is "
            "skipped (dynamic int8 still runs)",
            file=sys.stderr,
        )
    print(f"weights: {weights.label}; {len(names)} model(s); writing to {out}")
    df = run_export(
        names,
        out,
        weights=weights,
        opset=args.opset,
        dynamic_batch=args.dynamic_batch,
        exporters=args.exporters,
        threads=args.threads,
    )
    _print_export(df)
    statuses = list(df["status"])
    if args.int8 or args.bf16:
        ok = [n for n, s in zip(df["model"], df["status"]) if s == "ok"]
        prec = run_precision(
            ok,
            out,
            weights=weights,
            int8=args.int8 or (),
            bf16=args.bf16,
            data=args.data,
            split=args.split,
            calib_images=args.calib_images,
            threads=args.threads,
            max_variant_s=args.max_variant_min * 60,
            exporters=args.exporters,
            progress=not args.quiet,
        )
        print()
        _print_precision(prec)
        statuses += [s for s in prec.get("status", []) if s != "skipped"]
    print(f"\nwrote {out}/export.csv (.json) and ONNX files in {out}/onnx/ (not committed)")
    return exit_code(statuses)


def register(subparsers: Any) -> None:
    """Add ``segbench export``."""
    p = subparsers.add_parser(
        "export",
        help="export models to ONNX and check them against PyTorch (int8/bf16 opt-in)",
        description="Export registered models to ONNX (torch.onnx dynamo exporter, TorchScript "
        "as fallback), run each graph on onnxruntime against the PyTorch model on fixed inputs "
        "(logit and mask differences, per-model tolerance) and write "
        "RESULTS/deploy/onnx/<model>.onnx (git-ignored) plus the check table "
        "RESULTS/deploy/export.{csv,json}. Exit code 0: all ok; 3: some models failed; "
        "1: all failed.",
    )
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated names or wildcard patterns, or 'all' (default: all; with --run: "
        "the run's model)",
    )
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", default=None, help="weights file for the one model given")
    src.add_argument(
        "--weights",
        default=None,
        metavar="NAME",
        help="committed trained weights of the one model given (segbench weights list), "
        "checked by sha256, with their input size, scaling and threshold",
    )
    src.add_argument(
        "--run",
        default=None,
        metavar="DIR",
        help="a training run folder (config.json + checkpoints/best.pt): its model, arguments, "
        "input size, scaling and split",
    )
    p.add_argument(
        "--opset", type=positive_int, default=None, help="ONNX opset (default: the exporter's)"
    )
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch axis in the graph")
    p.add_argument(
        "--exporters",
        type=csv_list(choice(EXPORTERS), "--exporters"),
        default=list(EXPORTERS),
        help="torch.onnx exporters to try, in order (default: dynamo,torchscript)",
    )
    add_input_size(p, help="a --run sets it")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="threads for every backend (default: torch's current count)",
    )
    add_results(p, help="results folder; files go to RESULTS/deploy")
    p.add_argument(
        "--int8",
        type=csv_list(choice(("dynamic", "static")), "--int8"),
        default=None,
        help="also quantize with onnxruntime (dynamic and/or static) and report latency, "
        "output agreement and (trained weights + --data) the DSC change",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="also run torch bf16 autocast and OpenVINO bf16 (where the CPU has it)",
    )
    p.add_argument(
        "--data", default=None, help="dataset root: calibration (train split) and DSC (--split)"
    )
    p.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="split scored for DSC"
    )
    p.add_argument(
        "--calib-images",
        type=positive_int,
        default=32,
        help="training images for static int8 calibration (default: 32)",
    )
    p.add_argument(
        "--max-variant-min",
        type=positive_int,
        default=10,
        help="skip (with the measured forward time) a reduced-precision variant whose "
        "scoring would take longer than this, e.g. emulated bf16 (default: 10 minutes)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_import(p)
    p.set_defaults(func=_cmd_export)
