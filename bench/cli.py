"""The ``segbench`` command line: one entry point, one subcommand per harness module.

Each harness module that offers a subcommand defines ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed arguments and
returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Subcommand -> the harness module that registers it, in the order `--help` lists them.
# Only the module of the chosen subcommand is imported (the others pull in pandas,
# matplotlib, fvcore, submitit...), so `segbench train` starts quickly.
COMMANDS = {
    "complexity": "bench.complexity",
    "speed": "bench.speed",
    "data": "bench.data",
    "train": "bench.train",
    "evaluate": "bench.evaluate",
    "report": "bench.report",
    "benchmark": "bench.benchmark",
    "sweep": "bench.sweep",
    "compare": "bench.stats",
}


def _cmd_models(args: argparse.Namespace) -> int:
    import pandas as pd

    from models import create_model, list_models, model_info

    rows = []
    names = list_models(args.pattern)
    if not names:
        print(f"no registered model matches {args.pattern!r}", file=sys.stderr)
        return 2
    for name in names:
        info = model_info(name)
        model = create_model(name)
        params = sum(p.numel() for p in model.parameters())
        rep = info.reported
        rows.append(
            {
                "model": name,
                "full name": info.full_name,
                "year": info.year,
                "citation": info.citation,
                "params": f"{params:,}",
                "paper params (M)": rep.get("params_m", ""),
                "paper GFLOPs": rep.get("gflops", ""),
                "input H, W": f"x{info.input_multiple}, >= {info.min_input}",
            }
        )
    df = pd.DataFrame(rows)
    if args.markdown:
        print(df.to_markdown(index=False))
    else:
        print(df.to_markdown(index=False, tablefmt="simple"))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``command`` given) one holding only that subcommand's module."""
    parser = argparse.ArgumentParser(
        prog="segbench",
        description="Benchmark light-weight medical image segmentation models: what each costs "
        "(parameters, MACs, latency, memory) and what it buys (Dice, IoU, HD95).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "models",
        help="list the model registry as a table",
        description="List registered models with parameter counts and the "
        "figures their papers report.",
    )
    p.add_argument(
        "pattern",
        nargs="?",
        default=None,
        help="wildcard pattern(s), comma-separated (e.g. 'smp_*,malunet')",
    )
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.set_defaults(func=_cmd_models)
    if command == "models":
        wanted = []
    elif command in COMMANDS:
        wanted = [COMMANDS[command]]
    else:
        wanted = list(dict.fromkeys(COMMANDS.values()))
    for mod_name in wanted:
        importlib.import_module(mod_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError) as err:
        # Bad input (unknown model, bad dataset, input size, missing file) reaches the
        # user as one line naming what is wrong; SEGBENCH_DEBUG=1 shows the traceback.
        if os.environ.get("SEGBENCH_DEBUG"):
            raise
        print(f"segbench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
