"""Precision and layout: dtype names, which autocast a device offers, and a run's effective
amp / channels_last / deterministic settings.

Training (:mod:`bench.engine.trainer`), scoring (:mod:`bench.engine.run_eval`), the speed
benchmark (:mod:`bench.speed`) and the roofline (:mod:`bench.cost.roofline`) all ask this
module, so a rule (fp16 is not autocast on a CPU; channels_last by default on the CPU only)
is written once and a model is scored with the settings it was trained with.

Importing it does not import torch (seconds): the names are read by torch-free modules
(:mod:`bench.engine.config`, which the report and sweep definitions import), so torch is
imported inside the functions.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "AUTOCAST_DTYPES",
    "DTYPES",
    "amp_problem",
    "autocast_context",
    "autocast_dtype",
    "can_autocast",
    "deterministic_mode",
    "effective_channels_last",
    "memory_format",
    "torch_dtype",
]

#: precision names, as every command, config and result file spells them
DTYPES = ("fp32", "bf16", "fp16")
#: the precisions run under ``torch.autocast`` (fp32 is no autocast at all)
AUTOCAST_DTYPES = ("bf16", "fp16")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a precision name (``ValueError`` for a name outside
    :data:`DTYPES`)."""
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return dtypes[name]


def autocast_dtype(precision: str | None) -> str | None:
    """The autocast dtype of a precision name: None for fp32 (or None), else the name.

    Raises ``ValueError`` for a name outside :data:`DTYPES`.
    """
    if precision is None or precision == "fp32":
        return None
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    return precision


def can_autocast(device: str | torch.device, dtype: str) -> bool:
    """Whether segbench autocasts ``dtype`` on ``device``: bf16 and fp16 on CUDA, bf16 on
    a CPU (torch's CPU fp16 autocast has no native fp16 arithmetic behind it), nothing on
    any other device type."""
    import torch

    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and dtype == "bf16")


def amp_problem(device: str | torch.device, dtype: str) -> str | None:
    """Why ``dtype`` autocast is not used on ``device`` (training then runs in fp32, the
    speed benchmark skips the variant), or None when it is (fp32 always is).

    Beyond :func:`can_autocast`: bf16 on a GPU without native bf16 (compute capability
    < 8.0), where ``torch.cuda.is_bf16_supported()`` says yes but emulates it through
    fp32, slower than fp32 and saying nothing about bf16 hardware. A CPU without native
    bf16 is not refused here (its callers add a note: it still computes in bf16).
    """
    import torch

    from bench.core.device import cuda_bf16_native

    if autocast_dtype(dtype) is None:
        return None
    dev = torch.device(device)
    if not can_autocast(dev, dtype):
        if dev.type == "cpu":
            return (
                f"{dtype} autocast is not offered on CPU: without native {dtype} arithmetic "
                "it would be emulated; use bf16"
            )
        return f"{dtype} autocast is not offered on {dev.type}"
    if dev.type == "cuda" and dtype == "bf16" and not cuda_bf16_native(dev):
        return "this GPU has no native bf16 (needs compute capability >= 8.0)"
    return None


def autocast_context(
    device: str | torch.device, amp: str | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``amp`` on ``device`` where :func:`can_autocast` allows it;
    a no-op otherwise (and for ``amp`` None or fp32)."""
    import torch

    dtype = autocast_dtype(amp)
    if dtype is None or not can_autocast(device, dtype):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch_dtype(dtype))


def effective_channels_last(requested: bool | None, device: str | torch.device) -> bool:
    """Whether a run keeps model and activations in channels_last: ``requested``, or by
    default on the CPU only (MALUNet trains ~1.4x faster there: depthwise convolutions
    and max-pooling are much slower in NCHW; never measured on a GPU, so off there).

    Scoring asks the same rule: fp32 sums in another memory format can move a pixel
    across the threshold, so a model is scored in the layout it was tested in.
    """
    import torch

    if requested is not None:
        return bool(requested)
    return torch.device(device).type == "cpu"


def memory_format(channels_last: bool) -> torch.memory_format:
    """The torch memory format of the channels_last setting."""
    import torch

    return torch.channels_last if channels_last else torch.contiguous_format


def deterministic_mode(requested: bool | None, device: str | torch.device) -> bool:
    """Whether a run uses deterministic algorithms: ``requested``, or by default on CPU
    only. On CUDA the default is off: deterministic mode disables cuDNN autotuning
    (slower) and still does not make a run bit-reproducible there (bilinear
    ``interpolate`` and ``AdaptiveAvgPool2d`` have no deterministic CUDA backward;
    ``warn_only`` lets them run)."""
    import torch

    if requested is not None:
        return bool(requested)
    return torch.device(device).type != "cuda"
