"""int8 quantization of an exported fp32 ONNX graph with onnxruntime's quantization tools.

Two modes (onnxruntime.quantization, the maintained implementation; nothing hand-written):

* ``dynamic``: weights quantized ahead of time, activation ranges computed per call
  (``quantize_dynamic``). No data needed; convolutions become ``ConvInteger``.
* ``static``: weights and activations quantized ahead of time (``quantize_static``) in the
  QDQ format, activation ranges calibrated (MinMax) on images the caller supplies, e.g.
  the training split. Per-channel weight scales.

Type choices follow onnxruntime's guidance for x86 CPUs: activations uint8, weights int8
(U8S8). On CPUs without VNNI instructions the U8S8 integer GEMM can saturate its 16-bit
intermediate sums, so ``reduce_range`` (7-bit weights) is on there by default and off
where the CPU reports ``avx512_vnni`` / ``avx_vnni`` (see :func:`cpu_has_vnni`).

The fp32 graph is first run through ``quant_pre_process`` (shape inference and graph
optimisation, as onnxruntime recommends before quantizing); when that step fails the row
says so and quantization proceeds on the graph as exported. The quantized graph must load
into an onnxruntime CPU session before it is written (atomically) to the output path; a
model that cannot be quantized, or whose quantized graph does not load, is a row with the
reason. Whether int8 is *useful* (faster, and how much Dice it costs) is measured by the
caller, not assumed here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.env import cpu_flags
from bench.deploy.export import error_reason

__all__ = ["MODES", "ArrayDataReader", "cpu_has_vnni", "quantize_onnx", "unshare_weights"]

MODES = ("dynamic", "static")


def cpu_has_vnni() -> bool:
    """True when /proc/cpuinfo lists AVX512-VNNI or AVX-VNNI (False when unknown)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def _batches(images: Iterable[np.ndarray], batch: int | None) -> Iterator[np.ndarray]:
    """Yield float32 NCHW arrays; a stack larger than a static graph batch is split."""
    for arr in images:
        a = np.asarray(arr, dtype=np.float32)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4:
            raise ValueError(f"calibration images must be CHW or NCHW arrays, got shape {a.shape}")
        if batch is None or a.shape[0] == batch:
            yield np.ascontiguousarray(a)
        else:
            for i in range(0, a.shape[0] - batch + 1, batch):
                yield np.ascontiguousarray(a[i : i + batch])


class ArrayDataReader:
    """An onnxruntime ``CalibrationDataReader`` over caller-supplied image arrays.

    ``images`` is an iterable of CHW / NCHW float32 arrays (normalised exactly as the
    model's inputs); ``batch`` the graph's static batch size (None: dynamic, arrays are
    fed as given). Counts what it fed in ``.fed``.
    """

    def __init__(self, input_name: str, images: Iterable[np.ndarray], batch: int | None) -> None:
        self.input_name = input_name
        self._it = _batches(images, batch)
        self.fed = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        try:
            x = next(self._it)
        except StopIteration:
            return None
        self.fed += x.shape[0]
        return {self.input_name: x}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while (item := self.get_next()) is not None:
            yield item


def _graph_input(path: Path) -> tuple[str, int | None]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    dim0 = inp.type.tensor_type.shape.dim[0]
    return inp.name, (dim0.dim_value if dim0.HasField("dim_value") else None)


def _input_dims(path: Path) -> tuple[int, ...]:
    """The graph input's dimensions (a symbolic one as 1)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    return tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim)


def _loads(path: Path) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime's quantization tools log advice per tensor on the root logger at WARNING
    ("Expected bias ... to be an initializer"); only errors are shown meanwhile."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(max(old, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(old)


def _preprocess(src: Path, dst: Path) -> tuple[Path, str]:
    """``quant_pre_process`` with symbolic shape inference, else without it, else skipped.

    Returns the graph to quantize and a note (empty when the full pre-processing ran).
    onnxruntime's symbolic shape inference cannot follow some exported graphs (seen:
    a ``Concat`` whose input shape it loses in TorchScript-exported MALUNet); ONNX shape
    inference plus graph optimisation still apply then.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    first = ""
    for symbolic in (True, False):
        try:
            with _quiet_logging():
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=not symbolic)
        except Exception as err:
            first = first or error_reason(err, 160)
            continue
        return dst, ("" if symbolic else f"pre-processing without symbolic shapes ({first})")
    return src, f"pre-processing skipped ({first})"


