"""Devices: the one resolver of ``--device`` / ``device=`` values, and native bf16.

Every command and library entry point that takes a device goes through
:func:`resolve_device`, so ``auto``, unknown names and a missing GPU give the same
answer and the same error everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["DEVICE_TYPES", "cpu_bf16_native", "cuda_bf16_native", "resolve_device"]

#: Device types segbench runs on unless a caller allows more (``meta`` for counting).
DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(
    device: str | torch.device | None = "auto",
    *,
    allow: Sequence[str] | None = DEVICE_TYPES,
    arg: str = "--device",
) -> torch.device:
    """``auto`` (or None / ``""``) -> ``cuda`` when a GPU is visible, else ``cpu``.

    An explicit name (``cpu``, ``cuda``, ``cuda:1``) is checked: it must parse, its type
    must be in ``allow`` (None allows any torch device type) and CUDA must be available
    when asked for. Errors are ``ValueError`` naming ``arg``.
    """
    if device is None or str(device) in ("auto", ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = ", ".join([*(allow or ()), "auto"]) if allow else "cpu, cuda, cuda:N or auto"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{arg}: {device!r} is not a device name (expected {allowed})") from err
    if allow is not None and dev.type not in allow:
        raise ValueError(f"{arg}: expected {allowed}, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{arg} {device}: CUDA is not available on this machine")
    return dev


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, as torch sees them).

    Without either, torch emulates bf16 through fp32 and bf16 autocast runs slower than
    fp32 (seen here on an AVX2-only AMD EPYC: a MALUNet training epoch 2-4x slower).
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, c, lambda: False)()) for c in checks)


def cuda_bf16_native(device: str | torch.device | None = None) -> bool:
    """Whether the GPU computes bf16 natively (compute capability >= 8.0).

    ``torch.cuda.is_bf16_supported()`` also says yes for emulated bf16 (older GPUs
    convert to fp32 and back), which is slower than fp32; training and the speed
    benchmark both ask this function instead.
    """
    if device is not None and torch.device(device).index is not None:
        with torch.cuda.device(torch.device(device)):
            return cuda_bf16_native()
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older signature without the emulation switch
        return bool(torch.cuda.is_bf16_supported())
