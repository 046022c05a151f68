"""Latency, throughput and memory of each model: ``segbench speed``.

Method (one *configuration* = model x mode x dtype x layout x compile x batch size):

* **inference**: ``model.eval()`` under ``torch.inference_mode()``; **train**: one full
  step, forward + loss + backward + ``AdamW.step()``. Models with deep supervision
  (``model_info(name).has_aux``) run ``forward_aux`` and every auxiliary head enters
  the loss with its ``loss_weights``, so the side outputs' cost is included.
* ``warmup`` untimed iterations and at least ``warmup_time_s`` seconds of them (default
  1 s on CUDA, where clocks rise from idle over longer than a few fast iterations; 0 on
  CPU), capped at ``max_time_s``, at least one (also where ``torch.compile`` compiles),
  then timed iterations until both ``min_time_s`` and ``min_iters`` are reached. ``max_time_s`` caps a very slow configuration after at
  least 3 timed iterations; the row says so and is flagged ``noisy``.
* CPU: each iteration is timed with ``time.perf_counter``; the thread count is fixed
  with ``torch.set_num_threads`` (given, or the current one), recorded in every row and
  restored afterwards. CUDA: each iteration sits between two CUDA events and is
  synchronised, so a row is the latency a caller waits for (launch overhead included);
  ``torch.backends.cudnn.benchmark`` is on while measuring (restored afterwards), the
  warm-up covers its autotuning.
* Statistics per configuration (:func:`summarize`): median, IQR, p90, mean, count, and
  ``noisy`` when IQR/median exceeds ``noisy_threshold`` (default 0.1).
* Throughput = batch size / time per step of a back-to-back run on CUDA (the timed
  iterations' count again, synchronised only at the ends: a loop keeps the GPU queue
  full, which per-iteration synchronised timing does not), batch size / median step
  time on CPU (every call is synchronous there); ``throughput_method`` says which.
  Latency = the batch-1 row.
* TF32 is off while measuring (cuDNN and cuBLAS): ``fp32`` rows are IEEE fp32 on every
  GPU (PyTorch would run convolutions in TF32 on Ampere and later), and the roofline
  uses the fp32 (CUDA-core) peak. Each row's ``tf32`` and the run's ``tf32`` entry in
  the JSON record the switches.
* Out of memory (``torch.OutOfMemoryError`` or the CPU allocator's failure) halves the
  batch size until it fits (:func:`sweep_batch_sizes`); the row keeps
  ``requested_batch_size`` and says which sizes failed.
* Memory: ``peak_mem_mb`` is ``torch.cuda.max_memory_allocated`` over the timed loop
  (the counter is reset after warm-up, so cuDNN benchmark workspaces and compile
  autotuning do not count; parameters, gradients, optimizer state and activations; CUDA
  only). ``rss_mb`` is the process's peak resident set size during the timed loop: on
  Linux the kernel high-water mark (VmHWM) after resetting it through
  ``/proc/self/clear_refs``, so short spikes are caught; elsewhere the maximum of
  ``psutil`` RSS samples taken every 5 ms. It includes the interpreter and libraries;
  ``rss_delta_mb`` is the model's own share: that peak minus the RSS just before the
  model was built (memory the allocator kept from earlier configurations makes it an
  underestimate, so run one configuration per process where exact CPU memory matters).
* Variants: ``fp32``; ``bf16``/``fp16`` via ``torch.autocast`` (fp16 training with a
  ``GradScaler``). bf16 autocast is offered on CPU (the row notes whether the CPU has
  native bf16); fp16 on CPU is skipped. ``channels_last`` converts model and input.
  ``torch.compile`` (inductor) is skipped where inductor cannot work (no C++ compiler
  on CPU, no triton on CUDA). Skipped rows carry ``status="skipped"`` and a reason;
  failures carry ``status="error"``.
* Isolation: by default the measurements run in a spawned worker process, so a
  crash inside torch (seen: a segfault in CPU bf16 backward of a channels-last
  depthwise dilated convolution, torch 2.14.1) becomes an ``error`` row and the run
  goes on with a fresh worker; ``isolate=False`` / ``--no-isolate`` measures in-process.
  Each backend has its own worker, and only one is alive at a time (torch's thread pool
  beside onnxruntime's made onnxruntime's timings bimodal: see
  :class:`bench.speed.worker.BackendWorkers`).
  ``--cpu-mem-limit GB`` caps the worker's heap (``RLIMIT_DATA``) so that on CPU an
  oversized batch fails inside torch and backs off, instead of the kernel's OOM killer
  ending a process on a shared machine.
* Efficiency: achieved GFLOP/s from ``bench.cost.flops.analyze(...).macs`` of the plain
  forward (2 FLOPs per MAC, training step = 3x forward; deep-supervision side heads are
  not in that count) and the roofline bound of :mod:`bench.cost.roofline`. Peaks come from
  ``--peak``, a table of known devices, or a quick on-device measurement in this process.

Rows go to ``results/speed/speed-<device_slug>.{csv,json}`` (atomic writes), merged
with existing rows: a re-run replaces the rows of the same configuration.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.core.device import resolve_device
from bench.core.measure import pinned_threads
from bench.core.progress import progress_bar
from bench.cost.roofline import Peak, parse_peak, resolve_peak, roofline, step_bytes, step_flops
from bench.deploy.backends import RUNTIMES, Runtime
from bench.speed import steps
from bench.speed.files import _frame, write_results
from bench.speed.runtime import export_for_speed, measure_runtime_config, provider_device
from bench.speed.steps import _complexity, measure_config
from bench.speed.variants import DTYPES, MODES, _short, sweep_batch_sizes, variant_skip_reason
from bench.speed.worker import BackendWorkers


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
    # the weights' size bounds the model's RSS delta from below (bench.speed.files.rss_checked)
    out.update(
        gmacs_per_img=macs / 1e9, achieved_gflops=achieved / 1e9, weights_mb=param_bytes / 2**20
    )
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
    backends: tuple[str, ...] = ("torch",)
    exporters: tuple[str, ...] = ("dynamo", "torchscript")
    export_dir: str = ""

    @property
    def runtimes(self) -> tuple[str, ...]:
        """Runtimes timed through their session (inference only, so none without the
        inference mode); eager PyTorch's variants are not among them."""
        if "inference" not in self.modes:
            return ()
        return tuple(b for b in self.backends if not RUNTIMES[b].eager_variants)

    def configs(self, rt: Runtime) -> list[tuple[str, str, bool, bool]]:
        """(mode, dtype, channels_last, compile) of every configuration of ``rt``."""
        if rt.eager_variants:
            return list(itertools.product(self.modes, self.dtypes, self.layouts, self.compiles))
        if rt.name not in self.runtimes:
            return []
        return [("inference", dtype, False, False) for dtype in self.dtypes]

    @property
    def per_model(self) -> int:
        n = sum(len(self.configs(RUNTIMES[b])) for b in self.backends)
        return n * len(self.batch_sizes)


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
    warmup_time_s: float | None = None,
    backends: Sequence[str] = ("torch",),
    exporters: Sequence[str] = ("dynamo", "torchscript"),
) -> pd.DataFrame:
    """Measure every configuration and return this run's rows (one per configuration).

    ``channels_last`` / ``compile`` take a flag or a sequence of flags (``(False, True)``
    measures both). ``peak`` overrides the roofline peak (``Peak`` or ``"TFLOPS,GBPS"``).
    ``isolate`` runs the measurements in spawned worker processes (one per backend), so a
    crash inside torch becomes an error row instead of ending the run; ``mem_limit_gb``
    caps the worker's heap so an oversized CPU batch backs off instead of exhausting the
    machine. Rows are merged into ``out_dir/speed-<device_slug>.{csv,json}`` unless
    ``out_dir`` is None.

    ``backends``: names in the runtime table :data:`bench.deploy.backends.RUNTIMES`:
    ``torch`` (eager PyTorch with the variants above) and/or the deployment runtimes
    ``onnxruntime`` / ``openvino`` (:mod:`bench.speed.runtime`: each model is exported to
    ONNX once, trying ``exporters`` in order, into a temporary folder, for every runtime
    that takes an ONNX file; inference rows per dtype and batch size, same timing and
    worker). Rows come runtime by runtime, in the order given.
    """
    from bench.core.env import device_name, device_slug, environment

    dev = resolve_device(device)
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
    if not backends or any(b not in RUNTIMES for b in backends):
        raise ValueError(f"backends must be among {', '.join(RUNTIMES)}, got {list(backends)}")
    from bench.deploy.export import EXPORTERS

    if not exporters or any(e not in EXPORTERS for e in exporters):
        raise ValueError(f"exporters must be among {', '.join(EXPORTERS)}, got {list(exporters)}")
    if isinstance(peak, str):
        peak = parse_peak(peak)
    if warmup_time_s is None:
        warmup_time_s = 1.0 if dev.type == "cuda" else 0.0
    if warmup_time_s < 0:
        raise ValueError(f"warmup_time_s must be >= 0, got {warmup_time_s}")
    infos = {name: steps.model_info(name) for name in models}  # unknown names fail here, early
    timing = {
        "warmup": int(warmup),
        "warmup_time_s": float(warmup_time_s),
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
            f"input_size={input_size}, timing={timing}, backends={list(backends)})"
        )
    rows: list[dict[str, Any]] = []
    peaks: dict[str, Peak | str | None] = {}
    with pinned_threads(threads) as n_threads, contextlib.ExitStack() as stack:
        export_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="segbench-onnx-"))
        plan = _Plan(tuple(modes), tuple(dtypes), tuple(_as_flags(channels_last)),
                     tuple(_as_flags(compile)), tuple(int(b) for b in batch_sizes),
                     int(input_size), timing, noisy_threshold, n_threads, peak,
                     measure_peak, tuple(dict.fromkeys(backends)), tuple(exporters),
                     export_dir)  # fmt: skip
        common = {
            "threads": n_threads,
            "input_size": int(input_size),
            "device": dev.type,
            "device_name": device_name(dev),
            "torch_version": torch.__version__,
            "run": run_id,
        }
        versions = _runtime_versions(plan.runtimes)
        if mem_limit_gb is not None and not isolate:
            raise ValueError("mem_limit_gb needs isolate=True (the limit applies to the worker)")
        workers = stack.enter_context(BackendWorkers(mem_limit_gb)) if isolate else None

        def call_for(backend: str) -> Callable[..., Any]:
            return workers.call_for(backend) if workers else _direct

        bar = stack.enter_context(
            progress_bar(total=plan.per_model * len(models), desc="speed", unit="cfg",
                         enabled=progress)
        )  # fmt: skip
        for name in models:
            source = getattr(infos[name], "source", "")  # "" = shipped with segbench
            rows += [
                {**row, "source": source}
                for row in _run_model(name, infos[name], dev, common, plan, peaks, bar, call_for)
            ]
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
            "tf32": {
                "allowed": steps.TF32,
                "cudnn_allow_tf32": steps.TF32,
                "cuda_matmul_allow_tf32": steps.TF32,
                "note": "set while measuring every row (fp32 rows are IEEE fp32)",
            },
            "throughput": "back-to-back run" if dev.type == "cuda" else "batch / median",
            "peaks": {k: (asdict(v) if isinstance(v, Peak) else v) for k, v in peaks.items()},
            "backends": list(plan.backends),
            "runtime_versions": versions,
            "exporters": list(plan.exporters),
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
    call_for: Callable[[str], Callable[..., Any]],
) -> list[dict[str, Any]]:
    """All configurations of one model, runtime by runtime (:data:`RUNTIMES`); fills
    ``peaks`` per dtype on first use. One ONNX export serves every runtime that takes one.

    ``call_for(backend)`` runs a measurement in that backend's worker (see
    :class:`bench.speed.worker.BackendWorkers`)."""
    rows: list[dict[str, Any]] = []
    size_problem = _input_problem(name, info, plan.input_size)
    cx: tuple[float, float, float] | str | None = None
    exported: dict[str, Any] | None = None
    for backend in plan.backends:
        rt = RUNTIMES[backend]
        for mode, dtype, cl, comp in plan.configs(rt):
            base = {**common, "model": name, "backend": backend, "mode": mode, "dtype": dtype,
                    "compile": comp, "layout": "channels_last" if cl else "contiguous"}  # fmt: skip
            if not rt.eager_variants:  # eager rows take torch's version from the measurement
                base["backend_version"] = rt.installed_version()
            bar.set_postfix_str(f"{name} {backend} {mode} {dtype}{' nhwc' if cl else ''}"
                                f"{' compiled' if comp else ''}")  # fmt: skip
            skip, status = _unrunnable(rt, dev, dtype, comp, size_problem)
            if not skip and rt.takes == "onnx" and exported is None:
                exported = _export(name, backend, plan, call_for)
            if not skip and rt.takes == "onnx" and exported["status"] != "ok":
                skip, status = f"ONNX export failed: {exported['reason']}", "error"
            if skip:
                rows += [{**base, "batch_size": b, "requested_batch_size": b, "status": status,
                          "reason": skip} for b in plan.batch_sizes]  # fmt: skip
                bar.update(len(plan.batch_sizes))
                continue
            if cx is None:
                cx = _complexity(name, plan.input_size)
            if dtype not in peaks:
                peaks[dtype] = _peak_for(dev, dtype, plan.peak, plan.measure_peak)
            if rt.eager_variants:
                fn, args = measure_config, (name, info, dev, mode, dtype, cl, comp)
            else:
                path = exported["path"] if rt.takes == "onnx" else ""
                fn, args = measure_runtime_config, (name, backend, path, dev, dtype)
                base["exporter"] = exported["exporter"] if rt.takes == "onnx" else ""
            measure = functools.partial(
                call_for(backend), fn, *args, input_size=plan.input_size, timing=plan.timing,
                noisy_threshold=plan.noisy_threshold, threads=plan.threads,
            )  # fmt: skip
            for r in sweep_batch_sizes(plan.batch_sizes, measure, on_done=lambda _r: bar.update(1)):
                rows.append(_with_efficiency({**base, **r}, cx, peaks[dtype]))
    return rows


