"""Latency, throughput and memory of each model: ``segbench speed``.

Method (one *configuration* = model x mode x dtype x layout x compile x batch size):

* **inference**: ``model.eval()`` under ``torch.inference_mode()``; **train**: one full
  step, forward + loss + backward + ``AdamW.step()``. Models with deep supervision
  (``model_info(name).has_aux``) run ``forward_aux`` and every auxiliary head enters
  the loss with its ``loss_weights``, so the side outputs' cost is included.
* ``warmup`` untimed iterations (capped at ``max_time_s``, at least one; also where
  ``torch.compile`` compiles), then timed iterations until both ``min_time_s`` and
  ``min_iters`` are reached. ``max_time_s`` caps a very slow configuration after at
  least 3 timed iterations; the row says so and is flagged ``noisy``.
* CPU: each iteration is timed with ``time.perf_counter``; the thread count is fixed
  with ``torch.set_num_threads`` (given, or the current one), recorded in every row and
  restored afterwards. CUDA: each iteration sits between two CUDA events and is
  synchronised, so a row is the latency a caller waits for (launch overhead included);
  ``torch.backends.cudnn.benchmark`` is on while measuring (restored afterwards), the
  warm-up covers its autotuning.
* Statistics per configuration (:func:`summarize`): median, IQR, p90, mean, count, and
  ``noisy`` when IQR/median exceeds ``noisy_threshold`` (default 0.1).
* Throughput = batch size / median step time. Latency = the batch-1 row.
* Out of memory (``torch.OutOfMemoryError`` or the CPU allocator's failure) halves the
  batch size until it fits (:func:`sweep_batch_sizes`); the row keeps
  ``requested_batch_size`` and says which sizes failed.
* Memory: ``peak_mem_mb`` is ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats`` (parameters, gradients, optimizer state and activations;
  CUDA only). ``rss_mb`` is the process's peak resident set size during the
  configuration: on Linux the kernel high-water mark (VmHWM) after resetting it through
  ``/proc/self/clear_refs``, so short spikes are caught; elsewhere the maximum of
  ``psutil`` RSS samples taken every 5 ms. It includes the interpreter and libraries;
  ``rss_delta_mb`` subtracts the RSS at the start of the configuration (memory the
  allocator kept from earlier configurations makes that delta an underestimate, so
  run one configuration per process where exact CPU memory matters).
* Variants: ``fp32``; ``bf16``/``fp16`` via ``torch.autocast`` (fp16 training with a
  ``GradScaler``). bf16 autocast is offered on CPU (the row notes whether the CPU has
  native bf16); fp16 on CPU is skipped. ``channels_last`` converts model and input.
  ``torch.compile`` (inductor) is skipped where inductor cannot work (no C++ compiler
  on CPU, no triton on CUDA). Skipped rows carry ``status="skipped"`` and a reason;
  failures carry ``status="error"``.
* Isolation: by default the measurements run in one spawned worker process, so a
  crash inside torch (seen: a segfault in CPU bf16 backward of a channels-last
  depthwise dilated convolution, torch 2.14.1) becomes an ``error`` row and the run
  goes on with a fresh worker; ``isolate=False`` / ``--no-isolate`` measures in-process.
  ``--cpu-mem-limit GB`` caps the worker's heap (``RLIMIT_DATA``) so that on CPU an
  oversized batch fails inside torch and backs off, instead of the kernel's OOM killer
  ending a process on a shared machine.
* Efficiency: achieved GFLOP/s from ``bench.complexity.analyze(...).macs`` of the plain
  forward (2 FLOPs per MAC, training step = 3x forward; deep-supervision side heads are
  not in that count) and the roofline bound of :mod:`bench.roofline`. Peaks come from
  ``--peak``, a table of known devices, or a quick on-device measurement in this process.

Rows go to ``results/speed/speed-<device_slug>.{csv,json}`` (atomic writes), merged
with existing rows: a re-run replaces the rows of the same configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import itertools
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.roofline import Peak, parse_peak, resolve_peak, roofline, step_bytes, step_flops

__all__ = [
    "COLUMNS",
    "KEY_COLUMNS",
    "MeasurementError",
    "PeakRSS",
    "TimingStats",
    "Worker",
    "WorkerCrashed",
    "check_against_torch_timer",
    "compile_problem",
    "format_table",
    "make_step",
    "register",
    "run_speed",
    "summarize",
    "sweep_batch_sizes",
    "time_step",
    "variant_skip_reason",
    "write_results",
]

MODES = ("inference", "train")
DTYPES = ("fp32", "bf16", "fp16")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SCHEMA_COLUMNS = [
    "model", "mode", "dtype", "layout", "compile", "batch_size", "threads", "median_ms",
    "iqr_ms", "p90_ms", "mean_ms", "count", "noisy", "throughput_img_s", "peak_mem_mb",
    "rss_mb", "achieved_gflops", "roofline_fraction", "device", "device_name",
    "torch_version", "status", "reason",
]  # fmt: skip
EXTRA_COLUMNS = [
    "requested_batch_size", "input_size", "rss_delta_mb", "rss_method", "gmacs_per_img",
    "intensity_flop_per_byte", "roofline_bound_gflops", "roofline_limiter", "peak_tflops",
    "peak_gbps", "peak_source", "run",
]  # fmt: skip
COLUMNS = SCHEMA_COLUMNS + EXTRA_COLUMNS
#: A row with the same values here is the same configuration (a re-run replaces it).
KEY_COLUMNS = [
    "model",
    "mode",
    "dtype",
    "layout",
    "compile",
    "requested_batch_size",
    "threads",
    "input_size",
    "device",
]
MIN_CAPPED_ITERS = 3  # timed iterations kept even when max_time_s is hit


# --------------------------------------------------------------------------- statistics
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


# --------------------------------------------------------------------------- timing
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


# --------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _read_vmhwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_vmhwm() -> bool:
    # Writing "5" to clear_refs resets the kernel's peak-RSS counter (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _read_vmhwm() is not None


class PeakRSS:
    """Peak resident set size of this process inside a ``with`` block.

    ``method="auto"`` uses the Linux kernel high-water mark (exact) when it can be reset,
    else samples ``psutil`` RSS every ``interval_s`` seconds (``method="sample"``).
    """

    def __init__(self, method: str = "auto", interval_s: float = 0.005) -> None:
        if method not in ("auto", "sample", "kernel"):
            raise ValueError(f"method must be 'auto', 'sample' or 'kernel', got {method!r}")
        self._want, self._interval = method, interval_s
        self.method = ""
        self.start_bytes = self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    def __enter__(self) -> PeakRSS:
        self.start_bytes = self.peak_bytes = _rss_bytes()
        if self._want != "sample" and _reset_vmhwm():
            self.method = "kernel VmHWM reset via /proc/self/clear_refs"
        elif self._want == "kernel":
            raise OSError("cannot reset the kernel peak-RSS counter (/proc/self/clear_refs)")
        else:
            self.method = f"psutil RSS sampled every {self._interval * 1e3:g} ms"
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())
        else:
            self.peak_bytes = max(self.peak_bytes, _read_vmhwm() or 0, _rss_bytes())

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    @property
    def delta_mb(self) -> float:
        return (self.peak_bytes - self.start_bytes) / 2**20


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- variants
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


def _cpu_native_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, c, lambda: False)()) for c in checks)


def variant_skip_reason(device: str | torch.device, dtype: str, compile: bool) -> str | None:
    """Reason to skip a (device, dtype, compile) variant, or None when it can run."""
    dev = torch.device(device)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dev.type == "cpu" and dtype == "fp16":
        return (
            "fp16 autocast is not offered on CPU: without native fp16 arithmetic it times "
            "emulation; use bf16"
        )
    if dev.type == "cuda" and dtype == "bf16":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older signature
            native = torch.cuda.is_bf16_supported()
        if not native:
            return "this GPU has no native bf16 (needs compute capability >= 8.0)"
    if compile:
        return compile_problem(dev)
    return None


def _dtype_note(device: torch.device, dtype: str) -> str:
    if device.type == "cpu" and dtype == "bf16":
        return f"bf16 autocast on CPU (native bf16 instructions: {'yes' if _cpu_native_bf16() else 'no'})"
    return ""


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg
    )


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


# --------------------------------------------------------------------------- steps
def make_step(
    model: nn.Module,
    mode: str,
    device: str | torch.device,
    *,
    dtype: str = "fp32",
    batch_size: int = 1,
    input_size: int = 256,
    in_channels: int = 3,
    channels_last: bool = False,
    compile: bool = False,
    loss_weights: tuple[float, tuple[float, ...]] = (1.0, ()),
) -> Callable[[], None]:
    """Move ``model`` to ``device`` and return a zero-argument inference or training step.

    Training uses BCE-with-logits on a random binary mask (one class) or cross-entropy
    (several), AdamW, and ``forward_aux`` with every auxiliary head when
    ``loss_weights`` lists any.
    """
    dev = torch.device(device)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=fmt)
    x = torch.randn(batch_size, in_channels, input_size, input_size, device=dev)
    x = x.contiguous(memory_format=fmt)
    amp = (
        torch.autocast(device_type=dev.type, dtype=_TORCH_DTYPES[dtype])
        if dtype != "fp32"
        else contextlib.nullcontext()
    )
    if mode == "inference":
        model.eval()
        fn = torch.compile(model) if compile else model

        def infer() -> None:
            with torch.inference_mode(), amp:
                fn(x)

        return infer

    model.train()
    main_w, aux_w = loss_weights
    if aux_w and not hasattr(model, "forward_aux"):
        raise TypeError(f"{type(model).__name__} has auxiliary loss weights but no forward_aux")
    forward = model.forward_aux if aux_w else model
    fn = torch.compile(forward) if compile else forward
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(dev.type) if dtype == "fp16" else None
    target: torch.Tensor | None = None

    def loss_of(logits: torch.Tensor) -> torch.Tensor:
        nonlocal target
        if target is None:  # built lazily: the class count is known from the first output
            if logits.shape[1] == 1:
                target = torch.rand(logits.shape[0], 1, *logits.shape[2:], device=dev) > 0.5
                target = target.float()
            else:
                target = torch.randint(
                    logits.shape[1], (logits.shape[0], *logits.shape[2:]), device=dev
                )
        if logits.shape[1] == 1:
            return F.binary_cross_entropy_with_logits(logits.float(), target)
        return F.cross_entropy(logits.float(), target)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        with amp:
            if aux_w:
                logits, aux = fn(x)
                if len(aux) != len(aux_w):
                    raise ValueError(
                        f"forward_aux returned {len(aux)} aux maps, loss_weights lists {len(aux_w)}"
                    )
                loss = main_w * loss_of(logits)
                for w, a in zip(aux_w, aux):
                    loss = loss + w * loss_of(a)
            else:
                loss = loss_of(fn(x))
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    return train


@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[int]:
    old = torch.get_num_threads()
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device) -> Iterator[None]:
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" or old
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


# Indirection points so tests can substitute tiny models without touching the registry.
def _build_model(name: str) -> nn.Module:
    from models import create_model

    return create_model(name, num_classes=1, in_channels=3)


def _model_info(name: str) -> Any:
    from models import model_info

    return model_info(name)


def _complexity(name: str, input_size: int) -> tuple[float, float, float] | str:
    """(MACs per image, fp32 activation bytes per image, parameter bytes), or why not."""
    try:
        from bench.complexity import analyze
    except ImportError as err:
        return f"complexity unavailable ({_short(err)})"
    try:
        model = _build_model(name).eval()
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        c = analyze(model, input_shape=(1, 3, input_size, input_size))
        return float(c.macs), float(c.activation_bytes), float(param_bytes)
    except Exception as err:
        return f"complexity failed ({_short(err)})"


def _measure_config(
    name: str,
    info: Any,
    device: torch.device,
    mode: str,
    dtype: str,
    channels_last: bool,
    compile: bool,
    batch_size: int,
    *,
    input_size: int,
    timing: dict[str, Any],
    noisy_threshold: float,
    threads: int | None,
) -> dict[str, Any]:
    """Build a fresh model and time one configuration (runs in the worker process)."""
    _free_memory()
    torch.manual_seed(0)
    step = None
    try:
        with _num_threads(threads), _cudnn_benchmark(device), PeakRSS() as rss:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            step = make_step(
                _build_model(name),
                mode,
                device,
                dtype=dtype,
                batch_size=batch_size,
                input_size=input_size,
                channels_last=channels_last,
                compile=compile,
                loss_weights=tuple(info.loss_weights),
            )
            # At least one untimed call, so compilation and cuDNN autotuning (first call)
            # never land in the timed iterations, even with warmup=0.
            warm = {**timing, "warmup": max(1, int(timing["warmup"]))}
            times, capped = time_step(step, device, **warm)
            peak_cuda = (
                torch.cuda.max_memory_allocated(device) / 2**20
                if device.type == "cuda"
                else math.nan
            )
    finally:
        del step
        if compile:  # drop compiled graphs so the next configuration starts clean
            import torch._dynamo as dynamo

            dynamo.reset()
    st = summarize(times, noisy_threshold)
    notes = [_dtype_note(device, dtype)]
    if capped:
        notes.append(
            f"max time {timing['max_time_s']:g} s reached after {st.count} of "
            f"{timing['min_iters']} iterations"
        )
    return {
        "median_ms": st.median_ms, "iqr_ms": st.iqr_ms, "p90_ms": st.p90_ms,
        "mean_ms": st.mean_ms, "count": st.count, "noisy": st.noisy or capped,
        "throughput_img_s": batch_size / (st.median_ms / 1e3) if st.median_ms > 0 else math.nan,
        "peak_mem_mb": peak_cuda, "rss_mb": rss.peak_mb, "rss_delta_mb": rss.delta_mb,
        "rss_method": rss.method, "reason": "; ".join(n for n in notes if n),
    }  # fmt: skip


def _worker_main(conn: Any, mem_limit_bytes: int | None = None) -> None:
    """Worker loop: run ``fn(*args, **kwargs)`` per message, reply (kind, payload)."""
    if mem_limit_bytes:
        # RLIMIT_DATA bounds heap and anonymous mappings (Linux >= 4.7): an allocation past
        # it fails inside torch ("can't allocate memory"), which the sweep treats as
        # out-of-memory, instead of the kernel's OOM killer picking a process.
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (mem_limit_bytes, hard))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, args, kwargs = msg
        reply: tuple[str, Any]
        try:
            reply = ("ok", fn(*args, **kwargs))
        except Exception as err:
            reply = ("oom" if _is_oom(err) else "error", _short(err))
        _free_memory()  # after the except block: the traceback's tensors are gone
        conn.send(reply)


class Worker:
    """A spawned process that runs measurements, so a crash inside torch (a segfault
    in a kernel) costs one row instead of the whole run; restarted after a crash.

    ``call(fn, ...)`` pickles ``fn`` by reference, so it must be a module-level function.
    Out-of-memory in the worker is re-raised here as ``torch.OutOfMemoryError``, other
    errors as :class:`MeasurementError`, a dead worker as :class:`WorkerCrashed`.
    """

    def __init__(self, mem_limit_gb: float | None = None) -> None:
        if mem_limit_gb is not None:
            if not mem_limit_gb > 0:
                raise ValueError(f"mem_limit_gb must be positive, got {mem_limit_gb}")
            try:
                import resource

                resource.RLIMIT_DATA  # noqa: B018  (only checks that it exists)
            except (ImportError, AttributeError):
                raise ValueError("a CPU memory limit needs resource.RLIMIT_DATA (Unix)") from None
        self._limit = int(mem_limit_gb * 2**30) if mem_limit_gb else None
        self._proc: Any = None
        self._conn: Any = None

    def _start(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # fork is unsafe with CUDA and OpenMP thread pools
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, args=(child, self._limit), daemon=True)
        self._proc.start()
        child.close()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        try:
            self._conn.send((fn, args, kwargs))
            kind, payload = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self._proc.join(10)
            code = self._proc.exitcode
            self._proc = self._conn = None
            raise WorkerCrashed(f"measurement process died ({_exit_text(code)})") from None
        if kind == "ok":
            return payload
        if kind == "oom":
            raise torch.OutOfMemoryError(payload)
        raise MeasurementError(payload)

    def close(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(None)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()
        self._proc = self._conn = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _exit_text(code: int | None) -> str:
    import signal

    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"killed by signal {-code}"
        if name == "SIGKILL":  # what the kernel's OOM killer sends
            return "killed by SIGKILL, possibly the OOM killer; try --cpu-mem-limit"
        return f"killed by {name}"
    return f"exit code {code}"


def _efficiency(
    row: dict[str, Any], cx: tuple[float, float, float] | str, peak: Peak | str | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(cx, str):
        return {"reason": cx}
    macs, act_bytes, param_bytes = cx
    b, mode = row["batch_size"], row["mode"]
    flops = step_flops(macs, b, mode)
    achieved = flops / (row["median_ms"] / 1e3)
    out.update(gmacs_per_img=macs / 1e9, achieved_gflops=achieved / 1e9)
    if isinstance(peak, Peak):
        scale = 0.5 if row["dtype"] in ("bf16", "fp16") else 1.0
        pt = roofline(flops, step_bytes(act_bytes, param_bytes, b, mode, scale), peak, achieved)
        if pt.fraction > 1.0:
            out["reason"] = (
                "achieved exceeds the roofline bound: the peak underestimates this device "
                "(measured under load?) or the traffic estimate is too high; pass --peak"
            )
        out.update(
            roofline_fraction=pt.fraction,
            intensity_flop_per_byte=pt.intensity,
            roofline_bound_gflops=pt.bound_flops / 1e9,
            roofline_limiter=pt.limiter,
            peak_tflops=peak.tflops,
            peak_gbps=peak.gbps,
            peak_source=peak.source,
        )
    elif isinstance(peak, str):
        out["reason"] = peak
    return out


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be cpu, cuda or auto, got {device!r}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    return dev


def _as_flags(value: bool | Sequence[bool]) -> list[bool]:
    return [bool(value)] if isinstance(value, bool) else [bool(v) for v in value]


@dataclass(frozen=True)
class _Plan:
    """Settings shared by every configuration of one ``run_speed`` call."""

    modes: tuple[str, ...]
    dtypes: tuple[str, ...]
    layouts: tuple[bool, ...]
    compiles: tuple[bool, ...]
    batch_sizes: tuple[int, ...]
    input_size: int
    timing: dict[str, Any]
    noisy_threshold: float
    threads: int
    peak: Peak | None
    measure_peak: bool

    @property
    def per_model(self) -> int:
        return (len(self.modes) * len(self.dtypes) * len(self.layouts) * len(self.compiles)
                * len(self.batch_sizes))  # fmt: skip


def run_speed(
    models: list[str],
    device: str = "cpu",
    batch_sizes: Sequence[int] = (1, 8, 32),
    modes: Sequence[str] = ("inference", "train"),
    dtypes: Sequence[str] = ("fp32",),
    channels_last: bool | Sequence[bool] = False,
    compile: bool | Sequence[bool] = False,
    min_time_s: float = 1.0,
    min_iters: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    input_size: int = 256,
    out_dir: str | Path | None = "results/speed",
    progress: bool = True,
    *,
    max_time_s: float | None = 30.0,
    noisy_threshold: float = 0.1,
    peak: Peak | str | None = None,
    measure_peak: bool = True,
    isolate: bool = True,
    mem_limit_gb: float | None = None,
    command: str | None = None,
) -> pd.DataFrame:
    """Measure every configuration and return this run's rows (one per configuration).

    ``channels_last`` / ``compile`` take a flag or a sequence of flags (``(False, True)``
    measures both). ``peak`` overrides the roofline peak (``Peak`` or ``"TFLOPS,GBPS"``).
    ``isolate`` runs the measurements in one spawned worker process, so a crash inside
    torch becomes an error row instead of ending the run; ``mem_limit_gb`` caps that
    worker's heap so an oversized CPU batch backs off instead of exhausting the machine. Rows are merged into
    ``out_dir/speed-<device_slug>.{csv,json}`` unless ``out_dir`` is None.
    """
    from bench.env import device_name, device_slug, environment

    dev = _resolve_device(device)
    if not models:
        raise ValueError("models: give at least one model name")
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be among {', '.join(MODES)}, got {list(modes)}")
    if not dtypes or any(d not in DTYPES for d in dtypes):
        raise ValueError(f"dtypes must be among {', '.join(DTYPES)}, got {list(dtypes)}")
    if not batch_sizes or any(int(b) != b or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {list(batch_sizes)}")
    if int(input_size) != input_size or input_size < 1:
        raise ValueError(f"input_size must be a positive integer, got {input_size}")
    if max_time_s is not None and max_time_s <= 0:
        raise ValueError(f"max_time_s must be positive or None, got {max_time_s}")
    if isinstance(peak, str):
        peak = parse_peak(peak)
    infos = {name: _model_info(name) for name in models}  # unknown names fail here, early
    timing = {
        "warmup": int(warmup),
        "min_time_s": float(min_time_s),
        "min_iters": int(min_iters),
        "max_time_s": max_time_s,
    }
    run_id = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if command is None:
        command = (
            f"run_speed(models={list(models)}, device={str(device)!r}, batch_sizes="
            f"{list(batch_sizes)}, modes={list(modes)}, dtypes={list(dtypes)}, "
            f"channels_last={channels_last}, compile={compile}, threads={threads}, "
            f"input_size={input_size}, timing={timing})"
        )
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    peaks: dict[str, Peak | str | None] = {}
    with _num_threads(threads) as n_threads, contextlib.ExitStack() as stack:
        plan = _Plan(tuple(modes), tuple(dtypes), tuple(_as_flags(channels_last)),
                     tuple(_as_flags(compile)), tuple(int(b) for b in batch_sizes),
                     int(input_size), timing, noisy_threshold, n_threads, peak,
                     measure_peak)  # fmt: skip
        common = {
            "threads": n_threads,
            "input_size": int(input_size),
            "device": dev.type,
            "device_name": device_name(dev),
            "torch_version": torch.__version__,
            "run": run_id,
        }
        if mem_limit_gb is not None and not isolate:
            raise ValueError("mem_limit_gb needs isolate=True (the limit applies to the worker)")
        worker = Worker(mem_limit_gb) if isolate else None
        call: Callable[..., Any] = stack.enter_context(worker).call if worker else _direct
        bar = stack.enter_context(
            tqdm(total=plan.per_model * len(models), desc="speed", unit="cfg",
                 disable=not progress, file=sys.stderr)
        )  # fmt: skip
        for name in models:
            rows += _run_model(name, infos[name], dev, common, plan, peaks, bar, call)
        env = environment(dev)  # inside the thread setting, so torch_threads is the one used
    df = _frame(rows)
    if out_dir is not None:
        meta = {
            "command": command,
            "started": run_id,
            "environment": env,
            "timing": timing,
            "noisy_threshold": noisy_threshold,
            "isolated_worker": isolate,
            "worker_mem_limit_gb": mem_limit_gb,
            "cudnn_benchmark": dev.type == "cuda",
            "peaks": {k: (asdict(v) if isinstance(v, Peak) else v) for k, v in peaks.items()},
        }
        write_results(df, out_dir, device_slug(dev), run_id, meta)
    return df


def _direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def _run_model(
    name: str,
    info: Any,
    dev: torch.device,
    common: dict[str, Any],
    plan: _Plan,
    peaks: dict[str, Peak | str | None],
    bar: Any,
    call: Callable[..., Any],
) -> list[dict[str, Any]]:
    """All configurations of one model; fills ``peaks`` per dtype on first use."""
    rows: list[dict[str, Any]] = []
    size_problem = _input_problem(name, info, plan.input_size)
    cx: tuple[float, float, float] | str | None = None
    for mode, dtype, cl, comp in itertools.product(
        plan.modes, plan.dtypes, plan.layouts, plan.compiles
    ):
        base = {**common, "model": name, "mode": mode, "dtype": dtype, "compile": comp,
                "layout": "channels_last" if cl else "contiguous"}  # fmt: skip
        bar.set_postfix_str(f"{name} {mode} {dtype}{' nhwc' if cl else ''}"
                            f"{' compiled' if comp else ''}")  # fmt: skip
        skip = size_problem or variant_skip_reason(dev, dtype, comp)
        if skip:
            for b in plan.batch_sizes:
                rows.append({**base, "batch_size": b, "requested_batch_size": b,
                             "status": "skipped", "reason": skip})  # fmt: skip
            bar.update(len(plan.batch_sizes))
            continue
        if cx is None:
            cx = _complexity(name, plan.input_size)
        if dtype not in peaks:
            peaks[dtype] = _peak_for(dev, dtype, plan.peak, plan.measure_peak)
        measure = functools.partial(
            call, _measure_config, name, info, dev, mode, dtype, cl, comp,
            input_size=plan.input_size, timing=plan.timing,
            noisy_threshold=plan.noisy_threshold, threads=plan.threads,
        )  # fmt: skip
        for r in sweep_batch_sizes(plan.batch_sizes, measure, on_done=lambda _r: bar.update(1)):
            row = {**base, **r}
            if row["status"] == "ok":
                eff = _efficiency(row, cx, peaks[dtype])
                note = eff.pop("reason", "")
                row.update(eff)
                row["reason"] = "; ".join(t for t in (row.get("reason", ""), note) if t)
            rows.append(row)
    return rows


def _input_problem(name: str, info: Any, size: int) -> str | None:
    from models import InputSizeError, check_input_size

    try:
        check_input_size(
            size,
            size,
            getattr(info, "input_multiple", 1),
            getattr(info, "min_input", 0),
            model=name,
        )
    except InputSizeError as err:
        return str(err)
    return None


def _peak_for(
    dev: torch.device, dtype: str, override: Peak | None, measure: bool
) -> Peak | str | None:
    try:
        return resolve_peak(dev, dtype, override=override, measure=measure)
    except Exception as err:  # a failed micro-measurement must not lose the timings
        return f"peak measurement failed ({_short(err)})"


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = (
                ""
                if col in ("reason", "rss_method", "roofline_limiter", "peak_source")
                else math.nan
            )
    for col in ("reason", "rss_method", "roofline_limiter", "peak_source"):
        df[col] = df[col].fillna("")
    # Nullable dtypes keep counts integral and flags boolean next to skipped rows' blanks.
    for col in ("batch_size", "requested_batch_size", "threads", "input_size", "count"):
        df[col] = pd.to_numeric(df[col], errors="coerce").round().astype("Int64")
    for col in ("noisy", "compile"):
        df[col] = df[col].map(_as_bool).astype("boolean")
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra]


def _as_bool(v: Any) -> Any:
    if isinstance(v, str):  # a CSV read back
        return {"true": True, "false": False}.get(v.strip().lower(), pd.NA)
    return pd.NA if v is None or (isinstance(v, float) and math.isnan(v)) else bool(v)


# --------------------------------------------------------------------------- files
def _key(row: dict[str, Any]) -> tuple[str, ...]:
    out = []
    for col in KEY_COLUMNS:
        v = row.get(col)
        if isinstance(v, float) and math.isfinite(v) and v == int(v):
            v = int(v)
        if isinstance(v, np.generic):
            v = v.item()
        out.append(str(v))
    return tuple(out)


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    recs = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in recs]


def write_results(
    df: pd.DataFrame, out_dir: str | Path, slug: str, run_id: str, meta: dict[str, Any]
) -> tuple[Path, Path]:
    """Merge ``df`` into ``out_dir/speed-<slug>.{csv,json}`` atomically.

    Existing rows of other configurations stay; a row with the same :data:`KEY_COLUMNS`
    is replaced. The JSON holds ``runs`` (command, environment, timing per run id) and
    ``rows`` (each naming its ``run``); the CSV holds the same rows. The read-merge-write
    holds an exclusive lock on ``out_dir`` so concurrent runs do not drop rows.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _dir_lock(out):  # two runs merging into one file must not lose each other's rows
        return _merge_write(df, out, slug, run_id, meta)


