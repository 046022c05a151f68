"""Mixed precision: the precision a run really uses, with a crash probe for CPU bf16."""

from __future__ import annotations

import subprocess
import sys

import torch

from bench.core.device import cpu_bf16_native
from bench.core.precision import amp_problem, effective_channels_last
from bench.engine.config import TrainConfig

_BF16_PROBE = """
import sys, torch
from models import create_model
from bench.core.precision import autocast_context, memory_format
name, batch, size, cl = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
torch.manual_seed(0)
model = create_model(name).train()
fmt = memory_format(cl)
model = model.to(memory_format=fmt)
x = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)
for _ in range(2):
    with autocast_context("cpu", "bf16"):
        out = model(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    loss = out.float().square().mean()
    loss.backward()
    assert torch.isfinite(loss).item(), "non-finite loss"
"""


def _effective_amp(cfg: TrainConfig, device: str) -> tuple[str | None, str | None]:
    """The precision a run really uses, and why it differs from ``cfg.amp`` (or None).

    Which precisions a device takes is :func:`bench.core.precision.amp_problem`'s rule
    (CUDA: fp16, and bf16 where the GPU has it natively; CPU: bf16); anything else trains
    in fp32, said so. A CPU takes bf16 (torch CPU autocast) when a training step
    survives it: CPU bf16 backward kernels have crashed the process (a segfault in a dilated
    depthwise convolution with channels_last was seen), which no ``try`` can catch, so the
    step is probed once in a child process and a crash falls back to fp32, said so in the
    run's manifest. A CPU without native bf16 still trains in bf16 (emulated, slower than
    fp32), with a note saying so.
    """
    if not cfg.amp:
        return None, None
    problem = amp_problem(device, cfg.amp)  # e.g. fp16 on a CPU, bf16 on a pre-Ampere GPU
    if problem:
        return None, f"{problem}; training in fp32"
    if torch.device(device).type != "cpu":
        return cfg.amp, None
    cl = effective_channels_last(cfg.channels_last, device)
    cmd = [
        sys.executable,
        "-c",
        _BF16_PROBE,
        cfg.model,
        str(min(cfg.batch_size, 4)),
        str(cfg.image_size),
        "1" if cl else "0",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return None, "bf16 probe step timed out; training in fp32"
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        if proc.returncode < 0:
            tail = f"killed by signal {-proc.returncode} ({tail})"
        return None, f"a CPU bf16 training step failed ({tail}); training in fp32"
    if not cpu_bf16_native():  # still bf16 arithmetic, so the precision stays bf16
        return "bf16", (
            "this CPU has no native bf16 (neither AVX512-BF16 nor AMX): torch emulates it, "
            "so bf16 training runs slower than fp32 here"
        )
    return "bf16", None
