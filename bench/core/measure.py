"""What every measurement pins, and the one best-of-N timer.

Three measuring paths (the speed rows, the machine peak, the runtime sessions) pin torch's
intra-op thread count the same way and restore it afterwards; the peak's micro-benchmarks
take the best of N timed calls. Both live here, below every package that measures, so
``cost``, ``deploy`` and ``speed`` share one definition instead of three.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["best_seconds", "pinned_threads", "thread_count"]


def thread_count(threads: int | None) -> int:
    """``threads`` checked (>= 1), or torch's current intra-op thread count when None.

    A runtime session gets the same cores as eager PyTorch unless told otherwise.
    """
    if threads is None:
        return torch.get_num_threads()
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(threads)


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[int]:
    """Set torch's intra-op thread count to ``threads`` (None: keep the current one) and
    restore it on exit; yields the count in effect."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(thread_count(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def best_seconds(fn: Callable[[], Any], reps: int, sync: Callable[[], Any] | None = None) -> float:
    """The fastest of ``reps`` timed calls of ``fn`` after one untimed warm-up call.

    A peak is an upper bound, so the best call (not the median) is the figure. ``sync``
    runs before and after each timed call (e.g. ``torch.cuda.synchronize``), so queued
    device work is inside the interval.
    """
    fn()  # warm-up: allocation, kernel / plan selection
    best = math.inf
    for _ in range(reps):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best