@contextlib.contextmanager
def _dir_lock(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``folder`` itself (no lock file left behind); no-op
    where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _merge_write(
    df: pd.DataFrame, out: Path, slug: str, run_id: str, meta: dict[str, Any]
) -> tuple[Path, Path]:
    from bench.io import read_json, write_csv, write_json

    csv_path, json_path = out / f"speed-{slug}.csv", out / f"speed-{slug}.json"
    old_rows: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    if json_path.exists():
        try:
            old = read_json(json_path)
            old_rows, runs = list(old["rows"]), dict(old.get("runs", {}))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{json_path}: not a segbench speed results file ({err}); move it "
                f"away or fix it before writing new rows"
            ) from err
    elif csv_path.exists():
        old_rows = _records(pd.read_csv(csv_path, keep_default_na=True))
    new_rows = _records(df)
    new_keys = {_key(r) for r in new_rows}
    merged = [r for r in old_rows if _key(r) not in new_keys] + new_rows
    runs[run_id] = meta
    used = {r.get("run") for r in merged}
    runs = {k: v for k, v in runs.items() if k in used}
    frame = _frame(merged)
    frame = frame.sort_values(
        ["model", "mode", "dtype", "layout", "compile", "requested_batch_size"],
        kind="stable",
        key=_sort_key,
    )
    frame = frame.reset_index(drop=True)
    write_csv(csv_path, frame)
    write_json(
        json_path,
        {"schema": "segbench-speed/1", "device_slug": slug, "runs": runs, "rows": _records(frame)},
    )
    return csv_path, json_path


