"""Deployment-runtime configurations of ``segbench speed`` (``--backend onnxruntime|openvino``).

A runtime row is timed like an eager one (same warm-up, same :func:`time_step` loop, same
statistics, same crash-isolating worker, same peak-RSS probe), with these differences:

* the model is first exported to ONNX once per model and run (:func:`export_for_speed`,
  in the worker: an exporter crash costs that model's runtime rows only), with a symbolic
  batch axis so one file serves every batch size; the weights are the same seeded random
  initialisation the eager rows time;
* the step is ``session.run(x)`` on a NumPy input (onnxruntime / OpenVINO sessions from
  :mod:`bench.deploy.backends`, intra-op threads = the eager rows' torch threads, inter-op
  parallelism off, precision pinned and, for OpenVINO, read back);
* inference only (the runtimes are deployment targets; no training rows);
* before timing, the runtime's output on the first image is compared with eager fp32: an
  fp32 row outside the model's tolerance (:data:`bench.deploy.check.TOLERANCES`) is an
  ``error`` row with the differences, never a timing (bf16 is reported, not judged);
* every row records the library version (``backend_version``), the precision the library
  says it computes in (``precision_detail``) and the output's agreement with eager fp32
  PyTorch on the first image of the timed batch (``out_max_abs_diff``, ``out_rel_max_diff``
  = that over the largest |logit|, ``out_mask_diff`` = fraction of thresholded mask pixels
  that differ).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.speed import steps
from bench.speed.memory import PeakRSS, _free_memory
from bench.speed.steps import _num_threads
from bench.speed.timing import summarize, time_step

#: Backends ``segbench speed`` knows; ``torch`` is eager PyTorch (the variants of steps.py).
BACKENDS = ("torch", "onnxruntime", "openvino")
RUNTIME_BACKENDS = ("onnxruntime", "openvino")


def runtime_skip_reason(backend: str, device: torch.device, dtype: str) -> str | None:
    """Why ``backend`` cannot run ``dtype`` on ``device`` here (None: it can)."""
    from bench.deploy.backends import skip_reason

    if dtype == "fp16":
        return f"{backend}: fp16 is not set up in segbench (fp32 and bf16 only)"
    if backend == "openvino" and device.type != "cpu":
        return f"openvino: only the CPU plugin is set up in segbench, not {device.type}"
    return skip_reason(backend, dtype, "cuda" if device.type == "cuda" else "cpu")


def export_for_speed(
    name: str, path: str, input_size: int, exporters: tuple[str, ...]
) -> dict[str, Any]:
    """Export registered model ``name`` (seed-0 random weights, as the eager rows) to ``path``.

    Runs in the worker. Returns the export row of :func:`bench.deploy.export.export_onnx`.
    """
    from bench.deploy.export import export_onnx

    torch.manual_seed(0)
    model = steps._build_model(name).eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, input_size, input_size, generator=gen)
    return export_onnx(model, path, example, exporters=exporters, dynamic_batch=True)


def agreement(reference: np.ndarray, output: np.ndarray, tolerance: Any = None) -> dict[str, Any]:
    """Output agreement columns of a speed row (see the module docstring).

    With a :class:`bench.deploy.check.Tolerance`, also ``ok`` and ``check_reason``.
    """
    from bench.deploy.check import compare_outputs

    res = compare_outputs(reference, output, tolerance=tolerance)
    out = {
        "out_max_abs_diff": res["max_abs_diff"],
        "out_rel_max_diff": res["rel_max_diff"],
        "out_mask_diff": res["mask_diff_fraction"],
    }
    if tolerance is not None:
        out.update(ok=res["ok"], check_reason=res["check_reason"])
    return out


def eager_reference(name: str, x: np.ndarray) -> np.ndarray:
    """Eager fp32 logits of ``name`` (seed-0 weights) for ``x``."""
    torch.manual_seed(0)
    model = steps._build_model(name).eval()
    with torch.inference_mode():
        return model(torch.from_numpy(x)).float().numpy()


def measure_runtime_config(
    name: str,
    backend: str,
    onnx_path: str,
    device: torch.device,
    dtype: str,
    batch_size: int,
    *,
    input_size: int,
    timing: dict[str, Any],
    noisy_threshold: float,
    threads: int | None,
) -> dict[str, Any]:
    """Time ``session.run`` of one runtime configuration (runs in the worker process)."""
    from bench.deploy.backends import make_session
    from bench.deploy.check import tolerance_for

    _free_memory()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 3, input_size, input_size), dtype=np.float32)
    provider_device = "cuda" if device.type == "cuda" else "cpu"
    tol = tolerance_for(name) if dtype == "fp32" else None  # reduced precision: reported
    with _num_threads(threads) as n:
        # The reference first, outside the RSS window: the first image, a cheap batch-1 pass.
        ref = eager_reference(name, x[:1])
        _free_memory()  # hand the eager model's pages back before the RSS window opens
        with PeakRSS() as rss:
            sess = make_session(
                backend,
                Path(onnx_path),
                threads=n,
                precision=dtype,
                device=provider_device,
                input_shape=tuple(x.shape),
            )
            # Prove it computes the model before timing it: fp32 must match eager fp32
            # within the model's tolerance (bench.deploy.check), else the row is an error.
            agree = agreement(ref, sess.run(x)[:1], tol)
            if agree.pop("ok", True) is False:
                raise ValueError(
                    f"{backend} output differs from eager fp32: {agree['check_reason']}"
                )
            agree.pop("check_reason", None)
            warm = {**timing, "warmup": max(1, int(timing["warmup"]))}
            times, capped = time_step(lambda: sess.run(x), "cpu", **warm)
    st = summarize(times, noisy_threshold)
    detail = ", ".join(f"{k}={v}" for k, v in sess.settings.items())
    notes = []
    if capped:
        notes.append(
            f"max time {timing['max_time_s']:g} s reached after {st.count} of "
            f"{timing['min_iters']} iterations"
        )
    return {
        "median_ms": st.median_ms, "iqr_ms": st.iqr_ms, "p90_ms": st.p90_ms,
        "mean_ms": st.mean_ms, "count": st.count, "noisy": st.noisy or capped,
        "throughput_img_s": batch_size / (st.median_ms / 1e3) if st.median_ms > 0 else math.nan,
        "peak_mem_mb": math.nan, "rss_mb": rss.peak_mb, "rss_delta_mb": rss.delta_mb,
        "rss_method": rss.method, "reason": "; ".join(notes),
        "backend_version": next(iter(sess.versions.values()), ""),
        "precision_detail": f"{dtype} ({detail})",
        **agree,
    }  # fmt: skip
