"""``segbench train``: argument parsing for :func:`bench.engine.train.run_training`."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from bench.cli.common import add_import, add_input_size, add_results
from bench.core import exitcodes
from bench.core.lock import LockBusy
from bench.core.precision import AUTOCAST_DTYPES
from bench.engine import distributed as bdist
from bench.engine.checkpoints import CheckpointWriteError
from bench.engine.config import TrainConfig
from bench.engine.run_control import NonFiniteLossError, TrainingStopped
from bench.engine.train import run_training


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one model on one dataset (the authors' recipe by default)",
        description="Train, select the best checkpoint and score it on the test split. Writes "
        "results/runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/ (config, manifest, "
        "log.csv, TensorBoard events, checkpoints, metrics.json, per_image.csv). A finished "
        "run of the same configuration is skipped; one of another experiment (recipe, epochs) "
        "goes to its own folder; an unfinished one resumes from its last checkpoint.",
    )
    p.add_argument("--model", required=True, help="registry name (segbench models)")
    p.add_argument("--data", required=True, help="dataset root folder")
    p.add_argument(
        "--dataset", default=None, help="name in the results path (default: the data folder's name)"
    )
    p.add_argument(
        "--recipe",
        default="fair",
        help="fair (default; selection on validation), paper (the authors' choices) or a YAML file",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs (recipe: 300)")
    add_input_size(p, None, help="the recipe's image_size (recipe: 256)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (recipe: 8)")
    p.add_argument("--seed", type=int, default=None, help="training seed (recipe: 42)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument(
        "--binarize",
        action="store_true",
        default=None,
        help="masks stored as 0/1 or other values: threshold them at 128 (default: refuse "
        "masks that are not 0/255)",
    )
    p.add_argument(
        "--amp",
        choices=[*AUTOCAST_DTYPES, "none"],
        default=None,
        help="mixed precision: bf16 or fp16 on CUDA, bf16 on CPU (torch autocast; falls back to fp32 where a probe step crashes)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_results(p)
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue an unfinished run from checkpoints/last.pt (default: yes)",
    )
    p.add_argument(
        "--resume-previous",
        action="store_true",
        help="resume from checkpoints/previous.pt (the checkpoint before last.pt), e.g. when "
        "last.pt is truncated or corrupt",
    )
    p.add_argument(
        "--wait",
        nargs="?",
        type=float,
        const=float("inf"),
        default=0.0,
        metavar="SECONDS",
        help="when another process owns the run folder, wait for it (up to SECONDS) instead "
        "of exiting with code 75",
    )
    p.add_argument("--force", action="store_true", help="start over even if finished")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes (GPUs) for one DDP run, launched through torchrun",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe field, e.g. --set lr=5e-4 --set val_every=5",
    )
    add_import(p)
    p.set_defaults(func=_cmd_train)


def _parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from models import UnknownModelError

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return bdist.launch_torchrun(args.nproc, _strip_nproc(sys.argv[1:]))
    overrides = _parse_sets(args.set)
    for key in ("model", "data", "dataset", "epochs", "batch_size", "seed", "device", "threads"):
        if getattr(args, key) is not None:
            if key in overrides and str(overrides[key]).strip() != str(getattr(args, key)):
                opt = "--" + key.replace("_", "-")
                raise ValueError(
                    f"{opt} {getattr(args, key)} and --set {key}={overrides[key]} disagree: "
                    "give one"
                )
            overrides[key] = getattr(args, key)
    if args.input_size is not None:
        overrides["image_size"] = args.input_size
    if args.amp is not None:
        overrides["amp"] = None if args.amp == "none" else args.amp
    if args.binarize:
        overrides["binarize"] = True
    try:
        cfg = TrainConfig.from_recipe(args.recipe, **overrides)
        run_training(
            cfg,
            args.results,
            resume=args.resume,
            force=args.force,
            quiet=args.quiet,
            wait=args.wait,
            use_previous=args.resume_previous,
        )
    except TrainingStopped as err:
        print(f"stopped: {err}", file=sys.stderr)
        if err.signum == signal.SIGTERM:
            return exitcodes.TERMINATED
        return exitcodes.INTERRUPTED
    except LockBusy as err:
        print(f"error: {err}", file=sys.stderr)
        return exitcodes.BUSY
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        if exitcodes.is_io_failure(err):  # disk full, quota, I/O error: not bad input
            return exitcodes.IO_ERROR
        return exitcodes.FAILED if isinstance(err, CheckpointWriteError) else exitcodes.USAGE
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return exitcodes.FAILED
    except (ValueError, FileNotFoundError, UnknownModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return exitcodes.USAGE
    return exitcodes.OK
