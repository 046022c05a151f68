"""Runtime configurations of ``segbench speed`` (``--backend onnxruntime|openvino|...``).

Every entry of the runtime table (:data:`bench.deploy.backends.RUNTIMES`) without eager
variants is timed here, through its session, like an eager row (same warm-up, same
:func:`bench.speed.timing.timed_row`, same crash-isolating worker, same peak-RSS probe),
with these differences:

* a runtime that takes an ONNX file gets the model exported once per model and run
  (:func:`export_for_speed`, in the worker: an exporter crash costs that model's runtime
  rows only), with a symbolic batch axis so one file serves every batch size; a runtime
  that takes the module gets it built in the worker. Either way the weights are the same
  seeded random initialisation the eager rows time;
* the step is ``session.run(x)`` on a NumPy input (intra-op threads = the eager rows'
  torch threads, inter-op parallelism off, precision pinned and, where the library can
  say, read back);
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

from bench.core.measure import pinned_threads
from bench.deploy.backends import Runtime, get_runtime
from bench.deploy.check import agreement_columns
from bench.speed import steps
from bench.speed.memory import PeakRSS, _free_memory
from bench.speed.timing import timed_row


def provider_device(device: torch.device) -> str:
    """The runtime table's device name for a torch device (``cuda`` or ``cpu``)."""
    return "cuda" if device.type == "cuda" else "cpu"


def runtime_skip_reason(backend: str, device: torch.device, dtype: str) -> str | None:
    """Why ``backend`` cannot run ``dtype`` on ``device`` here (None: it can)."""
    return get_runtime(backend).skip_reason(dtype, provider_device(device))


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


def eager_reference(name: str, x: np.ndarray) -> np.ndarray:
    """Eager fp32 logits of ``name`` (seed-0 weights) for ``x``."""
    torch.manual_seed(0)
    model = steps._build_model(name).eval()
    with torch.inference_mode():
        return model(torch.from_numpy(x)).float().numpy()


def _source(rt: Runtime, name: str, onnx_path: str) -> Any:
    """What ``rt`` opens a session on: the exported file, or the module built here."""
    if rt.takes == "onnx":
        return Path(onnx_path)
    torch.manual_seed(0)
    return steps._build_model(name).eval()


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
    """Time ``session.run`` of one runtime configuration (runs in the worker process).

    ``onnx_path`` is the exported model for a runtime that takes ONNX ("" otherwise).
    """
    from bench.deploy.check import tolerance_for

    rt = get_runtime(backend)
    _free_memory()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 3, input_size, input_size), dtype=np.float32)
    tol = tolerance_for(name) if dtype == "fp32" else None  # reduced precision: reported
    with pinned_threads(threads) as n:
        # The reference first, outside the RSS window: the first image, a cheap batch-1 pass.
        ref = eager_reference(name, x[:1])
        _free_memory()  # hand the eager model's pages back before the RSS window opens
        with PeakRSS() as rss:
            sess = rt.session(
                _source(rt, name, onnx_path),
                threads=n,
                precision=dtype,
                device=provider_device(device),
                input_shape=tuple(x.shape),
            )
            # Prove it computes the model before timing it: fp32 must match eager fp32
            # within the model's tolerance (bench.deploy.check), else the row is an error.
            agree = agreement_columns(ref, sess.run(x)[:1], tol)
            if agree.pop("ok", True) is False:
                raise ValueError(
                    f"{backend} output differs from eager fp32: {agree['check_reason']}"
                )
            agree.pop("check_reason", None)
            row = timed_row(lambda: sess.run(x), batch_size, timing, noisy_threshold)
    detail = ", ".join(f"{k}={v}" for k, v in sess.settings.items())
    return {
        **row,
        "peak_mem_mb": math.nan, "rss_mb": rss.peak_mb, "rss_delta_mb": rss.delta_mb,
        "rss_method": rss.method,
        "backend_version": next(iter(sess.versions.values()), ""),
        "precision_detail": f"{dtype} ({detail})",
        **agree,
    }  # fmt: skip
