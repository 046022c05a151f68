"""Decoding images and masks (with every bad-input check) and running decode jobs in worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.core.progress import progress_bar
from bench.data.layouts import DataError, Problem, Sample


def _open_image(
    path: Path, draft_size: int | None, notes: list[Problem]
) -> tuple[Image.Image, tuple[int, int]]:
    """The image in RGB and its original ``(W, H)``; JPEGs drafted down towards ``draft_size``."""
    try:
        im = Image.open(path)
        orig_wh = im.size
        if draft_size and im.format == "JPEG":
            # Let libjpeg decode at a reduced DCT scale (1/2, 1/4, 1/8) that still leaves
            # both sides >= the target: several times faster on large ISIC images.
            im.draft("RGB", (draft_size, draft_size))
        im.load()
    except (
        Exception
    ) as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"{path}: cannot decode image ({err})") from None
    if im.mode != "RGB":
        notes.append(
            Problem(path, "converted", f"image mode {im.mode} converted to RGB", "warning")
        )
        im = im.convert("RGB")
    return im, orig_wh


def _open_mask(
    path: Path, image_size: tuple[int, int], binarize: bool, notes: list[Problem]
) -> np.ndarray:
    """The mask as uint8 {0, 1} at full resolution; checks size and values."""
    try:
        m = Image.open(path)
        m.load()
    except Exception as err:
        raise DataError(f"{path}: cannot decode mask ({err})") from None
    if m.size != image_size:
        raise DataError(
            f"{path}: mask is {m.size[0]}x{m.size[1]} but its image is "
            f"{image_size[0]}x{image_size[1]} (WxH)"
        )
    if m.mode not in ("L", "1"):
        arr = np.asarray(m)
        if (
            arr.ndim == 3
            and arr.shape[2] >= 3
            and not (
                np.array_equal(arr[..., 0], arr[..., 1])
                and np.array_equal(arr[..., 0], arr[..., 2])
            )
        ):
            raise DataError(f"{path}: mask is colour ({m.mode}) with differing channels")
        notes.append(
            Problem(path, "converted", f"mask mode {m.mode} converted to grayscale", "warning")
        )
        arr = arr[..., 0] if arr.ndim == 3 else arr
    else:
        arr = np.asarray(m.convert("L"))
    counts = np.bincount(arr.ravel(), minlength=256)
    values = np.flatnonzero(counts)
    if not set(values.tolist()) <= {0, 255}:
        if not binarize:
            shown = ", ".join(str(v) for v in values[:12]) + (" ..." if len(values) > 12 else "")
            raise DataError(
                f"{path}: mask values are not 0/255 (found {len(values)} values: {shown}); "
                "pass binarize=True (--binarize) to threshold at 128"
            )
        notes.append(
            Problem(path, "binarized", f"mask values {values[:8].tolist()} binarised", "warning")
        )
        if values.max() <= 1:  # a 0/1 mask: thresholding at 128 would empty it
            return (arr > 0).astype(np.uint8)
        return (arr >= 128).astype(np.uint8)
    return (arr > 127).astype(np.uint8)


def load_pair(
    sample: Sample, size: int | None, *, binarize: bool = False, notes: list[Problem] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int], np.ndarray]:
    """Decode one sample: ``(image HxWx3 uint8, mask HxW {0,1}, (orig_h, orig_w), orig_mask)``.

    With ``size`` the image is resized to ``size x size`` bilinearly (antialiased: PIL
    widens the filter when shrinking, i.e. area-like) and the mask by nearest neighbour;
    ``size=None`` keeps the original resolution. Raises :class:`DataError` naming the file.
    """
    notes = [] if notes is None else notes
    if sample.mask is None:
        raise DataError(f"{sample.image}: no mask")
    im, orig_wh = _open_image(sample.image, size, notes)
    mask = _open_mask(sample.mask, orig_wh, binarize, notes)
    if size is None:
        return np.asarray(im), mask, (orig_wh[1], orig_wh[0]), mask
    img = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))
    small = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
    return img, small, (orig_wh[1], orig_wh[0]), mask


def _decode_job(args: tuple[Sample, int | None, bool, bool]) -> dict[str, Any]:
    """Worker for the cache build and the checker; never raises (errors come back as data)."""
    sample, size, binarize, keep_orig = args
    notes: list[Problem] = []
    try:
        img, small, orig, full = load_pair(sample, size, binarize=binarize, notes=notes)
    except DataError as err:
        return {"error": str(err), "path": str(_culprit(sample, str(err))), "notes": notes}
    out: dict[str, Any] = {"notes": notes, "orig": orig, "fg": float(full.mean())}
    if size is not None:
        out["image"], out["mask"] = img, small
    if keep_orig:
        out["orig_mask"] = np.packbits(full.ravel())
    return out


def _culprit(sample: Sample, message: str) -> Path:
    if sample.mask is not None and message.startswith(str(sample.mask)):
        return sample.mask
    return sample.image


def _progress(total: int, desc: str, enabled: bool):
    return progress_bar(total=total, desc=desc, unit="img", enabled=enabled)


def run_decode_jobs(
    jobs: list, workers: int, desc: str, progress: bool
) -> Iterator[dict[str, Any]]:
    """Results of ``_decode_job`` in job order, over ``workers`` processes, with a progress bar."""
    with _progress(len(jobs), desc, progress) as bar:
        if workers <= 1 or len(jobs) < 8:
            for job in jobs:
                yield _decode_job(job)
                bar.update()
            return
        chunk = max(1, min(16, len(jobs) // (workers * 8)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for res in pool.map(_decode_job, jobs, chunksize=chunk):
                yield res
                bar.update()
