"""``segbench speed``: argument parsing for :func:`bench.speed.run.run_speed`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from bench.cli.common import add_import, add_input_size, add_results, choice, csv_list, positive_int
from bench.core import exitcodes
from bench.core.device import resolve_device
from bench.core.names import expand_models
from bench.cost.roofline import Peak, parse_peak
from bench.deploy.backends import RUNTIMES
from bench.deploy.export import EXPORTERS
from bench.speed import steps
from bench.speed.checks import check_against_torch_timer
from bench.speed.files import format_table
from bench.speed.run import run_speed
from bench.speed.variants import DTYPES, MODES


def _peak_arg(text: str) -> Peak:
    try:
        return parse_peak(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces these arguments (recorded with the rows)."""
    parts = [
        "segbench speed",
        f"--models {args.models!r}",
        f"--device {args.device}",
        f"--batch-sizes {','.join(map(str, args.batch_sizes))}",
        f"--modes {','.join(args.modes)}",
        f"--dtype {','.join(args.dtype)}",
        f"--backend {','.join(args.backend)}",
        f"--min-time {args.min_time:g}",
        f"--min-iters {args.min_iters}",
        f"--warmup {args.warmup}",
        *([f"--warmup-time {args.warmup_time:g}"] if args.warmup_time is not None else []),
        f"--max-time {args.max_time:g}",
        f"--input-size {args.input_size}",
        f"--noisy-threshold {args.noisy_threshold:g}",
        f"--results {args.results}",
    ]
    parts += ["--channels-last"] * args.channels_last + ["--compile"] * args.compile
    if args.threads:
        parts.append(f"--threads {args.threads}")
    if args.exporters != list(EXPORTERS):
        parts.append(f"--exporters {','.join(args.exporters)}")
    if args.peak is not None:
        parts.append(f"--peak {args.peak.tflops:g},{args.peak.gbps:g}")
    if args.no_measure_peak:
        parts.append("--no-measure-peak")
    if args.no_isolate:
        parts.append("--no-isolate")
    if args.cpu_mem_limit:
        parts.append(f"--cpu-mem-limit {args.cpu_mem_limit:g}")
    return " ".join(parts)


def _cmd_speed(args: argparse.Namespace) -> int:
    from models import UnknownModelError

    try:
        names = expand_models(args.models, info=lambda n: steps.model_info(n))
    except (ValueError, UnknownModelError) as err:
        print(f"segbench speed: {err}", file=sys.stderr)
        return 2
    if args.check_timer:
        over = 0
        for name in names:
            try:
                res = check_against_torch_timer(
                    name,
                    device=args.device,
                    threads=args.threads or 1,
                    input_size=args.input_size,
                    min_time_s=max(args.min_time, 1.0),
                )
            except ValueError as err:
                print(f"segbench speed: {err}", file=sys.stderr)
                return 2
            over += not res["ok"]
            print(
                f"{name}: ours {res['ours_ms']:.2f} ms, torch Timer {res['torch_timer_ms']:.2f}"
                f" ms, diff {res['rel_diff']:.1%} ({'ok' if res['ok'] else 'OVER'} "
                f"{res['tolerance']:.0%}), {res['threads']} threads, input "
                f"1x3x{args.input_size}x{args.input_size}"
            )
        return 1 if over else 0
    try:
        df = run_speed(
            names,
            device=args.device,
            batch_sizes=args.batch_sizes,
            modes=args.modes,
            dtypes=args.dtype,
            channels_last=args.channels_last,
            compile=args.compile,
            min_time_s=args.min_time,
            min_iters=args.min_iters,
            warmup=args.warmup,
            warmup_time_s=args.warmup_time,
            threads=args.threads,
            input_size=args.input_size,
            out_dir=Path(args.results) / "speed",
            progress=not args.quiet,
            max_time_s=args.max_time or None,
            noisy_threshold=args.noisy_threshold,
            peak=args.peak,
            measure_peak=not args.no_measure_peak,
            isolate=not args.no_isolate,
            mem_limit_gb=args.cpu_mem_limit,
            command=_command_line(args),
            backends=args.backend,
            exporters=args.exporters,
        )
    except ValueError as err:
        print(f"segbench speed: {err}", file=sys.stderr)
        return 2
    from bench.core.env import device_slug

    print(format_table(df))
    dev = resolve_device(args.device)
    print(
        f"\nwrote {Path(args.results) / 'speed' / f'speed-{device_slug(dev)}.csv'} and .json "
        f"({df['threads'].iloc[0]} threads, torch {torch.__version__})"
    )
    return _outcome(df)


