"""The machine's compute and memory ceiling, measured with every library that can reach it.

A roofline fraction is only as honest as its peak. Taking the peak from one library's
matmul measures that library, not the machine: in issue 13's report (a 2-core AVX-512 VM)
a 2048x2048 fp32 matmul ran at about 210 GFLOP/s in torch, 240 in numpy and 460 in
onnxruntime, so a torch-only peak put models "above 100 % of the roofline". Here the peak
is the best of:

* **GEMM** (compute): a square fp32 ``n x n`` matmul (default 2048: large enough to be
  compute-bound, small enough to take well under a second) timed in torch (``torch.mm``),
  numpy (``a @ b``, its BLAS), onnxruntime (a one-node ``MatMul`` graph built with
  ``onnx.helper``, full optimisation) and OpenVINO (a one-node ``MatMul`` model, inference
  precision pinned to f32: on a bf16-capable CPU its default would be a bf16 GEMM).
  FLOPs = ``2 n^3``.
* **convolution** (compute): one 3x3 fp32 convolution, ``c`` channels in and out on a
  ``s x s`` map at batch 1 (default 512 on 32x32, a U-Net bottleneck), in torch
  (``conv2d``) and onnxruntime (a one-node ``Conv`` graph); FLOPs = ``2 c^2 9 s^2``.
  A library's direct convolution kernel can beat its own GEMM: on the AVX-512 EPYC VM
  of 2026-12-07 the best GEMM was 199 GFLOP/s and this convolution 218, and onnxruntime ran
  UNet at 204, which a GEMM-only peak called 102 % of the roofline.
* **bandwidth** (memory): a large fp32 copy (default 256 MiB, far beyond the caches) with
  torch ``copy_`` and numpy ``copyto``; bytes = read + write (``2 x size``, as STREAM's
  copy counts them; write-allocate traffic is not added).

Every backend runs with the same thread count (default ``torch.get_num_threads()``):
torch via ``set_num_threads``, onnxruntime/OpenVINO via their session options, numpy's BLAS
via ``threadpoolctl`` when it is installed (otherwise the row says the BLAS used its own
default). Each figure is the best of ``reps`` timed runs after one warm-up (a peak is an
upper bound). A backend that is absent or fails is a row with a reason, never the peak.
The result records which backend (and probe) reached each ceiling; :func:`machine_peak`
returns it as a :class:`Peak` whose ``source`` names the backend and
lists all figures.

``dtype="bf16"``: the candidates are the fp32 probes above (a bf16 row can never be held to
less than what fp32 reaches) plus torch's bf16 ``mm`` and OpenVINO with its precision hint
pinned to bf16 (skipped, with the reason, on CPUs without native bf16, where the plugin
would run f32). :func:`cached_machine_peak` measures once per (dtype, threads) per process;
:func:`bench.cost.roofline.resolve_peak` uses it for CPUs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench.core.measure import best_seconds as _best_seconds
from bench.core.measure import pinned_threads as _torch_threads

__all__ = [
    "Peak",
    "BF16_GEMM_BACKENDS",
    "CONV_BACKENDS",
    "COPY_BACKENDS",
    "GEMM_BACKENDS",
    "MachinePeak",
    "Measurement",
    "best",
    "cached_machine_peak",
    "machine_peak",
    "measure_bandwidth",
    "measure_conv",
    "measure_gemm",
]


@dataclass(frozen=True)
class Measurement:
    """One backend's figure: ``value`` in GFLOP/s (GEMM, conv) or GB/s (copy); NaN unless ok."""

    backend: str
    kind: str  # "gemm", "conv" or "copy"
    value: float
    seconds: float
    status: str  # "ok", "skipped", "error"
    reason: str = ""


@dataclass(frozen=True)
class Peak:
    """Peak compute (TFLOP/s) and memory bandwidth (GB/s) with where they came from.

    Defined here, where the machine peak is measured, and used by
    :mod:`bench.cost.roofline` (which imports this module, never the other way round).
    """

    tflops: float
    gbps: float
    source: str

    def __post_init__(self) -> None:
        if not (self.tflops > 0 and self.gbps > 0 and math.isfinite(self.tflops + self.gbps)):
            raise ValueError(
                f"peak must be positive and finite, got {self.tflops} TFLOP/s, {self.gbps} GB/s"
            )


