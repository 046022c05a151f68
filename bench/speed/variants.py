"""Which variants (dtype, compile) can run on a device, out-of-memory detection and the batch-size sweep that backs off on out-of-memory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bench.core.device import cpu_bf16_native
from bench.core.precision import DTYPES, amp_problem
from bench.speed.memory import _free_memory

MODES = ("inference", "train")


def compile_problem(device: str | torch.device) -> str | None:
    """Why ``torch.compile`` (inductor) cannot work on ``device`` here, or None."""
    dev = torch.device(device)
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return "torch.compile is not supported on this Python/platform"
    except Exception as err:  # an import failure is itself the reason
        return f"torch._dynamo unavailable: {err}"
    if dev.type == "cpu":
        cxx = os.environ.get("CXX")
        if not any(shutil.which(c) for c in ([cxx] if cxx else []) + ["g++", "c++", "clang++"]):
            return "inductor needs a C++ compiler on CPU and none was found (set CXX)"
    elif dev.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor needs triton on CUDA and it is not installed or usable"
    else:
        return f"inductor is not set up for device type {dev.type!r} here"
    return None


def variant_skip_reason(device: str | torch.device, dtype: str, compile: bool) -> str | None:
    """Reason to skip a (device, dtype, compile) variant, or None when it can run.

    Whether the dtype can autocast on the device is :func:`bench.core.precision.amp_problem`
    (the rule training uses too); only the CPU-fp16 wording is speed's own, because here
    the variant would time emulation rather than train in it.
    """
    dev = torch.device(device)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    problem = amp_problem(dev, dtype)
    if problem is not None and dev.type == "cpu":
        return (
            f"{dtype} autocast is not offered on CPU: without native {dtype} arithmetic it "
            "times emulation; use bf16"
        )
    if problem is not None:
        return problem
    if compile:
        return compile_problem(dev)
    return None


def _dtype_note(device: torch.device, dtype: str) -> str:
    if device.type == "cpu" and dtype == "bf16":
        return f"bf16 autocast on CPU (native bf16 instructions: {'yes' if cpu_bf16_native() else 'no'})"
    return ""


#: out-of-memory as cuDNN / cuBLAS report it (a workspace or handle allocation failed):
#: the batch is too large, as with ``torch.OutOfMemoryError``
_OOM_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
)

#: a CUDA error that leaves the process's CUDA context unusable (illegal memory access,
#: device-side assert, a failed kernel): every later call in that process fails too
_CUDA_ERROR_MARKERS = (
    "cuda error",
    "cudaerror",
    "device-side assert",
    "illegal memory access",
    "cublas_status_",
    "cudnn_status_",
    "cudnn error",
    "cuda driver error",
    "unspecified launch failure",
)


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and any(m in msg for m in _OOM_MARKERS)


def _is_cuda_error(err: BaseException) -> bool:
    """A non-OOM CUDA error: the process that raised it must be replaced."""
    if _is_oom(err):
        return False
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(err, accel):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and any(m in msg for m in _CUDA_ERROR_MARKERS)


class MeasurementError(RuntimeError):
    """A measurement failed in the worker process; the message names the original error."""


class WorkerCrashed(MeasurementError):
    """The worker process died (e.g. a segfault inside a torch kernel)."""


def _short(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(err, MeasurementError):  # already "Type: message" from the worker
        return first[:limit]
    return f"{type(err).__name__}: {first}"[:limit]


def sweep_batch_sizes(
    batch_sizes: Sequence[int],
    measure: Callable[[int], dict[str, Any]],
    *,
    free: Callable[[], None] = _free_memory,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Call ``measure(b)`` per requested batch size, halving ``b`` on out-of-memory.

    Once a size has run out of memory, larger requests start below it (memory grows
    with the batch). A size already measured in this sweep is reused, not re-run.
    Each returned row has ``batch_size`` (measured), ``requested_batch_size``,
    ``status`` and ``reason``; a row whose batch 1 still runs out of memory, or whose
    ``measure`` raised anything else, has ``status="error"``.
    """
    rows: list[dict[str, Any]] = []
    measured: dict[int, dict[str, Any]] = {}
    smallest_oom: int | None = None
    for req in batch_sizes:
        cur, failed, row = req, [], None
        while cur >= 1:
            if smallest_oom is not None and cur >= smallest_oom:
                failed.append(f"{cur} (inferred)" if cur != smallest_oom else str(cur))
                cur //= 2
                continue
            if cur in measured:
                row = dict(measured[cur])
                break
            oom = False
            try:
                row = {**measure(cur), "status": "ok"}
                measured[cur] = row
            except Exception as err:
                if not _is_oom(err):
                    row = {"status": "error", "reason": _short(err)}
                else:
                    oom = True
            if oom:  # outside the except block so the traceback's tensors can be freed
                free()
                smallest_oom = cur if smallest_oom is None else min(smallest_oom, cur)
                failed.append(str(cur))
                cur //= 2
                continue
            break
        if row is None:
            row = {"status": "error", "reason": f"out of memory at batch sizes {', '.join(failed)}"}
            cur = req
        elif failed:
            note = f"out of memory at batch sizes {', '.join(failed)}; backed off to {cur}"
            row["reason"] = "; ".join(r for r in (note, row.get("reason", "")) if r)
        row = {**row, "batch_size": cur, "requested_batch_size": req}
        rows.append(row)
        if on_done is not None:
            on_done(row)
    return rows