def _outcome(df: Any) -> int:
    """Exit code of a speed run (bench.core.exitcodes); failures listed in full on stderr.

    Skipped configurations (a variant this device cannot run) are not failures, but a run
    that measured nothing at all failed.
    """
    ok = int((df["status"] == "ok").sum())
    failed = df[df["status"] == "error"]
    skipped = len(df) - ok - len(failed)
    if len(failed):
        what = exitcodes.summary_line("configurations", ok, len(failed), skipped)
        print(f"segbench speed: {what}:", file=sys.stderr)
        units = (
            f"{r['model']} {r['mode']} {r['dtype']} bs{r['batch_size']}"
            for _, r in failed.iterrows()
        )
        for line in exitcodes.failure_lines(zip(units, failed["reason"].fillna(""))):
            print(f"  {line}", file=sys.stderr)
    elif not ok:
        print(
            f"segbench speed: nothing was measured: all {skipped} configurations were skipped "
            "(see the reason column)",
            file=sys.stderr,
        )
        return exitcodes.FAILED
    return exitcodes.outcome_code(ok, len(failed))


def register(subparsers: Any) -> None:
    """Add ``segbench speed``."""
    p = subparsers.add_parser(
        "speed",
        help="latency, throughput and memory per model and variant",
        description="Time inference and training steps over a batch-size sweep (median, IQR, "
        "p90; noisy runs flagged), record peak GPU memory and CPU RSS, achieved FLOP/s and the "
        "roofline bound; writes results/speed/speed-<device>.{csv,json}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--models",
        required=True,
        help="comma-separated model names or wildcard patterns (e.g. 'malunet,unet')",
    )
    p.add_argument(
        "--device",
        default="cpu",
        type=choice(("cpu", "cuda", "auto")),
        help="cpu, cuda, or auto (cuda when available)",
    )
    p.add_argument(
        "--batch-sizes",
        default=[1, 8, 32],
        type=csv_list(positive_int, "--batch-sizes"),
        help="comma-separated batch sizes; out-of-memory halves a size",
    )
    p.add_argument(
        "--modes",
        default=list(MODES),
        type=csv_list(choice(MODES), "--modes"),
        help="inference and/or train (forward + backward + AdamW step)",
    )
    p.add_argument(
        "--dtype",
        default=["fp32"],
        type=csv_list(choice(DTYPES), "--dtype"),
        help="fp32, bf16, fp16 (autocast); fp16 is skipped on CPU",
    )
    p.add_argument(
        "--backend",
        default=["torch"],
        type=csv_list(choice(RUNTIMES), "--backend"),
        help="comma-separated: torch (eager, with the variants below), onnxruntime, openvino "
        "(the model exported to ONNX once; inference only; threads = torch threads; precision "
        "pinned; CUDA/TensorRT providers only on a GPU build)",
    )
    p.add_argument(
        "--exporters",
        default=list(EXPORTERS),
        type=csv_list(choice(EXPORTERS), "--exporters"),
        help="ONNX exporters to try in order for the runtime backends",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="use channels_last memory format for model and input",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: the current torch.get_num_threads())",
    )
    p.add_argument(
        "--min-time", type=float, default=1.0, help="minimum timed seconds per configuration"
    )
    p.add_argument(
        "--min-iters",
        type=positive_int,
        default=10,
        help="minimum timed iterations per configuration",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up iterations")
    p.add_argument(
        "--warmup-time",
        type=float,
        default=None,
        metavar="SECONDS",
        help="warm up for at least this long too (default: 1 on CUDA, where clocks rise "
        "from idle, 0 on CPU)",
    )
    p.add_argument(
        "--max-time",
        type=float,
        default=30.0,
        help="cap on timed seconds per configuration (0: no cap; at least 3 "
        "iterations are always timed)",
    )
    add_input_size(p)
    p.add_argument(
        "--noisy-threshold",
        type=float,
        default=0.1,
        help="flag a configuration as noisy when IQR/median exceeds this",
    )
    p.add_argument(
        "--peak",
        type=_peak_arg,
        default=None,
        metavar="TFLOPS,GBPS",
        help="device peak compute and bandwidth for the roofline (default: on CPU the best "
        "GEMM and copy measured over torch, numpy, onnxruntime and OpenVINO; on GPU the "
        "known device table, else a quick measurement)",
    )
    p.add_argument(
        "--no-measure-peak",
        action="store_true",
        help="do not micro-measure the peak for unknown devices (no roofline)",
    )
    add_results(p, help="results folder; rows go to RESULTS/speed/speed-<device>.{csv,json}")
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure in this process instead of a spawned worker (a crash inside torch "
        "then ends the run)",
    )
    p.add_argument(
        "--cpu-mem-limit",
        type=float,
        default=None,
        metavar="GB",
        help="cap the worker's heap (RLIMIT_DATA) so a too-large CPU batch fails and backs "
        "off instead of waking the OOM killer (Linux; not with --no-isolate)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--check-timer",
        action="store_true",
        help="instead of the sweep, compare this timer with torch.utils.benchmark."
        "Timer at batch 1 (inference) and print the difference",
    )
    add_import(p)
    p.set_defaults(func=_cmd_speed)
