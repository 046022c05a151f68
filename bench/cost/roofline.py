"""Roofline model for the speed benchmark: device peaks, traffic estimate, attainable bound.

A network with few FLOPs can still be slow when it moves many bytes per FLOP
(MALUNet's many thin feature maps): the roofline bound
``min(peak_flops, intensity * bandwidth)`` with ``intensity = FLOPs / bytes``
shows whether compute or memory traffic limits a model, and
``achieved / bound`` how close a run comes.

Peak compute and bandwidth come from, in order:

1. an explicit override (``--peak TFLOPS,GBPS``);
2. on a CPU, the machine's measured peak (:mod:`bench.cost.peak`): the best fp32 GEMM over
   every available library (torch, numpy, onnxruntime, OpenVINO) and the best large copy,
   so a runtime that beats torch's matmul is not "above 100 % of the roofline" (with
   measuring turned off, the table below);
3. :data:`KNOWN_DEVICES`, a small table of *dense* (no sparsity) datasheet figures
   (NVIDIA H100/H200/GH200/A100/L40S/L4/V100/T4 datasheets, the Ada whitepaper for the
   RTX 4090; each row names its source; CPU entries are derived as
   base clock x FP32 FLOP/cycle x threads and channels x DDR transfer rate x 8 B,
   ignoring turbo and AVX frequency offsets, so treat them as rough);
4. on CUDA, a quick torch micro-measurement: best-of-N rate of a large matmul
   (FLOP/s) and a large tensor copy (GB/s, read + write counted).

Traffic estimate (bytes moved per step, documented approximation): a forward
pass reads and writes every activation once and reads the parameters once,
``2 * activation_bytes * batch + param_bytes``. ``activation_bytes`` is the
fp32 figure from :func:`bench.cost.flops.analyze`; under bf16/fp16 autocast it
is scaled by 2/4. A training step is counted as 3x the forward FLOPs (backward
~ 2x forward), 3x the forward activation traffic, and 10x the parameter bytes
(forward read, backward weight read + gradient write, AdamW reading parameter,
gradient and two moments and writing parameter and two moments).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.core.measure import best_seconds
from bench.core.precision import DTYPES, torch_dtype
from bench.cost.peak import Peak

__all__ = [
    "KNOWN_DEVICES",
    "Peak",
    "RooflinePoint",
    "measure_peak",
    "parse_peak",
    "resolve_peak",
    "roofline",
    "step_bytes",
    "step_flops",
    "table_peak",
]

#: (regex on the device name, label, TFLOPS per dtype, GB/s, compute is per CPU thread, source)
#: GPU "fp32" is the CUDA-core rate, "tf32" the dense tensor-core rate that cuDNN
#: convolutions use when TF32 is allowed (the speed benchmark turns it off).
#: Patterns are searched in order, case-insensitively, against
#: ``torch.cuda.get_device_name()``: specific rows (NVL, PCIe, 80GB, HBM3e) come before
#: the generic row of their family, and model numbers are word-bounded so "A100" does
#: not match "RTX A1000" nor "L4" "L40S". Tensor-core figures are the datasheets'
#: dense ones (their "with sparsity" figures halved).
# fmt: off
KNOWN_DEVICES: list[tuple[str, str, dict[str, float], float, bool, str]] = [
    # NVIDIA H200 Tensor Core GPU datasheet (H200 SXM and H200 NVL columns)
    (r"\bH200\b.*\bNVL\b", "NVIDIA H200 NVL",
     {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}, 4800.0, False,
     "NVIDIA H200 datasheet, H200 NVL, dense"),
    (r"\bH200\b", "NVIDIA H200 SXM",
     {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, 4800.0, False,
     "NVIDIA H200 datasheet, H200 SXM, dense"),
    # NVIDIA GH200 Grace Hopper Superchip datasheet: 96 GB HBM3 at 4 TB/s ("GH200 480GB",
    # named after its LPDDR5X) or 144 GB HBM3e at 4.9 TB/s; Hopper GPU compute as H100 SXM
    (r"\bGH200\b.*(?:HBM3e|\b144G)", "NVIDIA GH200 (144 GB HBM3e)",
     {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, 4900.0, False,
     "NVIDIA GH200 datasheet, HBM3e, dense"),
    (r"\bGH200\b", "NVIDIA GH200 (96 GB HBM3)",
     {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, 4000.0, False,
     "NVIDIA GH200 datasheet, HBM3, dense"),
    # NVIDIA H100 Tensor Core GPU datasheet (H100 SXM, H100 NVL, H100 PCIe columns)
    (r"\bH100\b.*\bNVL\b", "NVIDIA H100 NVL",
     {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}, 3900.0, False,
     "NVIDIA H100 datasheet, H100 NVL, dense"),
    (r"\bH100\b.*\bPCIe\b", "NVIDIA H100 PCIe",
     {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5}, 2000.0, False,
     "NVIDIA H100 datasheet, H100 PCIe, dense"),
    (r"\bH100\b", "NVIDIA H100 SXM",
     {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, 3350.0, False,
     "NVIDIA H100 datasheet, H100 SXM, dense"),
    # NVIDIA A100 Tensor Core GPU datasheet: 80GB PCIe 1,935 GB/s, 80GB SXM 2,039 GB/s,
    # 40GB (PCIe and SXM) 1,555 GB/s; compute identical
    (r"\bA100\b.*\b80GB\b.*\bPCIe\b|\bA100\b.*\bPCIe\b.*\b80GB\b", "NVIDIA A100 80GB PCIe",
     {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 1935.0, False,
     "NVIDIA A100 datasheet, A100 80GB PCIe, dense"),
    (r"\bA100\b.*\b80GB\b", "NVIDIA A100 80GB SXM",
     {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 2039.0, False,
     "NVIDIA A100 datasheet, A100 80GB SXM, dense"),
    (r"\bA100\b", "NVIDIA A100 40GB",
     {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 1555.0, False,
     "NVIDIA A100 datasheet, A100 40GB, dense"),
    # NVIDIA L40S datasheet
    (r"\bL40S\b", "NVIDIA L40S",
     {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05}, 864.0, False,
     "NVIDIA L40S datasheet, dense"),
    # NVIDIA L4 Tensor Core GPU datasheet
    (r"\bL4\b", "NVIDIA L4",
     {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}, 300.0, False,
     "NVIDIA L4 datasheet, dense"),
    # NVIDIA Ada GPU architecture whitepaper, GeForce RTX 4090 (tensor rates with FP32
    # accumulate, as autocast uses)
    (r"\bRTX 4090\b(?! D\b)(?!.*\bLaptop\b)", "NVIDIA GeForce RTX 4090",
     {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2}, 1008.0, False,
     "NVIDIA Ada architecture whitepaper, RTX 4090, dense, FP32 accumulate"),
    # NVIDIA V100S / V100 Tensor Core GPU datasheets (no bf16; fp16 = tensor cores)
    (r"\bV100S\b", "NVIDIA V100S PCIe",
     {"fp32": 16.4, "fp16": 130.0}, 1134.0, False, "NVIDIA V100S datasheet"),
    (r"\bV100\b.*\bPCIe\b", "NVIDIA V100 PCIe",
     {"fp32": 14.0, "fp16": 112.0}, 900.0, False, "NVIDIA V100 datasheet, PCIe"),
    (r"\bV100\b", "NVIDIA V100 SXM2",
     {"fp32": 15.7, "fp16": 125.0}, 900.0, False, "NVIDIA V100 datasheet, SXM2"),
    # NVIDIA T4 Tensor Core GPU datasheet
    (r"\bT4\b", "NVIDIA T4",
     {"fp32": 8.1, "fp16": 65.0}, 320.0, False, "NVIDIA T4 datasheet"),
    (r"Xeon.*8375C", "Intel Xeon Platinum 8375C (Ice Lake)",
     {"fp32": 0.1856}, 204.8, True,
     "derived: 2.9 GHz base x 64 FP32 FLOP/cycle (2 AVX-512 FMA) per thread; 8 x DDR4-3200"),
    (r"Xeon.*8488C", "Intel Xeon Platinum 8488C (Sapphire Rapids)",
     {"fp32": 0.1536}, 307.2, True,
     "derived: 2.4 GHz base x 64 FP32 FLOP/cycle per thread; 8 x DDR5-4800"),
    (r"EPYC 7R13", "AMD EPYC 7R13 (Zen 3)",
     {"fp32": 0.0848}, 204.8, True,
     "derived: 2.65 GHz base x 32 FP32 FLOP/cycle (2 AVX2 FMA) per thread; 8 x DDR4-3200"),
    (r"EPYC 9R14", "AMD EPYC 9R14 (Zen 4)",
     {"fp32": 0.0832, "bf16": 0.1664}, 460.8, True,
     "derived: 2.6 GHz base x 32 FP32 FLOP/cycle per thread (x2 for AVX512-BF16); 12 x DDR5-4800"),
]
# fmt: on


@dataclass(frozen=True)
class RooflinePoint:
    """Where one workload sits under a roofline."""

    intensity: float  # FLOP per byte moved
    bound_flops: float  # attainable FLOP/s = min(peak, intensity * bandwidth)
    limiter: str  # "compute" or "memory"
    fraction: float  # achieved / bound (NaN when achieved is unknown)


def parse_peak(text: str) -> Peak:
    """Parse ``--peak TFLOPS,GBPS`` (e.g. ``"989,3350"``)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        tflops, gbps = float(parts[0]), float(parts[1])
        return Peak(tflops, gbps, f"override --peak {tflops:g},{gbps:g}")
    except ValueError:
        raise ValueError(
            f"--peak must be 'TFLOPS,GBPS' with two positive numbers "
            f"(e.g. '989,3350'), got {text!r}"
        ) from None


