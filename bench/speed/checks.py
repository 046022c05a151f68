"""Cross-check of the timer against ``torch.utils.benchmark.Timer``."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from bench.core.device import resolve_device
from bench.core.measure import pinned_threads
from bench.speed import steps
from bench.speed.steps import make_step
from bench.speed.timing import summarize, time_step


def check_against_torch_timer(
    model: str | nn.Module,
    *,
    device: str = "cpu",
    threads: int = 1,
    batch_size: int = 1,
    input_size: int = 256,
    min_time_s: float = 2.0,
    warmup: int = 3,
    tolerance: float = 0.10,
) -> dict[str, Any]:
    """Compare this module's median inference time with ``torch.utils.benchmark.Timer``.

    Same model, input, thread count and step; returns both medians, their relative
    difference and whether it is within ``tolerance``.
    """
    from torch.utils.benchmark import Timer

    dev = resolve_device(device)
    net = steps._build_model(model) if isinstance(model, str) else model
    with pinned_threads(threads) as n:
        step = make_step(net, "inference", dev, batch_size=batch_size, input_size=input_size)
        times, _ = time_step(step, dev, warmup=warmup, min_time_s=min_time_s, min_iters=10)
        ours = summarize(times).median_ms
        timer = Timer(stmt="step()", globals={"step": step}, num_threads=n)
        theirs = timer.blocked_autorange(min_run_time=min_time_s).median * 1e3
    rel = abs(ours - theirs) / theirs
    return {
        "model": model if isinstance(model, str) else type(model).__name__,
        "device": dev.type,
        "threads": n,
        "batch_size": batch_size,
        "input_size": input_size,
        "ours_ms": ours,
        "torch_timer_ms": theirs,
        "rel_diff": rel,
        "tolerance": tolerance,
        "ok": rel <= tolerance,
    }
