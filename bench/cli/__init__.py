"""The ``segbench`` command line: one entry point, one module per subcommand.

Every module ``bench/cli/<command>.py`` defines ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed arguments, returning an exit
code). Those modules hold argument parsing only; the work is done by library
functions of ``bench.core``, ``bench.data``, ``bench.cost``, ``bench.speed``,
``bench.engine``, ``bench.analysis`` and ``bench.jobs``.
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
    "models": "bench.cli.models",
    "complexity": "bench.cli.complexity",
    "speed": "bench.cli.speed",
    "data": "bench.cli.data",
    "train": "bench.cli.train",
    "evaluate": "bench.cli.evaluate",
    "baselines": "bench.cli.baselines",
    "report": "bench.cli.report",
    "benchmark": "bench.cli.benchmark",
    "sweep": "bench.cli.sweep",
    "compare": "bench.cli.compare",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``command`` given) one holding only that subcommand's module."""
    parser = argparse.ArgumentParser(
        prog="segbench",
        description="Benchmark light-weight medical image segmentation models: what each costs "
        "(parameters, MACs, latency, memory) and what it buys (Dice, IoU, HD95).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command in COMMANDS:
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
