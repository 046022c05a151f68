"""Timing a step and summarising the per-iteration times (median, IQR, p90, noisy flag)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MIN_CAPPED_ITERS = 3  # timed iterations kept even when max_time_s is hit


@dataclass(frozen=True)
class TimingStats:
    """Summary of per-iteration times, in milliseconds."""

    median_ms: float
    iqr_ms: float
    q1_ms: float
    q3_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    count: int
    noisy: bool


def summarize(times_s: Sequence[float], noisy_threshold: float = 0.1) -> TimingStats:
    """Median, IQR (q3 - q1), p90, mean of ``times_s`` (seconds), and the noisy flag.

    Percentiles use numpy's default linear interpolation. ``noisy`` is
    ``IQR / median > noisy_threshold``.
    """
    arr = np.asarray(times_s, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"times_s must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("times_s must be finite and non-negative")
    if noisy_threshold < 0:
        raise ValueError(f"noisy_threshold must be >= 0, got {noisy_threshold}")
    ms = arr * 1e3
    q1, med, q3, p90 = np.percentile(ms, [25, 50, 75, 90])
    iqr = q3 - q1
    noisy = bool(iqr > noisy_threshold * med) if med > 0 else bool(iqr > 0)
    return TimingStats(
        float(med),
        float(iqr),
        float(q1),
        float(q3),
        float(p90),
        float(ms.mean()),
        float(ms.min()),
        int(arr.size),
        noisy,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(
    step: Callable[[], Any],
    device: str | torch.device = "cpu",
    *,
    warmup: int = 3,
    min_time_s: float = 1.0,
    min_iters: int = 10,
    max_time_s: float | None = None,
) -> tuple[list[float], bool]:
    """Run ``step`` ``warmup`` times, then time it; returns (seconds per iteration, capped).

    Timed iterations continue until both ``min_time_s`` and ``min_iters`` are reached;
    ``capped`` is True when ``max_time_s`` stopped the loop earlier (after at least
    ``MIN_CAPPED_ITERS`` iterations). Warm-up also stops at ``max_time_s`` (after one).
    """
    dev = torch.device(device)
    if warmup < 0 or min_iters < 1 or min_time_s < 0:
        raise ValueError(
            f"need warmup >= 0, min_iters >= 1, min_time_s >= 0; got {warmup}, "
            f"{min_iters}, {min_time_s}"
        )
    cap = math.inf if max_time_s is None else max_time_s
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
        _sync(dev)
        if time.perf_counter() - t0 > cap:
            break
    cuda = dev.type == "cuda"
    if cuda:
        # Events on the model device's stream: a bare record() uses the *current* device's
        # stream, which for cuda:N (N != current) times an idle stream and never waits.
        stream = torch.cuda.current_stream(dev)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times: list[float] = []
    capped = False
    t_begin = time.perf_counter()
    while True:
        if cuda:
            start.record(stream)
            step()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            ts = time.perf_counter()
            step()
            times.append(time.perf_counter() - ts)
        elapsed = time.perf_counter() - t_begin
        if len(times) >= min_iters and elapsed >= min_time_s:
            break
        if elapsed >= cap and len(times) >= min(MIN_CAPPED_ITERS, min_iters):
            capped = len(times) < min_iters
            break
    return times, capped
