"""Inference sessions on deployment runtimes behind one callable: ``run(np.ndarray) -> np.ndarray``.

Every session pins what would otherwise be left to the library's defaults, because those
defaults differ between libraries and machines and silently change what is measured:

* **threads**: intra-op threads = ``threads`` (default: ``torch.get_num_threads()``, so a
  runtime gets the same cores as eager PyTorch), inter-op parallelism off (onnxruntime
  ``inter_op_num_threads=1`` with sequential execution; OpenVINO ``NUM_STREAMS=1`` with the
  ``LATENCY`` performance hint).
* **precision**: ``fp32`` means fp32 arithmetic. OpenVINO's CPU plugin defaults its
  ``INFERENCE_PRECISION_HINT`` to bf16 on CPUs with native bf16 (AVX512-BF16 / AMX), so a
  default session is a bf16 measurement labelled as nothing; here the hint is set to
  ``f32`` for ``fp32`` and ``bf16`` for ``bf16`` and then *read back from the compiled
  model*: when the plugin would compute in another precision (e.g. bf16 asked on a CPU
  without native bf16, where it quietly falls back to f32) the session is refused with the
  reason. onnxruntime's CPU provider has no bf16 execution on x86 (its bf16 fast-math GEMM
  is an ARM64 option), so ``onnxruntime`` + ``bf16`` is a skip with that reason.
* **graph optimisation**: onnxruntime ``ORT_ENABLE_ALL`` (the level a deployment uses).

CUDA / TensorRT execution providers are used only when the installed onnxruntime build
offers them and a GPU is visible; otherwise :func:`skip_reason` says why. A library that
is not installed is a skip reason too, never an ImportError escaping to the caller.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BackendUnavailable",
    "Session",
    "SessionModule",
    "make_session",
    "onnxruntime_session",
    "openvino_session",
    "runtime_versions",
    "skip_reason",
]

#: Runtime backends served here (``torch`` itself is timed by the speed harness).
BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
#: onnxruntime provider names by the short name used on the command line.
ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


class BackendUnavailable(RuntimeError):
    """A backend/precision/device combination cannot run here; the message says why."""


@dataclass
class Session:
    """A ready-to-run inference session.

    ``run`` maps an NCHW float32 array to the logits array (a copy, safe to keep).
    ``settings`` holds what was pinned and what the library reports back (threads,
    provider, precision hint read back from the compiled model...), ``versions`` the
    library versions; both go into result rows.
    """

    backend: str
    precision: str
    device: str
    run: Callable[[np.ndarray], np.ndarray]
    versions: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)
    handle: Any = None  # the library's session / compiled model, for inspection


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def runtime_versions() -> dict[str, str]:
    """Installed versions of the deployment libraries (absent ones are left out)."""
    out = {}
    for dist in ("onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "openvino"):
        v = _version(dist)
        if v:
            out[dist] = v
    return out


def _import(module: str, backend: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as err:  # ImportError, or a broken native library (OSError)
        raise BackendUnavailable(
            f"{backend}: cannot import {module} ({type(err).__name__}: {err}); "
            f"install it (pip install '{backend}')"
        ) from None


def _threads(threads: int | None) -> int:
    if threads is None:
        return torch.get_num_threads()
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(threads)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _usable(
    precision: str, device: str, threads: int | None, skip: Callable[[str, str], str | None]
) -> int:
    """Validate a session request before building it: the thread count it gets, or
    :class:`BackendUnavailable` with ``skip``'s reason (library or device absent)."""
    _check_precision(precision)
    n = _threads(threads)
    reason = skip(precision, device)
    if reason:
        raise BackendUnavailable(reason)
    return n


def _ort_skip(precision: str, device: str) -> str | None:
    try:
        ort = _import("onnxruntime", "onnxruntime")
    except BackendUnavailable as err:
        return str(err)
    if device not in ORT_PROVIDERS:
        return f"onnxruntime: unknown device {device!r} (one of {', '.join(ORT_PROVIDERS)})"
    provider = ORT_PROVIDERS[device]
    if provider not in ort.get_available_providers():
        return (
            f"onnxruntime {ort.__version__} offers no {provider} here (available: "
            f"{', '.join(ort.get_available_providers())}); a GPU build (onnxruntime-gpu) "
            "and a visible GPU are needed"
        )
    if device in ("cuda", "tensorrt"):
        if not torch.cuda.is_available():
            return f"onnxruntime: {provider} is installed but no CUDA device is visible"
    if precision == "bf16" and device == "cpu":
        return (
            "onnxruntime: the CPU execution provider has no bf16 execution on x86 (its bf16 "
            "fast-math GEMM is an ARM64 option); bf16 runs on torch autocast or OpenVINO"
        )
    if precision == "bf16":
        return f"onnxruntime: bf16 on {provider} is not set up in segbench (fp32 only)"
    return None


