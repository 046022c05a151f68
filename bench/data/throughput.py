"""Loader throughput: samples per second delivered with augmentation, from the
preprocessing cache and from decoding the image files (``segbench data bench``)."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from bench.data.augment import augment_batch, scale_images
from bench.data.layouts import DataError
from bench.data.prepared import PreparedData


def _timed(make_batches: Any, augment_here: bool, seconds: float, gen: torch.Generator) -> dict:
    """Samples per wall second over ``seconds`` (after one warm-up batch, which covers
    worker start-up), and per CPU second of this process: on a shared machine the latter
    is about what one idle core would deliver (meaningful only when this process does all
    the work, i.e. without workers)."""
    n, t0, c0, warm = 0, 0.0, 0.0, False
    while True:
        for x, y, _ in make_batches():
            if augment_here:
                x, y = augment_batch(x, y, gen)
            scale_images(x)
            if not warm:
                warm, t0, c0 = True, time.perf_counter(), time.process_time()
                continue
            n += len(x)
            if (wall := time.perf_counter() - t0) >= seconds:
                cpu = time.process_time() - c0
                return {
                    "samples_per_s": n / wall,
                    "samples_per_cpu_s": n / max(cpu, 1e-9),
                    "n": n,
                }


def loader_throughput(
    data: PreparedData, batch: int, seconds: float, workers: int
) -> dict[str, dict[str, float]]:
    """Source -> samples/s (and per CPU-s) of the train split: the cache read in this
    process, the cache through ``workers`` loader processes, and decoding the files."""
    gen = torch.Generator().manual_seed(0)
    n_train = len(data.split_ids["train"])
    if n_train < batch:
        raise DataError(
            f"{data.root}: the train split has {n_train} images, fewer than one "
            f"batch of {batch}; pass a smaller --batch"
        )
    kw = {"shuffle": True, "drop_last": True}
    results = {
        "cache": _timed(
            lambda: data.batches("train", batch, generator=gen, **kw), True, seconds, gen
        )
    }
    if workers > 0:
        loader = data.loader("train", batch, augment=True, workers=workers, **kw)
        results[f"cache, {workers} workers"] = _timed(lambda: iter(loader), False, seconds, gen)
        del loader
    files = torch.utils.data.DataLoader(
        data.file_dataset("train"),
        batch_size=batch,
        num_workers=workers,
        persistent_workers=workers > 0,
        **kw,
    )
    results[f"files, {workers} workers"] = _timed(lambda: iter(files), True, seconds, gen)
    return results


def load_average() -> tuple[float, float, float]:
    """The machine's load average (the figures depend on it on a shared machine)."""
    return os.getloadavg()