@dataclass(frozen=True)
class MachinePeak:
    """The measured peak plus every backend's figure (for the results file)."""

    peak: Peak
    compute_backend: str
    bandwidth_backend: str
    threads: int
    gemm: list[Measurement] = field(default_factory=list)
    bandwidth: list[Measurement] = field(default_factory=list)
    conv: list[Measurement] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tflops": self.peak.tflops,
            "gbps": self.peak.gbps,
            "source": self.peak.source,
            "compute_backend": self.compute_backend,
            "bandwidth_backend": self.bandwidth_backend,
            "threads": self.threads,
            "gemm": [asdict(m) for m in self.gemm],
            "conv": [asdict(m) for m in self.conv],
            "bandwidth": [asdict(m) for m in self.bandwidth],
        }


_DTYPES = ("fp32", "bf16")


class _Skip(Exception):
    """A backend that cannot be measured here (not installed); the message says why."""


@contextlib.contextmanager
def _blas_threads(threads: int) -> Iterator[str]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield "numpy BLAS threads not pinned (threadpoolctl not installed)"
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield ""


def _operands(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((n, n), dtype=np.float32),
        rng.standard_normal((n, n), dtype=np.float32),
    )


def _gemm_torch(n: int, threads: int, reps: int) -> float:
    import torch

    a, b = (torch.from_numpy(x) for x in _operands(n))
    with _torch_threads(threads):
        return _best_seconds(lambda: torch.mm(a, b), reps)


def _gemm_numpy(n: int, threads: int, reps: int) -> float:
    a, b = _operands(n)
    with _blas_threads(threads):
        return _best_seconds(lambda: a @ b, reps)


def _matmul_onnx(n: int) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _gemm_onnxruntime(n: int, threads: int, reps: int) -> float:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise _Skip(f"onnxruntime not installed ({err})") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(_matmul_onnx(n), opts, providers=["CPUExecutionProvider"])
    a, b = _operands(n)
    return _best_seconds(lambda: sess.run(None, {"a": a, "b": b}), reps)


def _gemm_openvino(n: int, threads: int, reps: int, precision: str = "f32") -> float:
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError as err:
        raise _Skip(f"openvino not installed ({err})") from None
    if precision == "bf16":
        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            raise _Skip(f"no native bf16 on this CPU (OpenVINO CPU capabilities: {list(caps)})")
    pa = ops.parameter([n, n], np.float32, name="a")
    pb = ops.parameter([n, n], np.float32, name="b")
    model = ov.Model([ops.matmul(pa, pb, False, False)], [pa, pb], "gemm")
    compiled = ov.Core().compile_model(
        model,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": precision,  # the default is bf16 on bf16-capable CPUs
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    if got.get_type_name() != precision:
        raise RuntimeError(f"OpenVINO compiled the GEMM in {got.get_type_name()}, not {precision}")
    request = compiled.create_infer_request()
    a, b = _operands(n)
    return _best_seconds(lambda: request.infer({0: a, 1: b}), reps)


def _gemm_torch_bf16(n: int, threads: int, reps: int) -> float:
    import torch

    from bench.core.device import cpu_bf16_native

    if not cpu_bf16_native():
        # emulated bf16 is slower than fp32 and would only cost time: fp32 bounds the row
        raise _Skip("no native bf16 on this CPU (torch sees neither AVX512-BF16 nor AMX)")

    a, b = (torch.from_numpy(x).to(torch.bfloat16) for x in _operands(n))
    with _torch_threads(threads):
        return _best_seconds(lambda: torch.mm(a, b), reps)


def _gemm_openvino_bf16(n: int, threads: int, reps: int) -> float:
    return _gemm_openvino(n, threads, reps, precision="bf16")


def _conv_operands(c: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((1, c, s, s), dtype=np.float32),
        rng.standard_normal((c, c, 3, 3), dtype=np.float32),
    )


def _conv_torch(c: int, s: int, threads: int, reps: int) -> float:
    import torch
    import torch.nn.functional as F

    x, w = (torch.from_numpy(a) for a in _conv_operands(c, s))
    with _torch_threads(threads), torch.inference_mode():
        return _best_seconds(lambda: F.conv2d(x, w, padding=1), reps)


def _conv_onnx(c: int, s: int, w: np.ndarray) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, s, s])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, s, s])
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "conv", [x], [y], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _conv_onnxruntime(c: int, s: int, threads: int, reps: int) -> float:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise _Skip(f"onnxruntime not installed ({err})") from None
    x, w = _conv_operands(c, s)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(_conv_onnx(c, s, w), opts, providers=["CPUExecutionProvider"])
    return _best_seconds(lambda: sess.run(None, {"x": x}), reps)