def _ov_skip(precision: str, device: str) -> str | None:
    try:
        ov = _import("openvino", "openvino")
    except BackendUnavailable as err:
        return str(err)
    if device != "cpu":
        return f"openvino: only the CPU plugin is set up in segbench, got device {device!r}"
    try:
        caps = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as err:
        return f"openvino: the CPU plugin does not load ({type(err).__name__}: {err})"
    if precision == "bf16" and "BF16" not in caps:
        return (
            "openvino: this CPU has no native bf16 (CPU plugin capabilities: "
            f"{', '.join(caps)}); a bf16 hint would silently run in f32"
        )
    return None


def skip_reason(backend: str, precision: str = "fp32", device: str = "cpu") -> str | None:
    """Why ``backend`` cannot run ``precision`` on ``device`` here, or None when it can.

    ``device`` is ``cpu``, ``cuda`` or ``tensorrt`` (onnxruntime execution providers).
    """
    _check_precision(precision)
    if backend == "onnxruntime":
        return _ort_skip(precision, device)
    if backend == "openvino":
        return _ov_skip(precision, device)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def onnxruntime_session(
    onnx_path: str | Path,
    *,
    threads: int | None = None,
    precision: str = "fp32",
    device: str = "cpu",
) -> Session:
    """An onnxruntime session: full graph optimisation, ``threads`` intra-op, 1 inter-op.

    Raises :class:`BackendUnavailable` (with the reason) when the combination cannot run.
    """
    n = _usable(precision, device, threads, _ort_skip)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    provider = ORT_PROVIDERS[device]
    providers = [provider] + (
        ["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else []
    )
    sess = ort.InferenceSession(str(onnx_path), opts, providers=providers)
    if sess.get_providers()[0] != provider:
        raise BackendUnavailable(
            f"onnxruntime: asked for {provider}, the session uses {sess.get_providers()}"
        )
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run([out_name], {in_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return Session(
        backend="onnxruntime",
        precision=precision,
        device=device,
        run=run,
        versions={"onnxruntime": ort.__version__},
        settings={
            "provider": provider,
            "intra_op_num_threads": opts.intra_op_num_threads,
            "inter_op_num_threads": opts.inter_op_num_threads,
            "graph_optimization_level": str(opts.graph_optimization_level),
        },
        handle=sess,
    )


def openvino_session(
    onnx_path: str | Path,
    *,
    threads: int | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    input_shape: tuple[int, ...] | None = None,
) -> Session:
    """An OpenVINO CPU session with the inference precision and thread count pinned.

    The compiled model's ``INFERENCE_PRECISION_HINT`` and ``INFERENCE_NUM_THREADS`` are read
    back; a mismatch with what was asked raises :class:`BackendUnavailable` rather than
    timing another precision under this one's name. ``input_shape`` reshapes a graph with a
    symbolic batch axis to that static shape before compiling (OpenVINO plans its kernels
    for static shapes; a dynamic graph would be timed on its slower dynamic path).
    """
    n = _usable(precision, device, threads, _ov_skip)
    import openvino as ov

    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
        "INFERENCE_NUM_THREADS": n,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }
    model = core.read_model(str(onnx_path))
    if input_shape is not None:
        model.reshape({model.inputs[0]: ov.PartialShape([int(d) for d in input_shape])})
    compiled = core.compile_model(model, "CPU", config)
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    got_precision = got.get_type_name() if isinstance(got, ov.Type) else str(got)
    got_threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    if got_precision != _OV_PRECISION[precision]:
        raise BackendUnavailable(
            f"openvino: asked INFERENCE_PRECISION_HINT={_OV_PRECISION[precision]}, the compiled "
            f"model reports {got_precision}"
        )
    if got_threads != n:
        raise BackendUnavailable(
            f"openvino: asked INFERENCE_NUM_THREADS={n}, the compiled model reports {got_threads}"
        )
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return request.get_output_tensor(0).data.copy()

    return Session(
        backend="openvino",
        precision=precision,
        device=device,
        run=run,
        versions={"openvino": ov.__version__.split("-")[0]},
        settings={
            "inference_precision_hint": got_precision,
            "inference_num_threads": got_threads,
            "num_streams": int(compiled.get_property("NUM_STREAMS")),
            "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
        },
        handle=compiled,
    )


def make_session(
    backend: str,
    onnx_path: str | Path,
    *,
    threads: int | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    input_shape: tuple[int, ...] | None = None,
) -> Session:
    """Dispatch to :func:`onnxruntime_session` / :func:`openvino_session` by name.

    ``input_shape`` is the static input shape the session will see (OpenVINO compiles for
    it; onnxruntime takes any shape the graph allows).
    """
    if backend == "onnxruntime":
        return onnxruntime_session(onnx_path, threads=threads, precision=precision, device=device)
    if backend == "openvino":
        return openvino_session(
            onnx_path, threads=threads, precision=precision, device=device, input_shape=input_shape
        )
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


class SessionModule(torch.nn.Module):
    """A :class:`Session` behind the ``nn.Module`` call interface (CPU tensors in and out).

    Lets code written for PyTorch models (e.g. the evaluation loop) score a runtime's
    output: ``module(x)`` runs ``session.run(x.numpy())`` and wraps the result. No
    gradients, no device moves; ``train()`` / ``eval()`` are accepted and ignored.
    """

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(np.ascontiguousarray(self.session.run(arr)))
