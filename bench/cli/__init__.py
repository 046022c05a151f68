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
import logging
import os
import sys
from collections.abc import Sequence

from bench import __version__

log = logging.getLogger("bench.cli")

# Subcommand -> the harness module that registers it, in the order `--help` lists them.
# Only the module of the chosen subcommand is imported (the others pull in pandas,
# matplotlib, fvcore, submitit...), so `segbench train` starts quickly.
COMMANDS = {
    "models": "bench.cli.models",
    "complexity": "bench.cli.complexity",
    "speed": "bench.cli.speed",
    "profile": "bench.cli.profile",
    "export": "bench.cli.export",
    "data": "bench.cli.data",
    "train": "bench.cli.train",
    "evaluate": "bench.cli.evaluate",
    "baselines": "bench.cli.baselines",
    "report": "bench.cli.report",
    "benchmark": "bench.cli.benchmark",
    "sweep": "bench.cli.sweep",
    "compare": "bench.cli.compare",
    "gpu-check": "bench.cli.gpu_check",
    "weights": "bench.cli.weights",
    "check-model": "bench.cli.check_model",
    "paper-gap": "bench.cli.paper_gap",
}


class _Formatter(logging.Formatter):
    """Progress lines as they are; warnings and errors prefixed so they stand out."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"segbench: {record.levelname.lower()}: {text}"
        return text


def setup_logging(verbose: int = 0) -> None:
    """Diagnostics of ``bench`` (and ``models``) to stderr: INFO by default, DEBUG with -v.

    Results go to stdout with ``print``; everything else is a log record.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    handler.set_name("segbench-cli")
    for name in ("bench", "models"):
        logger = logging.getLogger(name)
        # replace only our own handler (main may run several times in one process); records
        # still propagate, so handlers others put on the root logger (submitit's job log
        # files) receive them too
        logger.handlers[:] = [h for h in logger.handlers if h.get_name() != "segbench-cli"]
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``command`` given) one holding only that subcommand's module."""
    parser = argparse.ArgumentParser(
        prog="segbench",
        description="Benchmark light-weight medical image segmentation models: what each costs "
        "(parameters, MACs, latency, memory) and what it buys (Dice, IoU, HD95).",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more diagnostics on stderr (debug messages)",
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
    """Run ``segbench``; returns the exit code (2 for bad input or no command)."""
    from bench.cli.common import run_imports
    from bench.core.packages import pin_models_package

    pin_models_package()  # a user's own `models` package on sys.path must not replace ours
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    setup_logging(args.verbose)
    log.debug("segbench %s: %s", __version__, vars(args))
    try:
        run_imports(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:  # a training run saved its position first
        import signal

        from bench.core import exitcodes

        log.error("interrupted")
        if (
            getattr(err, "signum", None) == signal.SIGTERM
        ):  # bench.engine.run_control.TrainingStopped
            return exitcodes.TERMINATED
        return exitcodes.INTERRUPTED
    except (ValueError, KeyError, OSError) as err:
        # Bad input (unknown model, bad dataset, input size, missing file) reaches the
        # user as one line naming what is wrong; SEGBENCH_DEBUG=1 or -v shows the traceback.
        if os.environ.get("SEGBENCH_DEBUG") or args.verbose:
            raise
        print(f"segbench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