def _copy_torch(numel: int, threads: int, reps: int) -> float:
    import torch

    src = torch.ones(numel, dtype=torch.float32)
    dst = torch.empty_like(src)
    with _torch_threads(threads):
        return _best_seconds(lambda: dst.copy_(src), reps)


def _copy_numpy(numel: int, threads: int, reps: int) -> float:
    src = np.ones(numel, dtype=np.float32)
    dst = np.empty_like(src)
    return _best_seconds(lambda: np.copyto(dst, src), reps)  # single-threaded by design


#: GEMM timers ``(n, threads, reps) -> best seconds``; tests substitute entries.
GEMM_BACKENDS: dict[str, Callable[[int, int, int], float]] = {
    "torch": _gemm_torch,
    "numpy": _gemm_numpy,
    "onnxruntime": _gemm_onnxruntime,
    "openvino": _gemm_openvino,
}
#: Extra GEMM timers for the bf16 peak (measured besides :data:`GEMM_BACKENDS`).
BF16_GEMM_BACKENDS: dict[str, Callable[[int, int, int], float]] = {
    "torch-bf16": _gemm_torch_bf16,
    "openvino-bf16": _gemm_openvino_bf16,
}
#: 3x3 convolution timers ``(channels, size, threads, reps) -> best seconds``.
CONV_BACKENDS: dict[str, Callable[[int, int, int, int], float]] = {
    "torch": _conv_torch,
    "onnxruntime": _conv_onnxruntime,
}
#: Copy timers ``(numel, threads, reps) -> best seconds``.
COPY_BACKENDS: dict[str, Callable[[int, int, int], float]] = {
    "torch": _copy_torch,
    "numpy": _copy_numpy,
}


def _note(kind: str, backend: str) -> str:
    """What a row should say about how its threads were (not) pinned."""
    if (kind, backend) == ("copy", "numpy"):
        return "numpy copyto is single-threaded"
    if (kind, backend) == ("gemm", "numpy"):
        try:
            import threadpoolctl  # noqa: F401
        except ImportError:
            return "numpy BLAS threads not pinned (threadpoolctl not installed)"
    return ""


def _measure(
    kind: str,
    timers: Mapping[str, Callable[[int, int, int], float]],
    size: int,
    work: float,
    threads: int,
    reps: int,
    backends: Sequence[str] | None,
) -> list[Measurement]:
    out = []
    for name in backends if backends is not None else list(timers):
        if name not in timers:
            raise ValueError(f"unknown {kind} backend {name!r} (one of {', '.join(timers)})")
        note = _note(kind, name)
        try:
            sec = float(timers[name](size, threads, reps))
            if not (sec > 0 and math.isfinite(sec)):
                raise RuntimeError(f"timer returned {sec!r} s")
        except _Skip as err:
            out.append(Measurement(name, kind, math.nan, math.nan, "skipped", str(err)))
            continue
        except Exception as err:  # a backend failing is a row, not the end of the peak
            reason = f"{type(err).__name__}: {str(err).strip()[:200]}"
            out.append(Measurement(name, kind, math.nan, math.nan, "error", reason))
            continue
        out.append(Measurement(name, kind, work / sec / 1e9, sec, "ok", note))
    return out


def _threads_or_default(threads: int | None) -> int:
    if threads is None:
        import torch

        return torch.get_num_threads()
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(threads)


