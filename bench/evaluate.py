"""Score a model on a split: the papers' pooled metrics plus per-image Dice/IoU/HD95.

``evaluate_arrays`` is the engine both ``segbench train`` (validation and the final
test) and ``segbench evaluate`` use. In a distributed run each rank scores every
``world_size``-th image; confusion counts are summed with ``all_reduce`` and the
per-image rows gathered once, so the result equals a single-process evaluation.

``segbench evaluate`` also reads checkpoints saved by the authors' MALUNet /
EGE-UNet code: a plain ``state_dict`` or a dict holding ``model_state_dict`` /
``state_dict`` (``module.`` prefixes from DataParallel/DDP are stripped).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from bench import distributed as bdist
from bench.augment import scale_images
from bench.metrics import MetricAccumulator, upsample_probs

__all__ = [
    "BASELINES",
    "EvalResult",
    "FixedPrediction",
    "autocast_context",
    "baseline_model",
    "evaluate_arrays",
    "evaluate_split",
    "extract_state_dict",
    "load_weights",
    "register",
    "resolve_device",
    "to_nchw",
]

PER_IMAGE_COLUMNS = ["image_id", "dice", "iou", "hd95", "jaccard_thresholded"]


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; validates explicit names."""
    if device in ("auto", "", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device: {device!r} is not a device name (cpu, cuda, cuda:1)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return str(dev)


def autocast_context(device: str, amp: str | None) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA, bf16 autocast on CPU; a no-op otherwise (or ``amp`` None)."""
    kind = torch.device(device).type
    if not amp or kind not in ("cuda", "cpu") or (kind == "cpu" and amp != "bf16"):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(kind, dtype=dtype)


def to_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) arrays (the cache's layout) -> contiguous (N, 3, H, W) tensor."""
    # np.array copies: the cache is a read-only memory map, and the split is used every epoch
    t = torch.from_numpy(np.array(images)) if isinstance(images, np.ndarray) else images
    if t.dim() == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    elif t.dim() == 3:  # masks (N, H, W)
        t = t.unsqueeze(1)
    return t.contiguous()


@dataclass
class EvalResult:
    metrics: dict[str, float | int]
    per_image: pd.DataFrame
    loss: float = math.nan
    original: dict[str, float | int] | None = None
    original_per_image: pd.DataFrame | None = None


@torch.no_grad()
def evaluate_arrays(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    ids: Sequence[str],
    *,
    device: str = "cpu",
    batch_size: int = 8,
    scaling: str = "minmax255",
    amp: str | None = None,
    threshold: float = 0.5,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    compute_hd95: bool = True,
    original_mask: Callable[[int], np.ndarray] | None = None,
    save_masks: str | Path | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> EvalResult:
    """Predict every image and score it; distributed-aware (see module doc).

    ``images`` uint8 (N, H, W, 3) or (N, 3, H, W); ``masks`` (N, H, W) or
    (N, 1, H, W) in {0, 1}. ``original_mask(i)`` returns image i's mask at its
    original size: the probability map is then also upsampled bilinearly to that
    size and scored there (``EvalResult.original``). ``save_masks`` writes each
    predicted mask as ``<image_id>.png`` (0/255; at original size when scored there).
    """
    imgs, msks = to_nchw(images), to_nchw(masks)
    n = imgs.shape[0]
    if msks.shape[0] != n or len(ids) != n:
        raise ValueError(f"{n} images, {msks.shape[0]} masks and {len(ids)} ids do not match")
    d = bdist.info()
    mine = list(range(d.rank, n, d.world_size))  # every world_size-th image, no padding
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(threshold=threshold, compute_hd95=compute_hd95)
    orig = (
        MetricAccumulator(threshold=threshold, compute_hd95=compute_hd95) if original_mask else None
    )
    loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of per-batch loss * batch, images)
    out_dir = Path(save_masks) if save_masks else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    bar = _bar(batches, progress and d.is_main, desc)
    try:
        for idx in bar:
            x = scale_images(imgs[idx].to(device, non_blocking=True), mode=scaling)
            y = msks[idx].to(device, non_blocking=True).float()
            with autocast_context(device, amp):
                logits = model(x)
            logits = logits.float()
            if loss_fn is not None:
                loss_sum += torch.tensor(
                    [float(loss_fn(logits, y)) * len(idx), len(idx)], dtype=torch.float64
                )
            probs = torch.sigmoid(logits).cpu()
            batch_ids = [str(ids[i]) for i in idx]
            acc.update(probs, y.cpu(), batch_ids)
            for j, i in enumerate(idx):
                pred_map = probs[j, 0]
                if orig is not None:
                    target = torch.as_tensor(np.asarray(original_mask(i)))
                    pred_map = upsample_probs(pred_map, tuple(target.shape[-2:]))
                    orig.update(pred_map[None], target[None], [batch_ids[j]])
                if out_dir:
                    _save_png(out_dir / f"{batch_ids[j]}.png", pred_map >= threshold)
    finally:
        model.train(was_training)
    acc, orig, loss_sum = _combine(acc, orig, loss_sum, mine)
    result = EvalResult(
        acc.summary(),
        _frame(acc.rows),
        float(loss_sum[0] / loss_sum[1]) if loss_fn and loss_sum[1] else math.nan,
    )
    if orig is not None:
        result.original, result.original_per_image = orig.summary(), _frame(orig.rows)
    return result


def _bar(batches: list, enabled: bool, desc: str):
    if not enabled:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def _combine(
    acc: MetricAccumulator, orig: MetricAccumulator | None, loss_sum: torch.Tensor, mine: list[int]
) -> tuple[MetricAccumulator, MetricAccumulator | None, torch.Tensor]:
    """Sum counts over ranks and gather per-image rows once, in image order."""
    if not bdist.info().enabled:
        return acc, orig, loss_sum
    accs = [a for a in (acc, orig) if a is not None]
    counts = bdist.all_reduce_sum(torch.stack([a.counts for a in accs]))  # int64, exact
    loss_sum = bdist.all_reduce_sum(loss_sum.clone())
    gathered = bdist.gather_objects((mine, [a.rows for a in accs]))
    merged = []
    for k, a in enumerate(accs):
        pairs = ((i, r) for idx, rs in gathered for i, r in zip(idx, rs[k]))
        rows = sorted(pairs, key=lambda t: t[0])
        new = MetricAccumulator(a.threshold, a.compute_hd95)
        new.merge(counts[k], [r for _, r in rows])
        merged.append(new)
    return merged[0], (merged[1] if orig is not None else None), loss_sum


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=PER_IMAGE_COLUMNS)


