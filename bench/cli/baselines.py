"""``segbench baselines``: argument parsing for :func:`bench.jobs.baselines.run_baselines`."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from bench.cli.common import add_input_size
from bench.jobs.baselines import DEFAULT_KINDS, run_baselines


def _cmd_baselines(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.input_size is not None:
        overrides["image_size"] = args.input_size
    if args.split_seed is not None:
        overrides["split_seed"] = args.split_seed
    paths = run_baselines(
        args.data,
        args.results,
        args.kinds,
        dataset=args.dataset,
        overrides=overrides,
        command=_command(args),
        progress=not args.quiet,
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command as parsed (the same whether called from a shell or from main(argv))."""
    cmd = ["segbench", "baselines", "--data", str(args.data), "--results", str(args.results)]
    cmd += ["--kinds", *args.kinds]
    for flag, value in (("--dataset", args.dataset), ("--input-size", args.input_size),
                        ("--split-seed", args.split_seed)):  # fmt: skip
        if value is not None:
            cmd += [flag, str(value)]
    return shlex.join(cmd)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "baselines",
        help="score trivial baselines (centred disc, mean mask) on the runs' test split",
        description="Score trivial predictors built from the training masks only (disc: a "
        "centred disc with the training split's mean lesion area; mean-mask: the training "
        "masks' pixel-wise mean, thresholded; all: every pixel lesion) on the test split the "
        "finished runs of the dataset were scored on (split settings read from their "
        "config.json, image ids checked against their per_image.csv). Writes "
        "<results>/baselines/<dataset>/<kind>/{metrics.json,per_image.csv}; `segbench report` "
        "shows them as accuracy-table rows and as lines in the accuracy plots.",
    )
    p.add_argument("--data", required=True, help="dataset root folder (as given to train)")
    p.add_argument(
        "--dataset", default=None, help="name in the results path (default: the data folder's name)"
    )
    p.add_argument(
        "--kinds",
        nargs="+",
        default=list(DEFAULT_KINDS),
        metavar="KIND",
        help=f"baselines to score (default: {' '.join(DEFAULT_KINDS)}; also: all)",
    )
    p.add_argument("--results", default="results", help="results root (default: results)")
    add_input_size(p, None, help="evaluation size (default: the runs' image_size)")
    p.add_argument(
        "--split-seed", type=int, default=None, help="split seed (default: the runs' split_seed)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_baselines)