def _unrunnable(
    rt: Runtime, dev: torch.device, dtype: str, compile: bool, size_problem: str | None
) -> tuple[str | None, str]:
    """Why a configuration gets no timing (None: it runs), and the status of its rows."""
    if size_problem:
        # An input size the model cannot take is an error for eager rows (the request
        # cannot be met); runtime rows have always said "skipped" (kept as it was).
        return size_problem, "error" if rt.eager_variants else "skipped"
    reason = rt.skip_reason(dtype, provider_device(dev))
    if not reason and rt.eager_variants:  # a variant this device cannot run (fp16 on CPU)
        reason = variant_skip_reason(dev, dtype, compile)
    return reason, "skipped"


def _export(
    name: str, backend: str, plan: _Plan, call_for: Callable[[str], Callable[..., Any]]
) -> dict[str, Any]:
    """The model's ONNX file for the runtimes (in ``backend``'s worker), or the failure."""
    path = str(Path(plan.export_dir) / f"{name}.onnx")
    try:
        return call_for(backend)(export_for_speed, name, path, plan.input_size, plan.exporters)
    except Exception as err:  # a crashed worker: the export is this model's error
        return {"status": "error", "exporter": "", "reason": _short(err)}


def _with_efficiency(
    row: dict[str, Any], cx: tuple[float, float, float] | str, peak: Peak | str | None
) -> dict[str, Any]:
    """An ok row with its efficiency columns; their note joins the row's ``reason``."""
    if row["status"] != "ok":
        return row
    eff = _efficiency(row, cx, peak)
    note = eff.pop("reason", "")
    row.update(eff)
    row["reason"] = "; ".join(t for t in (row.get("reason", ""), note) if t)
    return row


def _runtime_versions(backends: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``backends`` (those not installed are left out)."""
    found = {b: RUNTIMES[b].installed_version() for b in backends}
    return {b: v for b, v in found.items() if v}


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
        # the rows run without TF32 (steps.TF32): fp32 compares with the CUDA-core peak
        return resolve_peak(dev, dtype, override=override, measure=measure, tf32=steps.TF32)
    except Exception as err:  # a failed micro-measurement must not lose the timings
        return f"peak measurement failed ({_short(err)})"