def _save_png(path: Path, mask: torch.Tensor) -> None:
    from PIL import Image

    from bench.io import atomic_write

    img = Image.fromarray(mask.numpy().astype(np.uint8) * 255)
    atomic_write(path, lambda fh: img.save(fh, format="PNG"), mode="wb")


def evaluate_split(
    model: nn.Module,
    prepared: Any,
    split: str = "test",
    *,
    original_resolution: bool = False,
    **kwargs: Any,
) -> EvalResult:
    """:func:`evaluate_arrays` over one split of a ``bench.data.PreparedData``."""
    ids = list(prepared.split_ids[split])
    if not ids:
        raise ValueError(f"split {split!r} of {prepared.name} is empty")
    orig = (lambda i: prepared.original_mask(split, i)) if original_resolution else None
    return evaluate_arrays(
        model, prepared.images(split), prepared.masks(split), ids, original_mask=orig, **kwargs
    )


# --------------------------------------------------------------------------- baselines

BASELINES = ("all", "disc", "mean-mask")


class FixedPrediction(nn.Module):
    """Predicts one fixed probability map for every image (a trivial baseline)."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", torch.logit(probs.float().clamp(1e-4, 1 - 1e-4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != tuple(self.logits.shape):
            raise ValueError(f"baseline map is {tuple(self.logits.shape)}, input {tuple(x.shape)}")
        return self.logits.expand(x.shape[0], 1, *self.logits.shape)


def baseline_model(kind: str, train_masks: np.ndarray) -> FixedPrediction:
    """A trivial predictor built from the training masks (N, H, W) only (see BASELINES)."""
    m = torch.tensor(np.asarray(train_masks), dtype=torch.float32)
    h, w = m.shape[-2:]
    if kind == "all":
        return FixedPrediction(torch.ones(h, w))
    if kind == "disc":
        area = float(m.mean()) * h * w  # mean lesion area of the training split, in pixels
        yy, xx = torch.meshgrid(
            torch.arange(h) + 0.5 - h / 2, torch.arange(w) + 0.5 - w / 2, indexing="ij"
        )
        return FixedPrediction((yy**2 + xx**2 <= area / math.pi).float())
    if kind == "mean-mask":
        return FixedPrediction(m.mean(0))
    raise ValueError(f"baseline {kind!r}: choose one of {', '.join(BASELINES)}")


# --------------------------------------------------------------------------- checkpoints


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights in a segbench or authors' checkpoint (see module doc)."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise ValueError(
            f"{source}: expected a state_dict or a dict holding one, got {type(obj).__name__}"
        )
    for key in ("model", "model_state_dict", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source}: no model weights found (keys: {', '.join(list(obj)[:8])})")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):  # DataParallel/DDP, torch.compile
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> dict[str, Any]:
    """Load a checkpoint file's weights into ``model``; returns the raw checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a loadable PyTorch checkpoint ({err})") from err
    state = extract_state_dict(ckpt, str(path))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when not strict
        lines = [ln.strip() for ln in str(err).splitlines()[1:]]
        more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
        raise ValueError(
            f"{path}: weights do not match the model: {'; '.join(lines[:3])}{more}"
        ) from None
    if strict and (missing or unexpected):
        raise ValueError(
            f"{path}: weights do not match the model: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    return ckpt if isinstance(ckpt, dict) else {}


# --------------------------------------------------------------------------- CLI


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
    p.add_argument("--size", type=int, default=256, help="evaluation resolution (default 256)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--scaling",
        default="minmax255",
        choices=["minmax255", "unit"],
        help="input scaling the model was trained with (default: the authors' "
        "per-image min-max to [0, 255])",
    )
    p.add_argument("--threshold", type=float, default=0.5)
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
    p.add_argument(
        "--out", default=None, metavar="DIR", help="write metrics.json and per_image.csv there"
    )
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

    from bench.data import prepare_data
    from bench.env import environment
    from bench.io import write_csv, write_json
    from models import create_model

    device = resolve_device(args.device)
    prepared = prepare_data(
        args.data,
        size=args.size,
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
    if args.out:
        out = Path(args.out)
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