def _sort_key(col: pd.Series) -> pd.Series:
    return col.astype(str) if col.dtype == object else col


# --------------------------------------------------------------------------- checks
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

    dev = _resolve_device(device)
    net = _build_model(model) if isinstance(model, str) else model
    with _num_threads(threads) as n:
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


# --------------------------------------------------------------------------- CLI
_TABLE = [
    ("model", "model"),
    ("mode", "mode"),
    ("dtype", "dtype"),
    ("layout", "layout"),
    ("compile", "compile"),
    ("batch_size", "bs"),
    ("median_ms", "median ms"),
    ("iqr_ms", "IQR ms"),
    ("p90_ms", "p90 ms"),
    ("count", "n"),
    ("throughput_img_s", "img/s"),
    ("peak_mem_mb", "GPU MB"),
    ("rss_mb", "RSS MB"),
    ("achieved_gflops", "GFLOP/s"),
    ("roofline_fraction", "roofline"),
    ("roofline_limiter", "bound"),
    ("noisy", "noisy"),
    ("status", "status"),
    ("reason", "reason"),
]


def format_table(df: pd.DataFrame, reason_width: int = 60) -> str:
    """A readable fixed-width table of speed rows."""
    t = pd.DataFrame({label: df[col] for col, label in _TABLE if col in df})
    if "layout" in t:
        t["layout"] = (
            t["layout"].map({"contiguous": "nchw", "channels_last": "nhwc"}).fillna(t["layout"])
        )
    for col, fmt in (
        ("median ms", "{:.2f}"),
        ("IQR ms", "{:.2f}"),
        ("p90 ms", "{:.2f}"),
        ("img/s", "{:.1f}"),
        ("GPU MB", "{:.0f}"),
        ("RSS MB", "{:.0f}"),
        ("GFLOP/s", "{:.3g}"),
        ("roofline", "{:.1%}"),
        ("n", "{:.0f}"),
    ):
        if col in t:
            t[col] = [fmt.format(float(v)) if _finite(v) else "-" for v in t[col]]
    for col in ("noisy", "bound", "compile"):
        if col in t:
            t[col] = [("-" if v is None or v is pd.NA or v == "" else str(v)) for v in t[col]]
    if "reason" in t:
        t["reason"] = [
            (str(r)[: reason_width - 1] + "…") if len(str(r)) > reason_width else str(r)
            for r in t["reason"].fillna("")
        ]
    return t.to_string(index=False)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _csv_list(kind: Callable[[str], Any], what: str) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [p.strip() for p in text.split(",") if p.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{what}: give a comma-separated list, got {text!r}")
        try:
            return [kind(p) for p in items]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{what}: {err}") from None

    return parse


def _pos_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if v < 1:
        raise ValueError(f"{v} is not a positive integer")
    return v


def _choice(options: Sequence[str]) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return text

    return check


def _peak_arg(text: str) -> Peak:
    try:
        return parse_peak(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _expand_models(spec: str) -> list[str]:
    from models import list_models

    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if any(ch in part for ch in "*?["):
            found = list_models(part)
            if not found:
                raise ValueError(f"--models: no registered model matches {part!r}")
            names += [n for n in found if n not in names]
        else:
            _model_info(part)  # raises UnknownModelError listing close names
            if part not in names:
                names.append(part)
    if not names:
        raise ValueError("--models: give at least one model name or pattern")
    return names


def _command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces these arguments (recorded with the rows)."""
    parts = [
        "segbench speed",
        f"--models {args.models!r}",
        f"--device {args.device}",
        f"--batch-sizes {','.join(map(str, args.batch_sizes))}",
        f"--modes {','.join(args.modes)}",
        f"--dtype {','.join(args.dtype)}",
        f"--min-time {args.min_time:g}",
        f"--min-iters {args.min_iters}",
        f"--warmup {args.warmup}",
        f"--max-time {args.max_time:g}",
        f"--input-size {args.input_size}",
        f"--noisy-threshold {args.noisy_threshold:g}",
        f"--out {args.out}",
    ]
    parts += ["--channels-last"] * args.channels_last + ["--compile"] * args.compile
    if args.threads:
        parts.append(f"--threads {args.threads}")
    if args.peak is not None:
        parts.append(f"--peak {args.peak.tflops:g},{args.peak.gbps:g}")
    if args.no_measure_peak:
        parts.append("--no-measure-peak")
    if args.no_isolate:
        parts.append("--no-isolate")
    if args.cpu_mem_limit:
        parts.append(f"--cpu-mem-limit {args.cpu_mem_limit:g}")
    return " ".join(parts)


def _cmd_speed(args: argparse.Namespace) -> int:
    from models import UnknownModelError

    try:
        names = _expand_models(args.models)
    except (ValueError, UnknownModelError) as err:
        print(f"segbench speed: {err}", file=sys.stderr)
        return 2
    if args.check_timer:
        over = 0
        for name in names:
            try:
                res = check_against_torch_timer(
                    name,
                    device=args.device,
                    threads=args.threads or 1,
                    input_size=args.input_size,
                    min_time_s=max(args.min_time, 1.0),
                )
            except ValueError as err:
                print(f"segbench speed: {err}", file=sys.stderr)
                return 2
            over += not res["ok"]
            print(
                f"{name}: ours {res['ours_ms']:.2f} ms, torch Timer {res['torch_timer_ms']:.2f}"
                f" ms, diff {res['rel_diff']:.1%} ({'ok' if res['ok'] else 'OVER'} "
                f"{res['tolerance']:.0%}), {res['threads']} threads, input "
                f"1x3x{args.input_size}x{args.input_size}"
            )
        return 1 if over else 0
    try:
        df = run_speed(
            names,
            device=args.device,
            batch_sizes=args.batch_sizes,
            modes=args.modes,
            dtypes=args.dtype,
            channels_last=args.channels_last,
            compile=args.compile,
            min_time_s=args.min_time,
            min_iters=args.min_iters,
            warmup=args.warmup,
            threads=args.threads,
            input_size=args.input_size,
            out_dir=args.out,
            progress=not args.quiet,
            max_time_s=args.max_time or None,
            noisy_threshold=args.noisy_threshold,
            peak=args.peak,
            measure_peak=not args.no_measure_peak,
            isolate=not args.no_isolate,
            mem_limit_gb=args.cpu_mem_limit,
            command=_command_line(args),
        )
    except ValueError as err:
        print(f"segbench speed: {err}", file=sys.stderr)
        return 2
    from bench.env import device_slug

    print(format_table(df))
    dev = _resolve_device(args.device)
    print(
        f"\nwrote {Path(args.out) / f'speed-{device_slug(dev)}.csv'} and .json "
        f"({df['threads'].iloc[0]} threads, torch {torch.__version__})"
    )
    errors = df[df["status"] == "error"]
    if len(errors):
        print(f"{len(errors)} configuration(s) failed; see the reason column", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add ``segbench speed``."""
    p = subparsers.add_parser(
        "speed",
        help="latency, throughput and memory per model and variant",
        description="Time inference and training steps over a batch-size sweep (median, IQR, "
        "p90; noisy runs flagged), record peak GPU memory and CPU RSS, achieved FLOP/s and the "
        "roofline bound; writes results/speed/speed-<device>.{csv,json}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--models",
        required=True,
        help="comma-separated model names or wildcard patterns (e.g. 'malunet,unet')",
    )
    p.add_argument(
        "--device",
        default="cpu",
        type=_choice(("cpu", "cuda", "auto")),
        help="cpu, cuda, or auto (cuda when available)",
    )
    p.add_argument(
        "--batch-sizes",
        default=[1, 8, 32],
        type=_csv_list(_pos_int, "--batch-sizes"),
        help="comma-separated batch sizes; out-of-memory halves a size",
    )
    p.add_argument(
        "--modes",
        default=list(MODES),
        type=_csv_list(_choice(MODES), "--modes"),
        help="inference and/or train (forward + backward + AdamW step)",
    )
    p.add_argument(
        "--dtype",
        default=["fp32"],
        type=_csv_list(_choice(DTYPES), "--dtype"),
        help="fp32, bf16, fp16 (autocast); fp16 is skipped on CPU",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="use channels_last memory format for model and input",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    p.add_argument(
        "--threads",
        type=_pos_int,
        default=None,
        help="torch CPU threads (default: the current torch.get_num_threads())",
    )
    p.add_argument(
        "--min-time", type=float, default=1.0, help="minimum timed seconds per configuration"
    )
    p.add_argument(
        "--min-iters", type=_pos_int, default=10, help="minimum timed iterations per configuration"
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up iterations")
    p.add_argument(
        "--max-time",
        type=float,
        default=30.0,
        help="cap on timed seconds per configuration (0: no cap; at least 3 "
        "iterations are always timed)",
    )
    p.add_argument("--input-size", type=_pos_int, default=256, help="square input side")
    p.add_argument(
        "--noisy-threshold",
        type=float,
        default=0.1,
        help="flag a configuration as noisy when IQR/median exceeds this",
    )
    p.add_argument(
        "--peak",
        type=_peak_arg,
        default=None,
        metavar="TFLOPS,GBPS",
        help="device peak compute and bandwidth for the roofline (default: known "
        "device table, else a quick on-device measurement)",
    )
    p.add_argument(
        "--no-measure-peak",
        action="store_true",
        help="do not micro-measure the peak for unknown devices (no roofline)",
    )
    p.add_argument("--out", default="results/speed", help="output folder")
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure in this process instead of a spawned worker (a crash inside torch "
        "then ends the run)",
    )
    p.add_argument(
        "--cpu-mem-limit",
        type=float,
        default=None,
        metavar="GB",
        help="cap the worker's heap (RLIMIT_DATA) so a too-large CPU batch fails and backs "
        "off instead of waking the OOM killer (Linux; not with --no-isolate)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--check-timer",
        action="store_true",
        help="instead of the sweep, compare this timer with torch.utils.benchmark."
        "Timer at batch 1 (inference) and print the difference",
    )
    p.set_defaults(func=_cmd_speed)