def measure_gemm(
    n: int = 2048,
    threads: int | None = None,
    reps: int = 5,
    backends: Sequence[str] | None = None,
    dtype: str = "fp32",
) -> list[Measurement]:
    """``n x n`` GEMM GFLOP/s (``2 n^3`` FLOPs) per backend, best of ``reps``.

    ``dtype="bf16"`` adds :data:`BF16_GEMM_BACKENDS` to the fp32 ones.
    """
    if n < 1 or reps < 1:
        raise ValueError(f"need n >= 1 and reps >= 1, got {n}, {reps}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    t = _threads_or_default(threads)
    timers = {**GEMM_BACKENDS, **(BF16_GEMM_BACKENDS if dtype == "bf16" else {})}
    return _measure("gemm", timers, n, 2.0 * n**3, t, reps, backends)


def measure_conv(
    channels: int = 512,
    size: int = 32,
    threads: int | None = None,
    reps: int = 5,
    backends: Sequence[str] | None = None,
) -> list[Measurement]:
    """GFLOP/s of one 3x3 convolution, ``channels`` in and out on a ``size x size`` map at
    batch 1 (``2 c^2 9 s^2`` FLOPs, the count segbench's MAC counter gives), per backend."""
    if channels < 1 or size < 1 or reps < 1:
        raise ValueError(f"need channels, size and reps >= 1, got {channels}, {size}, {reps}")
    t = _threads_or_default(threads)
    timers = {
        name: (lambda c, th, r, fn=fn: fn(c, size, th, r)) for name, fn in CONV_BACKENDS.items()
    }
    return _measure("conv", timers, channels, 2.0 * channels**2 * 9 * size**2, t, reps, backends)


def measure_bandwidth(
    mib: float = 256,
    threads: int | None = None,
    reps: int = 5,
    backends: Sequence[str] | None = None,
) -> list[Measurement]:
    """GB/s of an fp32 copy of ``mib`` MiB per backend (read + write counted), best of ``reps``."""
    if mib <= 0 or reps < 1:
        raise ValueError(f"need mib > 0 and reps >= 1, got {mib}, {reps}")
    numel = int(mib * 2**20) // 4
    t = _threads_or_default(threads)
    return _measure("copy", COPY_BACKENDS, numel, 2.0 * numel * 4, t, reps, backends)


def best(measurements: Sequence[Measurement]) -> Measurement:
    """The ok measurement with the largest value; ValueError naming each failure if none."""
    ok = [m for m in measurements if m.status == "ok"]
    if not ok:
        why = "; ".join(f"{m.backend}: {m.reason or m.status}" for m in measurements)
        raise ValueError(f"no backend could be measured ({why or 'none given'})")
    return max(ok, key=lambda m: m.value)


def _listing(ms: Sequence[Measurement], unit: str) -> str:
    return (
        ", ".join(
            f"{m.backend} {m.value:.0f}" if m.status == "ok" else f"{m.backend} {m.status}"
            for m in ms
        )
        + f" {unit}"
    )


def machine_peak(
    threads: int | None = None,
    *,
    dtype: str = "fp32",
    n: int = 2048,
    conv_channels: int = 512,
    conv_size: int = 32,
    copy_mib: float = 256,
    reps: int = 5,
    gemm_backends: Sequence[str] | None = None,
    conv_backends: Sequence[str] | None = None,
    copy_backends: Sequence[str] | None = None,
) -> MachinePeak:
    """Measure GEMM, convolution and copy with every backend; the best compute figure (GEMM
    or convolution) and the best copy are the machine's peak."""
    t = _threads_or_default(threads)
    gemm = measure_gemm(n, t, reps, gemm_backends, dtype=dtype)
    conv = measure_conv(conv_channels, conv_size, t, reps, conv_backends)
    copy = measure_bandwidth(copy_mib, t, reps, copy_backends)
    g, c = best(gemm + conv), best(copy)
    probe = f"{n}x{n} GEMM" if g.kind == "gemm" else f"3x3 conv {conv_channels}ch {conv_size}px"
    source = (
        f"measured: best {dtype} compute = {g.backend} {probe} "
        f"({n}x{n} GEMM: {_listing(gemm, 'GFLOP/s')}; "
        f"3x3 conv {conv_channels}ch {conv_size}px: {_listing(conv, 'GFLOP/s')}); "
        f"best {copy_mib:g} MiB copy = {c.backend} ({_listing(copy, 'GB/s')}); "
        f"{t} threads, best of {reps}"
    )
    backend = g.backend if g.kind == "gemm" else f"{g.backend} conv"
    return MachinePeak(
        Peak(g.value / 1e3, c.value, source), backend, c.backend, t, gemm, copy, conv
    )


_CACHE: dict[tuple[str, int], MachinePeak] = {}


def cached_machine_peak(dtype: str = "fp32", threads: int | None = None) -> MachinePeak:
    """:func:`machine_peak` with the defaults, measured once per (dtype, threads) per process."""
    key = (dtype, _threads_or_default(threads))
    if key not in _CACHE:
        _CACHE[key] = machine_peak(key[1], dtype=dtype)
    return _CACHE[key]
