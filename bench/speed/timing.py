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

    def as_row(
        self,
        batch_size: int,
        *,
        capped: bool = False,
        max_time_s: float | None = None,
        min_iters: int | None = None,
    ) -> dict[str, Any]:
        """The timing columns of a result row (the one row builder of every timed runtime).

        ``throughput_img_s`` = batch size / median step time; ``noisy`` also when
        ``capped`` (:func:`time_step` hit ``max_time_s`` before ``min_iters``), and then
        ``reason`` says so (else it is empty).
        """
        return {
            "median_ms": self.median_ms,
            "iqr_ms": self.iqr_ms,
            "p90_ms": self.p90_ms,
            "mean_ms": self.mean_ms,
            "count": self.count,
            "noisy": self.noisy or capped,
            "throughput_img_s": (
                batch_size / (self.median_ms / 1e3) if self.median_ms > 0 else math.nan
            ),
            "reason": (
                f"max time {max_time_s:g} s reached after {self.count} of {min_iters} iterations"
                if capped
                else ""
            ),
        }


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
    warmup_time_s: float = 0.0,
    before_timing: Callable[[], Any] | None = None,
) -> tuple[list[float], bool]:
    """Warm up, then time ``step``; returns (seconds per iteration, capped).

    Warm-up runs until both ``warmup`` calls and ``warmup_time_s`` seconds are done (a
    GPU's clocks take a while to rise from idle, longer than a few fast iterations) and
    also stops at ``max_time_s`` (after one call). ``before_timing`` runs between warm-up
    and the first timed call (e.g. resetting the peak-memory counters). Timed iterations
    continue until both ``min_time_s`` and ``min_iters`` are reached; ``capped`` is True
    when ``max_time_s`` stopped the loop earlier (after at least ``MIN_CAPPED_ITERS``
    iterations).
    """
    dev = torch.device(device)
    if warmup < 0 or min_iters < 1 or min_time_s < 0 or warmup_time_s < 0:
        raise ValueError(
            f"need warmup >= 0, min_iters >= 1, min_time_s >= 0, warmup_time_s >= 0; got "
            f"{warmup}, {min_iters}, {min_time_s}, {warmup_time_s}"
        )
    cap = math.inf if max_time_s is None else max_time_s
    t0 = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - t0 < warmup_time_s:
        step()
        _sync(dev)
        done += 1
        if time.perf_counter() - t0 > cap:
            break
    if before_timing is not None:
        before_timing()
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


def back_to_back(step: Callable[[], Any], device: str | torch.device, iters: int) -> float:
    """Seconds per call of ``iters`` calls issued back to back, synchronised once at each end.

    On a GPU the per-iteration timing of :func:`time_step` waits for every step (a
    caller's latency, launch gaps included); a training or batch-inference loop keeps the
    queue full instead, so throughput comes from this run. On a CPU every call is
    synchronous and both agree.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    dev = torch.device(device)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(dev)
    return (time.perf_counter() - t0) / iters


def timed_row(
    step: Callable[[], Any],
    batch_size: int,
    timing: dict[str, Any],
    noisy_threshold: float = 0.1,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Time ``step`` (at least one warm-up call) and return its :meth:`TimingStats.as_row`.

    ``timing`` holds ``warmup``, ``min_time_s``, ``min_iters``, ``max_time_s`` and
    optionally ``warmup_time_s`` (the keys of ``segbench speed``'s run settings).
    """
    times, capped = time_step(
        step,
        device,
        warmup=max(1, int(timing["warmup"])),
        warmup_time_s=float(timing.get("warmup_time_s") or 0.0),
        min_time_s=timing["min_time_s"],
        min_iters=timing["min_iters"],
        max_time_s=timing["max_time_s"],
    )
    return summarize(times, noisy_threshold).as_row(
        batch_size, capped=capped, max_time_s=timing["max_time_s"], min_iters=timing["min_iters"]
    )
