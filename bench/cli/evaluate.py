"""``segbench evaluate``: argument parsing for :mod:`bench.engine.run_eval` (the work)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd

from bench.cli.common import add_import, add_input_size, add_results
from bench.core.precision import DTYPES
from bench.data.splits import SPLIT_MODES
from bench.engine.evaluate import BASELINES, EVAL_SPLITS
from bench.engine.metrics import HD95_CONVENTIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a run, a checkpoint or a baseline on a data split (pooled + per-image)",
        description="Score a training run (--run: model, settings and best checkpoint from "
        "the run), any checkpoint (segbench's carry their settings; a state_dict saved by the "
        "authors' MALUNet/EGE-UNet code needs --model) or a trivial baseline on a split or "
        "on every image of a folder (--split all, for cross-dataset evaluation): pooled "
        "Acc/Sen/Spe/DSC/mIoU at the evaluation size, per-image Dice/IoU/HD95 and the ISIC "
        "2018 thresholded Jaccard. Options left out take the run's / checkpoint's values; "
        "given values that differ from them are refused unless --allow-mismatch.",
    )
    p.add_argument(
        "--run",
        metavar="RUN_DIR",
        help="a training run folder: settings from its config.json, weights from "
        "checkpoints/best.pt; results go to RUN_DIR/eval/<dataset>-<split>/",
    )
    p.add_argument("--model", help="registry name, e.g. malunet (with --checkpoint)")
    p.add_argument(
        "--model-kwargs",
        default=None,
        metavar="YAML",
        help="builder arguments the model was trained with, e.g. '{base_width: 16}'",
    )
    p.add_argument("--checkpoint", help="checkpoint file (.pt/.pth)")
    p.add_argument(
        "--weights",
        metavar="NAME",
        help="committed trained weights of --model (segbench weights list), checked by "
        "sha256; their input size, scaling and threshold unless given",
    )
    p.add_argument(
        "--baseline",
        choices=BASELINES,
        help="score a trivial predictor instead of a model: all (every pixel lesion), disc "
        "(a centred disc covering the training split's mean lesion area), mean-mask (the "
        "training masks' pixel-wise mean, thresholded)",
    )
    p.add_argument("--data", help="dataset root folder (default with --run: the run's)")
    p.add_argument(
        "--split",
        default=None,
        choices=EVAL_SPLITS,
        help="split to score, or all: every image of the folder (default: the run's "
        "eval split on its own dataset, test without a run)",
    )
    p.add_argument("--split-file", default=None, help="split.json to use (default: the data's)")
    p.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the data split the model was trained with (default: the run's, 42)",
    )
    p.add_argument("--val-fraction", type=float, default=None, help="as in training (0.1)")
    p.add_argument("--test-fraction", type=float, default=None, help="as in training (0.3)")
    p.add_argument("--split-mode", choices=SPLIT_MODES, default=None, help="as in training (auto)")
    add_input_size(p, None, help="the evaluation resolution (default: the trained one, 256)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per forward (default: the run's, 8)"
    )
    p.add_argument(
        "--scaling",
        default=None,
        choices=["minmax255", "unit"],
        help="input scaling the model was trained with (default: the run's, else the "
        "authors' per-image min-max to [0, 255])",
    )
    p.add_argument("--threshold", type=float, default=None, help="default: the run's, 0.5")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument(
        "--binarize",
        action="store_true",
        default=None,
        help="masks stored as 0/1 or other values: threshold them at 128 (default: refuse "
        "masks that are not 0/255)",
    )
    p.add_argument(
        "--amp",
        choices=DTYPES,
        default=None,
        help="precision (default: the one the run used, else fp32)",
    )
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="score even when given settings differ from the ones the model was trained "
        "with (warns; recorded in metrics.json)",
    )
    p.add_argument(
        "--keep-training-images",
        action="store_true",
        help="on another dataset, also score the images the run trained or was selected on "
        "(same ID, same pixels or a near copy); default: they are left out, and the output "
        "says which",
    )
    p.add_argument(
        "--hd95",
        choices=HD95_CONVENTIONS,
        default=None,
        help="HD95 convention: monai (max of the directed 95th percentiles, default) or "
        "medpy (95th percentile of both directions pooled)",
    )
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
    add_import(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from bench.core import exitcodes
    from models import UnknownModelError

    try:
        return _evaluate_command(args)
    except OSError as err:  # a missing file is bad input; a full disk is not
        print(f"error: {err}", file=sys.stderr)
        return exitcodes.IO_ERROR if exitcodes.is_io_failure(err) else exitcodes.USAGE
    except (ValueError, UnknownModelError) as err:  # bad input: a message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return exitcodes.USAGE


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _evaluate_command(args: argparse.Namespace) -> int:
    import warnings

    import yaml

    from bench.engine.run_eval import evaluate_model

    kwargs = None
    if args.model_kwargs is not None:
        kwargs = yaml.safe_load(args.model_kwargs) or {}
        if not isinstance(kwargs, dict):
            raise ValueError(f"--model-kwargs {args.model_kwargs!r}: expected a mapping")
    if args.weights:
        # committed weights by name: their file (sha256-checked) and the settings they
        # were trained with, unless given
        from models.weights import get_weights, verified_path

        if not args.model or args.checkpoint or args.run:
            raise ValueError("--weights NAME goes with --model, not with --checkpoint or --run")
        entry = get_weights(args.model, args.weights)
        args.checkpoint = str(verified_path(entry))
        kwargs = entry.model_kwargs if kwargs is None else kwargs
        args.input_size = args.input_size or entry.image_size
        args.scaling = args.scaling or entry.input_scaling
        args.threshold = args.threshold if args.threshold is not None else entry.threshold
    if not (args.run or args.checkpoint or args.baseline):
        raise ValueError(
            "give --run RUN_DIR, --checkpoint FILE or --weights NAME (with --model) or --baseline"
        )
    given = {
        "model": args.model,
        "model_kwargs": kwargs,
        "image_size": args.input_size,
        "input_scaling": args.scaling,
        "threshold": args.threshold,
        "precision": args.amp,
        "split_file": args.split_file,
        "split_seed": args.split_seed,
        "val_fraction": args.val_fraction,
        "test_fraction": args.test_fraction,
        "split_mode": args.split_mode,
        "binarize": args.binarize,
    }
    split = args.split or (None if args.run else "test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = evaluate_model(
            run_dir=args.run,
            checkpoint=args.checkpoint,
            baseline=args.baseline,
            data=args.data,
            split=split,
            given=given,
            allow_mismatch=args.allow_mismatch,
            hd95_convention=args.hd95,
            out=args.results,
            device=args.device,
            batch_size=args.batch_size,
            original_resolution=args.original_resolution,
            save_masks=args.save_masks,
            compute_hd95=not args.no_hd95,
            progress=not args.quiet,
            keep_training_images=args.keep_training_images,
        )
    for w in caught:
        print(f"WARNING: {w.message}", file=sys.stderr)
    rec = outcome.record
    blocks = {rec["split"]: rec["metrics"]}
    if "metrics_original_resolution" in rec:
        blocks[f"{rec['split']}_original"] = rec["metrics_original_resolution"]
    table = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in blocks.items()})
    print(
        f"{rec['model']} on {rec['eval_dataset']} ({rec['split']}, {rec['n_images']} images, "
        f"{rec['precision']})"
    )
    print(table.to_string(formatters={c: _fmt for c in table.columns}))
    ov = rec.get("training_overlap") or {}
    if ov.get("n_matched"):
        what = "kept (--keep-training-images)" if ov.get("kept") else "excluded"
        print(f"{ov['n_matched']} image(s) the run trained or was selected on: {what}")
    if outcome.out_dir is not None:
        print(f"wrote {outcome.out_dir / 'metrics.json'}")
    return 0
