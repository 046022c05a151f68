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

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from bench.core.precision import autocast_context
from bench.core.progress import progress_bar
from bench.data.augment import scale_images
from bench.engine import distributed as bdist
from bench.engine.metrics import MetricAccumulator, upsample_probs

#: per_image.csv: per-image scores, then the image's confusion counts at the threshold
#: (pixels), from which any pooled metric of any subset of images can be recomputed
PER_IMAGE_COLUMNS = [
    "image_id", "dice", "iou", "hd95", "jaccard_thresholded", "tp", "fp", "fn", "tn",
]  # fmt: skip


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


@dataclass(frozen=True)
class EvalSettings:
    """How a model is scored: where, in what batches, input scaling, precision, threshold
    and HD95. Built once per run (the trainer's validation and final test) or per
    command (``segbench evaluate``) and passed whole, so two scorings of one model
    cannot differ by a forgotten argument.

    ``amp``: the autocast dtype (None: fp32; see :mod:`bench.core.precision`).
    ``hd95_convention``: ``"monai"`` or ``"medpy"`` (:func:`bench.engine.metrics.hd95`);
    ``compute_hd95=False`` skips the per-image HD95 (validation during training).
    """

    device: str = "cpu"
    batch_size: int = 8
    scaling: str = "minmax255"
    amp: str | None = None
    threshold: float = 0.5
    compute_hd95: bool = True
    hd95_convention: str = "monai"

    def replace(self, **changes: Any) -> EvalSettings:
        """A copy with ``changes`` (e.g. ``compute_hd95=False`` for validation)."""
        return dataclasses.replace(self, **changes)


@torch.no_grad()
def evaluate_arrays(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    ids: Sequence[str],
    settings: EvalSettings | None = None,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    original_mask: Callable[[int], np.ndarray] | None = None,
    save_masks: str | Path | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> EvalResult:
    """Predict every image and score it with ``settings`` (default: :class:`EvalSettings`());
    distributed-aware (see module doc).

    ``images`` uint8 (N, H, W, 3) or (N, 3, H, W); ``masks`` (N, H, W) or
    (N, 1, H, W) in {0, 1}. ``loss_fn(logits, target)`` adds the mean loss
    (``EvalResult.loss``). ``original_mask(i)`` returns image i's mask at its
    original size: the probability map is then also upsampled bilinearly to that
    size and scored there (``EvalResult.original``). ``save_masks`` writes each
    predicted mask as ``<image_id>.png`` (0/255; at original size when scored there).
    """
    st = settings or EvalSettings()
    device, batch_size, threshold = st.device, st.batch_size, st.threshold
    imgs, msks = to_nchw(images), to_nchw(masks)
    n = imgs.shape[0]
    if msks.shape[0] != n or len(ids) != n:
        raise ValueError(f"{n} images, {msks.shape[0]} masks and {len(ids)} ids do not match")
    d = bdist.info()
    mine = list(range(d.rank, n, d.world_size))  # every world_size-th image, no padding
    was_training = model.training
    model.eval()

    def accumulator() -> MetricAccumulator:
        return MetricAccumulator(threshold, st.compute_hd95, st.hd95_convention)

    acc = accumulator()
    orig = accumulator() if original_mask else None
    loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of per-batch loss * batch, images)
    out_dir = Path(save_masks) if save_masks else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    bar = _bar(batches, progress and d.is_main, desc)
    try:
        for idx in bar:
            x = scale_images(imgs[idx].to(device, non_blocking=True), mode=st.scaling)
            y = msks[idx].to(device, non_blocking=True).float()
            with autocast_context(device, st.amp):
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
    return progress_bar(batches, enabled=enabled, desc=desc, unit="batch", leave=False)


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
        new = MetricAccumulator(a.threshold, a.compute_hd95, a.hd95_convention)
        new.merge(counts[k], [r for _, r in rows])
        merged.append(new)
    return merged[0], (merged[1] if orig is not None else None), loss_sum


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=PER_IMAGE_COLUMNS)


def _save_png(path: Path, mask: torch.Tensor) -> None:
    from PIL import Image

    from bench.core.io import atomic_write

    img = Image.fromarray(mask.numpy().astype(np.uint8) * 255)
    atomic_write(path, lambda fh: img.save(fh, format="PNG"), mode="wb")


#: ``evaluate_split`` splits: one part of the dataset's split, or every image of the folder
EVAL_SPLITS = ("train", "val", "test", "all")


def split_parts(prepared: Any, split: str) -> list[str]:
    """The parts of ``prepared``'s split that ``split`` covers (``"all"``: every non-empty
    one). Raises ``ValueError`` naming the fix when the part asked for is empty."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split {split!r}: choose one of {', '.join(EVAL_SPLITS)}")
    if split == "all":
        parts = [s for s in ("train", "val", "test") if prepared.split_ids.get(s)]
        if not parts:
            raise ValueError(f"{prepared.root}: holds no images")
        return parts
    if not prepared.split_ids.get(split):
        from bench.data.splits import evaluation_only

        have = {k: len(v) for k, v in prepared.split_ids.items() if v}
        what = (
            f"the folder holds only the official {' + '.join(prepared.layout.official_splits)} "
            "part(s)"
            if evaluation_only(prepared.index)
            else f"its split has {have}"
        )
        raise ValueError(
            f"split {split!r} of {prepared.root} is empty ({what}); use --split all to score "
            f"every image of the folder, or one of {', '.join(have) or 'nothing'}"
        )
    return [split]


def evaluate_split(
    model: nn.Module,
    prepared: Any,
    split: str = "test",
    settings: EvalSettings | None = None,
    *,
    original_resolution: bool = False,
    exclude: Any = (),
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    save_masks: str | Path | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> EvalResult:
    """:func:`evaluate_arrays` over one split of a ``bench.data.prepared.PreparedData``.

    ``split="all"`` scores every image of the folder (the parts of its split joined, in
    ID order): cross-dataset evaluation, or a folder holding only an official
    validation / test download. An empty split is an error that names ``--split all``.
    ``original_resolution``: also score at each image's original size. ``exclude``:
    image IDs left out (e.g. images the model trained on, see
    :mod:`bench.engine.overlap`).
    """
    parts = split_parts(prepared, split)
    where = [(part, j) for part in parts for j in range(len(prepared.split_ids[part]))]
    ids = [prepared.split_ids[part][j] for part, j in where]
    drop = set(exclude)
    if len(parts) == 1 and not drop:
        images, masks = prepared.images(parts[0]), prepared.masks(parts[0])
    else:  # one copy of every part, in ID order, without the excluded images
        order = sorted((i for i in range(len(ids)) if ids[i] not in drop), key=ids.__getitem__)
        if not order:
            raise ValueError(f"split {split!r} of {prepared.root}: every image is excluded")
        where, ids = [where[i] for i in order], [ids[i] for i in order]
        images = np.concatenate([prepared.images(p) for p in parts])[order]
        masks = np.concatenate([prepared.masks(p) for p in parts])[order]
    orig = (lambda i: prepared.original_mask(*where[i])) if original_resolution else None
    return evaluate_arrays(
        model, images, masks, ids, settings, original_mask=orig, loss_fn=loss_fn,
        save_masks=save_masks, progress=progress, desc=desc,
    )  # fmt: skip


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