def table_peak(
    device_name: str, dtype: str = "fp32", *, threads: int = 1, tf32: bool = True
) -> Peak | None:
    """Look a device up in :data:`KNOWN_DEVICES`; None when unknown or the dtype is missing."""
    for pattern, label, rates, gbps, per_thread, source in KNOWN_DEVICES:
        if not re.search(pattern, device_name, flags=re.I):
            continue
        key = "tf32" if dtype == "fp32" and tf32 and "tf32" in rates else dtype
        if key not in rates:
            return None
        tflops = rates[key] * (max(1, threads) if per_thread else 1)
        note = f", x{threads} threads" if per_thread else ""
        return Peak(tflops, gbps, f"table: {label} {key} ({source}{note})")
    return None


_MEASURED: dict[tuple[Any, ...], Peak] = {}


def _device_sync(device: torch.device) -> Callable[[], None] | None:
    """The synchronize call that keeps queued GPU work inside a timed interval (CPU: none)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def _time_matmul(n: int, dtype: torch.dtype, device: torch.device, reps: int) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return best_seconds(lambda: torch.mm(a, b), reps, sync=_device_sync(device))


def _time_copy(numel: int, device: torch.device, reps: int) -> float:
    src = torch.ones(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return best_seconds(lambda: dst.copy_(src), reps, sync=_device_sync(device))


def measure_peak(
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
    *,
    reps: int = 5,
    matmul_n: int | None = None,
    copy_numel: int | None = None,
    tf32: bool | None = None,
) -> Peak:
    """Micro-measure attainable FLOP/s (square matmul) and GB/s (tensor copy) on ``device``.

    Uses the current ``torch.get_num_threads()`` on CPU; cached per (device, dtype, threads,
    sizes). Sizes default to 2048^2 matmul / 128 MiB copy on CPU, 8192^2 / 1 GiB on CUDA.
    The best of ``reps`` runs is kept, as a peak is an upper bound. ``tf32`` (CUDA fp32):
    whether the matmul may use TF32 tensor cores (None: as cuDNN convolutions may now).
    """
    dev = torch.device(device)
    if tf32 is None:
        tf32 = bool(torch.backends.cudnn.allow_tf32)
    key = (str(dev), dtype, torch.get_num_threads(), matmul_n, copy_numel, tf32)
    if key in _MEASURED:
        return _MEASURED[key]
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    cuda = dev.type == "cuda"
    n = matmul_n or (8192 if cuda else 2048)
    numel = copy_numel or ((1 << 28) if cuda else (1 << 25))
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    if cuda:  # the matmul uses the units the measured convolutions may use
        torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        t_mm = _time_matmul(n, torch_dtype(dtype), dev, reps)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    t_cp = _time_copy(numel, dev, reps)
    if cuda:  # hand the cached blocks back before the models run
        torch.cuda.empty_cache()
    nbytes = 2 * numel * 4  # read + write of fp32
    peak = Peak(
        2 * n**3 / t_mm / 1e12,
        nbytes / t_cp / 1e9,
        f"measured: {n}x{n} {dtype}{' (TF32)' if cuda and tf32 and dtype == 'fp32' else ''} "
        f"matmul, {numel * 4 / 2**20:g} MiB copy, best of {reps}"
        + ("" if cuda else f", {torch.get_num_threads()} threads"),
    )
    _MEASURED[key] = peak
    return peak


def resolve_peak(
    device: str | torch.device,
    dtype: str,
    *,
    override: Peak | None = None,
    measure: bool = True,
    tf32: bool | None = None,
) -> Peak | None:
    """The roofline peak of ``device`` for ``dtype`` (order: see the module docstring).

    Override; on CPU (``measure`` on) the machine peak over every library, measured once per
    process at the current thread count; else the table entry; else (CUDA) a torch
    micro-measurement; None when nothing applies and ``measure`` is off.

    ``tf32``: whether the fp32 work ran with TF32 allowed on CUDA (the tensor-core peak
    then applies); None reads cuDNN's current switch.
    """
    if override is not None:
        return override
    from bench.core.env import device_name

    dev = torch.device(device)
    if dev.type == "cpu" and measure and dtype in ("fp32", "bf16"):
        from bench.cost.peak import cached_machine_peak

        return cached_machine_peak(dtype, threads=torch.get_num_threads()).peak
    if tf32 is None:
        tf32 = bool(torch.backends.cudnn.allow_tf32)
    tf32 = dev.type == "cuda" and tf32
    found = table_peak(device_name(dev), dtype, threads=torch.get_num_threads(), tf32=tf32)
    if found is not None or not measure:
        return found
    return measure_peak(dev, dtype, tf32=tf32)


def step_flops(macs_per_image: float, batch_size: int, mode: str) -> float:
    """FLOPs of one step: 2 per MAC; a training step counts as 3x the forward pass."""
    if mode not in ("inference", "train"):
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")
    fwd = 2.0 * macs_per_image * batch_size
    return fwd if mode == "inference" else 3.0 * fwd


def step_bytes(
    activation_bytes_per_image: float,
    param_bytes: float,
    batch_size: int,
    mode: str,
    activation_scale: float = 1.0,
) -> float:
    """Estimated DRAM traffic of one step (see the module docstring for the model)."""
    if mode not in ("inference", "train"):
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")
    act = 2.0 * activation_bytes_per_image * activation_scale * batch_size
    return act + param_bytes if mode == "inference" else 3.0 * act + 10.0 * param_bytes


def roofline(
    flops: float, bytes_moved: float, peak: Peak, achieved_flops: float = math.nan
) -> RooflinePoint:
    """Attainable FLOP/s ``min(peak_flops, intensity * bandwidth)`` and the fraction reached."""
    if flops <= 0 or bytes_moved <= 0:
        raise ValueError(f"flops and bytes must be positive, got {flops}, {bytes_moved}")
    intensity = flops / bytes_moved
    peak_flops, mem_flops = peak.tflops * 1e12, intensity * peak.gbps * 1e9
    bound = min(peak_flops, mem_flops)
    limiter = "memory" if mem_flops < peak_flops else "compute"
    return RooflinePoint(intensity, bound, limiter, achieved_flops / bound)
