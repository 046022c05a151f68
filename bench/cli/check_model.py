"""``segbench check-model``: argument parsing for :mod:`bench.jobs.check_model`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.cli.common import add_import, add_input_size


def _cmd(args: argparse.Namespace) -> int:
    from bench.jobs.check_model import exit_code, format_results, run_checks
    from models import model_info
    from models.contract import contract_sizes

    code = 0
    for name in args.names:
        info = model_info(name)  # unknown: UnknownModelError, one line from bench.cli.main
        h, w = contract_sizes(name, args.input_size)
        source = info.source or "segbench"
        results = run_checks(name, at_least=args.input_size, onnx=not args.no_onnx)
        header = f"check-model {name} ({source}; {info.input_constraint}) at {h}x{w}, CPU"
        print("\n".join(format_results(name, results, header)))
        code = max(code, exit_code(results))
    if code:
        print(
            "segbench check-model: a check that training or counting depends on failed",
            file=sys.stderr,
        )
    return code


def register(subparsers: Any) -> None:
    """Add ``segbench check-model``."""
    p = subparsers.add_parser(
        "check-model",
        help="run the model contract on a model (yours too) in seconds",
        description="Check that a registered model meets what segbench needs: it builds "
        "offline, returns logits (not probabilities) of the input size, refuses sizes outside "
        "its input_spec, is consistent in eval/no_grad and deterministic at a fixed seed, "
        "reloads its state_dict, has every op counted by the MAC counter, exports to ONNX and "
        "trains for 2 steps on synthetic data. Prints each check with what to change; exits 1 "
        "when a check that training or counting depends on fails.",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="registry name(s)")
    add_input_size(p, "64", help="the smallest valid side of at least this is used (non-square)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export check")
    add_import(p)
    p.set_defaults(func=_cmd)
