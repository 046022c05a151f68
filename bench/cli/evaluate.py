"""``segbench evaluate``: argument parsing for :mod:`bench.engine.evaluate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from bench.cli.common import add_input_size, add_results
from bench.core.device import resolve_device
from bench.engine.checkpoints import load_weights
from bench.engine.evaluate import BASELINES, baseline_model, evaluate_split


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint on a data split (pooled + per-image metrics)",
        description="Score any checkpoint (segbench's, or a state_dict saved by the authors' "
        "MALUNet/EGE-UNet code) on a split: pooled Acc/Sen/Spe/DSC/mIoU at the evaluation "
        "size, per-image Dice/IoU/HD95 and the ISIC 2018 thresholded Jaccard.",
    )
    p.add_argument("--model", help="registry name, e.g. malunet (with --checkpoint)")
    p.add_argument(
        "--model-kwargs",
        default="{}",
        metavar="YAML",
        help="builder arguments the model was trained with, e.g. '{base_width: 16}'",
    )
    p.add_argument("--checkpoint", help="checkpoint file (.pt/.pth)")
    p.add_argument(
        "--baseline",
        choices=BASELINES,
        help="score a trivial predictor instead of a model: all (every pixel lesion), disc "
        "(a centred disc covering the training split's mean lesion area), mean-mask (the "
        "training masks' pixel-wise mean, thresholded)",
    )
    p.add_argument("--data", required=True, help="dataset root folder")
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test"],
        help="split to score (default: test)",
    )
    p.add_argument("--split-file", default=None, help="split.json to use (default: the data's)")
    p.add_argument(
        "--split-seed",
        type=int,
        default=42,
        help="seed of the data split the model was trained with (default 42)",
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="as in training (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.3, help="as in training (default 0.3)")
    add_input_size(p, help="the evaluation resolution")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward (default 8)")
    p.add_argument(
        "--scaling",
        default="minmax255",
        choices=["minmax255", "unit"],
        help="input scaling the model was trained with (default: the authors' "
        "per-image min-max to [0, 255])",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="probability threshold of a lesion pixel (default 0.5)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast on CUDA")
    p.add_argument(
        "--original-resolution",
        action="store_true",
        help="also score at each image's original size (bilinear upsampling)",
    )
    p.add_argument(
        "--save-masks",
        default=None,
        metavar="DIR",
        help="write predicted masks as <image_id>.png (0/255)",
    )
    add_results(p, None, help="write metrics.json and per_image.csv into this folder")
    p.add_argument("--no-hd95", action="store_true", help="skip HD95 (faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from models import UnknownModelError

    try:
        return _evaluate_command(args)
    except (
        ValueError,
        FileNotFoundError,
        UnknownModelError,
    ) as err:  # bad input: a message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _evaluate_command(args: argparse.Namespace) -> int:
    import yaml

    from bench.core.env import environment
    from bench.core.io import write_csv, write_json
    from bench.data.cache import prepare_data
    from models import create_model

    device = str(resolve_device(args.device, allow=None))
    prepared = prepare_data(
        args.data,
        size=args.input_size,
        split_file=args.split_file,
        seed=args.split_seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        progress=not args.quiet,
    )
    kwargs = yaml.safe_load(args.model_kwargs) or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model-kwargs {args.model_kwargs!r}: expected a mapping")
    if args.baseline:
        if args.model or args.checkpoint:
            raise ValueError("--baseline replaces --model/--checkpoint: give one or the other")
        model = baseline_model(args.baseline, prepared.masks("train")).to(device)
        args.model = f"baseline-{args.baseline}"
    elif not (args.model and args.checkpoint):
        raise ValueError("give --model and --checkpoint (or --baseline)")
    else:
        model = create_model(args.model, **kwargs).to(device)
        load_weights(model, args.checkpoint)
    res = evaluate_split(
        model,
        prepared,
        args.split,
        device=device,
        batch_size=args.batch_size,
        scaling=args.scaling,
        amp=args.amp,
        threshold=args.threshold,
        compute_hd95=not args.no_hd95,
        original_resolution=args.original_resolution,
        save_masks=args.save_masks,
        progress=not args.quiet,
        desc=f"{args.model} {args.split}",
    )
    blocks = {args.split: res.metrics}
    if res.original is not None:
        blocks[f"{args.split}_original"] = res.original
    table = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in blocks.items()})
    print(table.to_string(formatters={c: _fmt for c in table.columns}))
    if args.results:
        out = Path(args.results)
        write_json(
            out / "metrics.json",
            {
                "model": args.model,
                "dataset": prepared.name,
                "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                "split": args.split,
                "command": " ".join(sys.argv),
                **blocks,
                "environment": environment(device),
            },
        )
        write_csv(out / "per_image.csv", res.per_image)
        if res.original_per_image is not None:
            write_csv(out / "per_image_original.csv", res.original_per_image)
        print(f"wrote {out / 'metrics.json'}")
    return 0