def unshare_weights(src: Path, dst: Path, input_shape: tuple[int, ...]) -> tuple[Path, str]:
    """A copy of graph ``src`` at ``dst`` in which no float initializer feeds two ops.

    onnxruntime's QDQ quantizer refuses a float initializer consumed by several ops
    ("Quantization parameter shared mode is not supported for weight yet"), which skipped
    MALUNet's static int8. Found by listing the exported graph's shared initializers (not
    the IEA memory tie the issue suspected: with this function alone the tied model
    quantizes): the exporter emits each GroupNorm as InstanceNormalization with one
    shared all-ones scale and all-zeros bias (40 uses each), the spatial attention bridge
    applies one 7x7 conv (``scab.satt.shared_conv2d``) to all five skips by design, and
    the five bilinear Resize ops share one scales tensor. Giving every use its own copy of
    the values computes the same function; the copy is kept only when onnxruntime's output
    on a seeded input of ``input_shape`` is bit-identical to the original graph's (checked
    here), else ``src`` is returned and the note says why. Returns (graph to quantize,
    note; '' when nothing was shared).
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    seen: dict[str, int] = {}
    copies = 0
    for node in g.node:
        for k, name in enumerate(node.input):
            if name not in inits or inits[name].data_type != onnx.TensorProto.FLOAT:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == 1:
                continue
            dup = onnx.TensorProto()
            dup.CopyFrom(inits[name])
            dup.name = f"{name}__use{seen[name]}"
            g.initializer.append(dup)
            node.input[k] = dup.name
            copies += 1
    if not copies:
        return src, ""
    onnx.save(model, str(dst))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    x = np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)
    outs = []
    for path in (src, dst):
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    shared = sorted(n for n, c in seen.items() if c > 1)
    if not np.array_equal(outs[0], outs[1]):
        diff = float(np.abs(outs[0] - outs[1]).max())
        return (
            src,
            f"shared weights kept ({', '.join(shared)}): the unshared copy differed by {diff:.3g}",
        )
    named = [n for n in shared if not n.startswith("val_")] or shared
    return dst, (
        f"unshared {len(shared)} float initializer(s) used by several ops ({copies} extra "
        f"copies, e.g. {', '.join(named[:3])}); output bit-identical to the original "
        "graph's, checked"
    )


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    *,
    mode: str = "static",
    calibration: Iterable[np.ndarray] | None = None,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    preprocess: bool = True,
) -> dict[str, Any]:
    """Quantize ``fp32_path`` to int8 at ``out_path``; returns a row, never raises for a model.

    Row: ``status`` ("ok"/"error"), ``path`` (the quantized model, "" on failure),
    ``mode``, ``reason`` (why it failed, or notes such as a skipped pre-processing step),
    ``calibration_images`` (static), ``per_channel``, ``reduce_range``, ``size_mb``.
    Bad arguments (unknown mode, static without calibration data) raise ValueError.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "static" and calibration is None:
        raise ValueError("static quantization needs calibration images (calibration=...)")
    src, out = Path(fp32_path), Path(out_path)
    if not src.is_file():
        raise ValueError(f"{src}: no such ONNX file")
    rr = (not cpu_has_vnni()) if reduce_range is None else bool(reduce_range)
    row: dict[str, Any] = {
        "status": "error",
        "path": "",
        "mode": mode,
        "per_channel": bool(per_channel) if mode == "static" else False,
        "reduce_range": rr,
        "calibration_images": 0,
        "size_mb": float("nan"),
        "reason": "",
    }
    notes: list[str] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quant-") as tmpdir:
        work = src
        if preprocess:
            work, note = _preprocess(src, Path(tmpdir) / "pre.onnx")
            if note:
                notes.append(note)
        tmp_out = Path(tmpdir) / "int8.onnx"
        try:
            if mode == "static":
                name, batch = _graph_input(work)
                shape = (batch or 1, *_input_dims(work)[1:])
                work, note = unshare_weights(work, Path(tmpdir) / "unshared.onnx", shape)
                if note:
                    notes.append(note)
            from onnxruntime.quantization import (
                CalibrationMethod,
                QuantFormat,
                QuantType,
                quantize_dynamic,
                quantize_static,
            )

            if mode == "dynamic":
                with _quiet_logging():
                    quantize_dynamic(
                        str(work), str(tmp_out), weight_type=QuantType.QUInt8, reduce_range=rr
                    )
            else:
                name, batch = _graph_input(work)
                reader = ArrayDataReader(name, calibration or [], batch)
                with _quiet_logging():
                    quantize_static(
                        str(work),
                        str(tmp_out),
                        reader,
                        quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        per_channel=per_channel,
                        reduce_range=rr,
                        calibrate_method=CalibrationMethod.MinMax,
                    )
                row["calibration_images"] = reader.fed
                if reader.fed == 0:
                    raise ValueError("the calibration images were empty")
            _loads(tmp_out)
        except Exception as err:  # one model's failure is a row
            row["reason"] = "; ".join([f"{mode} quantization: {error_reason(err)}", *notes])
            return row
        os.chmod(tmp_out, 0o644)
        os.replace(tmp_out, out)
    row.update(status="ok", path=str(out), size_mb=out.stat().st_size / 2**20)
    row["reason"] = "; ".join(notes)
    return row
