"""ONNX export of segbench models with ``torch.onnx.export``, one row per model.

PyTorch ships two ONNX exporters behind ``torch.onnx.export``: the ``torch.export``-based
one (``dynamo=True``, the default and the maintained path) and the TorchScript tracer
(``dynamo=False``, deprecated but still the one that works for some models). For each model
:func:`export_model` tries them in order (dynamo first by default), and keeps the first
graph that

1. exports without an error,
2. passes ``onnx.checker.check_model`` (a well-formed graph), and
3. loads into an onnxruntime ``InferenceSession`` (every op has a CPU kernel),

so a graph that "exports" but cannot run is not reported as a success. A model that no
exporter can handle becomes a row with ``status="error"`` and each exporter's reason (the
innermost exception of the chain, which names the op); one model never ends the run.

Options: ``opset`` (``None``: the exporter's default; the row records the opset actually in
the file), ``dynamic_batch`` (batch axis symbolic: ``dynamic_shapes`` for dynamo,
``dynamic_axes`` for TorchScript; the example input then has batch 2 so ``torch.export``
does not specialise the axis to 1). The graph's input is named ``input`` and its output
``logits`` (the model's ``forward``: main logits only, no deep-supervision side outputs).
The file is written atomically (temp file in the target folder, then rename) and holds the
weights inline (no external-data side file; the registered models are far below protobuf's
2 GB limit).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bench.core.quiet import silenced

__all__ = [
    "EXPORTERS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "error_reason",
    "export_model",
    "export_onnx",
    "graph_opset",
]

#: Exporter names in the default order of preference.
EXPORTERS = ("dynamo", "torchscript")
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_reason(err: BaseException, limit: int = 400) -> str:
    """One line naming what failed: the innermost exception of ``err``'s cause chain.

    The dynamo exporter wraps the useful message ("No ONNX function found for <op>") in two
    ``ConversionError`` layers whose first lines are generic advice; the innermost cause is
    the one that names the op.
    """
    chain = [err]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    inner = chain[-1]
    lines = [ln.strip() for ln in _ANSI.sub("", str(inner)).splitlines() if ln.strip()]
    text = f"{type(inner).__name__}: {lines[0] if lines else ''}"
    if inner is not err:
        text += f" (raised as {type(err).__name__})"
    return text[:limit]


def _quiet() -> contextlib.AbstractContextManager[None]:
    """Silence the exporters' progress prints, warnings and C++-side logging.

    The TorchScript exporter (torch 2.14) turns its C++ ONNX log on unconditionally (its
    ``setup_onnx_logging`` tests the *function* ``_jit_is_onnx_log_enabled``, which is always
    truthy) and on a failure dumps the whole TorchScript graph to stderr, thousands of lines
    for a large model. That log is written by C++ to file descriptor 2, out of reach of
    ``contextlib.redirect_stderr``, so the descriptors 1 and 2 themselves are pointed at a
    scratch file for the duration. The useful part of a failure is the exception, which
    :func:`error_reason` reduces to one line.
    """
    return silenced(descriptors=True)


def graph_opset(path: str | Path) -> int | None:
    """The default-domain (``ai.onnx``) opset of an ONNX file, or None if it has none."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _export_once(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    exporter: str,
    opset: int | None,
    dynamic_batch: bool,
) -> None:
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
    }
    if exporter == "dynamo":
        kwargs.update(dynamo=True, external_data=False, verbose=False, optimize=True)
        if dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    elif exporter == "torchscript":
        kwargs.update(dynamo=False, do_constant_folding=True)
        if dynamic_batch:
            kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    else:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    with _quiet(), torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(model, (example,), str(path), **kwargs)


def _validate(path: Path) -> None:
    """Raise unless the file is a well-formed ONNX graph that onnxruntime can load."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_input: torch.Tensor,
    *,
    exporters: Sequence[str] = EXPORTERS,
    opset: int | None = None,
    dynamic_batch: bool = False,
) -> dict[str, Any]:
    """Export ``model`` (put in eval mode) to ``path``; never raises for a model that fails.

    Tries ``exporters`` in order and keeps the first graph that exports, passes the ONNX
    checker and loads into onnxruntime. Returns a row: ``status`` ("ok" / "error"),
    ``exporter`` (the one used, or ""), ``path`` ("" on failure), ``opset`` (read from the
    file), ``dynamic_batch``, ``export_s``, ``size_mb``, ``reason`` (on success: why earlier
    exporters were passed over; on failure: every exporter's reason) and ``attempts``
    ({exporter: "ok" or reason}).
    """
    bad = [e for e in exporters if e not in EXPORTERS]
    if bad or not exporters:
        raise ValueError(f"exporters must be a non-empty subset of {EXPORTERS}, got {exporters!r}")
    if opset is not None and int(opset) < 7:
        raise ValueError(f"opset must be >= 7, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    attempts: dict[str, str] = {}
    row: dict[str, Any] = {
        "status": "error",
        "exporter": "",
        "path": "",
        "opset": math.nan,
        "dynamic_batch": bool(dynamic_batch),
        "export_s": math.nan,
        "size_mb": math.nan,
    }
    for exporter in exporters:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        try:
            _export_once(model, example_input, tmp, exporter, opset, dynamic_batch)
            elapsed = time.perf_counter() - t0
            _validate(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except Exception as err:  # any exporter failure is data for the row, not a crash
            attempts[exporter] = error_reason(err)
            continue
        finally:
            tmp.unlink(missing_ok=True)
        attempts[exporter] = "ok"
        row.update(
            status="ok",
            exporter=exporter,
            path=str(path),
            opset=graph_opset(path),
            export_s=elapsed,
            size_mb=path.stat().st_size / 2**20,
        )
        break
    failed = [f"{e}: {r}" for e, r in attempts.items() if r != "ok"]
    row["reason"] = "; ".join(failed)
    row["attempts"] = attempts
    return row


def export_model(
    name: str,
    out_dir: str | Path,
    *,
    model: nn.Module | None = None,
    weights: str = "random init",
    input_size: int = 256,
    in_channels: int = 3,
    exporters: Sequence[str] = EXPORTERS,
    opset: int | None = None,
    dynamic_batch: bool = False,
) -> dict[str, Any]:
    """Export registered model ``name`` to ``out_dir/<name>.onnx``; never raises for the model.

    ``model`` is an already built (e.g. trained) instance; by default the registry builds one
    with random weights (``weights`` says which, and is copied into the row). The example input
    is ``(1, in_channels, input_size, input_size)`` (batch 2 with ``dynamic_batch``) from a
    fixed seed. Building the model is inside the row too: a builder error is a row.
    """
    base: dict[str, Any] = {"model": name, "weights": weights, "input_size": int(input_size)}
    try:
        if model is None:
            from models import create_model

            model = create_model(name, num_classes=1, in_channels=in_channels)
        gen = torch.Generator().manual_seed(0)
        example = torch.randn(
            2 if dynamic_batch else 1, in_channels, input_size, input_size, generator=gen
        )
    except Exception as err:
        return {
            **base,
            "status": "error",
            "exporter": "",
            "path": "",
            "reason": f"build: {error_reason(err)}",
            "attempts": {},
        }
    row = export_onnx(
        model,
        Path(out_dir) / f"{name}.onnx",
        example,
        exporters=exporters,
        opset=opset,
        dynamic_batch=dynamic_batch,
    )
    return {**base, **row}
