"""The runtime table: one :class:`Runtime` entry per way of running a model, and its sessions.

:data:`RUNTIMES` holds eager PyTorch, onnxruntime and OpenVINO. Each entry declares why it
cannot run a (precision, device) here (:meth:`Runtime.skip_reason`), what it is built from
(the ``nn.Module`` itself or an exported ONNX file), how it opens a session (the timed step
is ``Session.run(np.ndarray) -> np.ndarray``) and which installed library it is. Both
``segbench speed`` (:mod:`bench.speed.run`) and ``segbench export --int8/--bf16``
(:mod:`bench.jobs.precision`) read the table, so adding a runtime is a session function
and one entry here.

Every session pins what would otherwise be left to the library's defaults, because those
defaults differ between libraries and machines and silently change what is measured:

* **threads**: intra-op threads = ``threads`` (default: ``torch.get_num_threads()``, so a
  runtime gets the same cores as eager PyTorch), inter-op parallelism off (onnxruntime
  ``inter_op_num_threads=1`` with sequential execution; OpenVINO ``NUM_STREAMS=1`` with the
  ``LATENCY`` performance hint). Eager PyTorch's threads are process-wide, so its caller
  pins them (:func:`bench.core.measure.pinned_threads`) and the session records them.
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

from bench.core.measure import thread_count
from bench.core.precision import DTYPES

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "BackendUnavailable",
    "Runtime",
    "Session",
    "SessionModule",
    "get_runtime",
    "make_session",
    "onnxruntime_session",
    "openvino_session",
    "runtime_versions",
    "skip_reason",
    "torch_session",
]

#: Precisions an ONNX-runtime session can be asked for (entries may declare fewer).
PRECISIONS = ("fp32", "bf16")
#: Every precision name a caller may ask a runtime about (``segbench speed --dtype``):
#: the project's dtype names
ASKABLE_PRECISIONS = DTYPES
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


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _usable(
    precision: str, device: str, threads: int | None, skip: Callable[[str, str], str | None]
) -> int:
    """Validate a session request before building it: the thread count it gets, or
    :class:`BackendUnavailable` with ``skip``'s reason (library or device absent)."""
    _check_precision(precision)
    n = thread_count(threads)
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
    if device != "cpu":
        return f"openvino: only the CPU plugin is set up in segbench, not {device}"
    try:
        ov = _import("openvino", "openvino")
    except BackendUnavailable as err:
        return str(err)
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


def _torch_skip(precision: str, device: str) -> str | None:
    if device not in ("cpu", "cuda"):
        return f"torch: no eager session on device {device!r} (cpu or cuda)"
    if device == "cuda" and not torch.cuda.is_available():
        return "torch: no CUDA device is visible"
    return None


def torch_session(
    model: torch.nn.Module,
    *,
    threads: int | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    input_shape: tuple[int, ...] | None = None,
) -> Session:
    """Eager PyTorch as a session: ``model`` in eval mode under ``inference_mode``, with
    bf16/fp16 autocast for a reduced ``precision``; float32 logits out.

    torch's thread count is process-wide, so the caller pins it
    (:func:`bench.core.measure.pinned_threads`); the session records the count in effect.
    """
    from bench.core.precision import autocast_context

    reason = _torch_skip(precision, device)
    if reason:
        raise BackendUnavailable(reason)
    thread_count(threads)  # a bad count is refused here as by the other sessions
    model = model.to(device).eval()
    amp = None if precision == "fp32" else precision

    def run(x: np.ndarray) -> np.ndarray:
        inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        with torch.inference_mode(), autocast_context(device, amp):
            return model(inp).float().cpu().numpy()

    return Session(
        backend="torch",
        precision=precision,
        device=device,
        run=run,
        versions={"torch": torch.__version__},
        settings={"autocast": amp or "off", "torch_threads": torch.get_num_threads()},
        handle=model,
    )


@dataclass(frozen=True)
class Runtime:
    """One way of running a model: everything a harness needs to time it.

    ``takes`` says what :attr:`open` is built from: ``"module"`` (the ``nn.Module``
    itself) or ``"onnx"`` (the path of the exported ONNX file; such a runtime also runs
    int8-quantized graphs). ``open(source, *, threads, precision, device, input_shape)``
    returns the :class:`Session` whose ``run`` is the timed step. ``skip(precision,
    device)`` says why it cannot run here (library absent, device or precision not
    offered), or None. ``dist`` is the distribution whose installed version names it.
    ``eager_variants``: ``segbench speed`` also times its training step, channels_last
    and ``torch.compile`` variants with its own step (:func:`bench.speed.steps.make_step`);
    only eager PyTorch has them.
    """

    name: str
    takes: str
    open: Callable[..., Session]
    skip: Callable[[str, str], str | None]
    dist: str
    precisions: tuple[str, ...] = PRECISIONS
    eager_variants: bool = False

    def skip_reason(self, precision: str = "fp32", device: str = "cpu") -> str | None:
        """Why this runtime cannot run ``precision`` on ``device`` here, or None."""
        if precision not in ASKABLE_PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(ASKABLE_PRECISIONS)}, got {precision!r}"
            )
        if precision not in self.precisions:
            return (
                f"{self.name}: {precision} is not set up in segbench "
                f"({' and '.join(self.precisions)} only)"
            )
        return self.skip(precision, device)

    def session(
        self,
        source: Any,
        *,
        threads: int | None = None,
        precision: str = "fp32",
        device: str = "cpu",
        input_shape: tuple[int, ...] | None = None,
    ) -> Session:
        """Open a session on ``source`` (a module or an ONNX path, see ``takes``);
        :class:`BackendUnavailable` with the reason when it cannot run here."""
        reason = self.skip_reason(precision, device)
        if reason:
            raise BackendUnavailable(reason)
        return self.open(
            source, threads=threads, precision=precision, device=device, input_shape=input_shape
        )

    def installed_version(self) -> str:
        """The installed version of :attr:`dist` ("" when it is not installed)."""
        return _version(self.dist) or ""


def _onnxruntime_open(path: str | Path, *, input_shape: Any = None, **kw: Any) -> Session:
    return onnxruntime_session(path, **kw)  # takes any shape the graph allows


#: The runtime table, in the order rows and variants are listed. Adding a runtime: write
#: its session function (and skip reason) above, then add its entry here.
RUNTIMES: dict[str, Runtime] = {
    "torch": Runtime(
        "torch",
        takes="module",
        open=torch_session,
        skip=_torch_skip,
        dist="torch",
        precisions=("fp32", "bf16", "fp16"),
        eager_variants=True,
    ),
    "onnxruntime": Runtime(
        "onnxruntime", takes="onnx", open=_onnxruntime_open, skip=_ort_skip, dist="onnxruntime"
    ),
    "openvino": Runtime(
        "openvino", takes="onnx", open=openvino_session, skip=_ov_skip, dist="openvino"
    ),
}


def get_runtime(name: str) -> Runtime:
    """The :data:`RUNTIMES` entry ``name`` (ValueError naming the known ones otherwise)."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"backend must be one of {', '.join(RUNTIMES)}, got {name!r}") from None


def skip_reason(backend: str, precision: str = "fp32", device: str = "cpu") -> str | None:
    """Why ``backend`` cannot run ``precision`` on ``device`` here, or None when it can.

    ``device`` is ``cpu``, ``cuda`` or ``tensorrt`` (onnxruntime execution providers).
    """
    return get_runtime(backend).skip_reason(precision, device)


def make_session(
    backend: str,
    source: Any,
    *,
    threads: int | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    input_shape: tuple[int, ...] | None = None,
) -> Session:
    """A session of runtime ``backend`` on ``source`` (:meth:`Runtime.session`).

    ``input_shape`` is the static input shape the session will see (OpenVINO compiles for
    it; onnxruntime takes any shape the graph allows).
    """
    return get_runtime(backend).session(
        source, threads=threads, precision=precision, device=device, input_shape=input_shape
    )
