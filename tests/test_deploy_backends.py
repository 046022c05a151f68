"""Runtime sessions: threads and precision pinned and read back; clean skip reasons."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench.deploy import backends, check, export


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


@pytest.fixture(scope="module")
def toy_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = Toy().eval()
    path = tmp_path_factory.mktemp("onnx") / "toy.onnx"
    row = export.export_onnx(model, path, torch.randn(1, 3, 16, 16), exporters=("torchscript",))
    assert row["status"] == "ok", row["reason"]
    return model, path


@pytest.fixture
def openvino():
    try:
        return importlib.import_module("openvino")
    except Exception as err:  # ImportError or a broken native library
        pytest.skip(f"openvino is not importable here ({type(err).__name__}: {err})")


# ------------------------------------------------------------------ onnxruntime
@pytest.mark.parametrize("threads", [1, 2])
def test_onnxruntime_threads_pinned(toy_onnx, threads: int) -> None:
    _, path = toy_onnx
    sess = backends.onnxruntime_session(path, threads=threads)
    opts = sess.handle.get_session_options()
    assert opts.intra_op_num_threads == threads
    assert opts.inter_op_num_threads == 1
    assert sess.settings["intra_op_num_threads"] == threads
    assert sess.handle.get_providers()[0] == "CPUExecutionProvider"
    assert sess.versions["onnxruntime"]


def test_onnxruntime_threads_default_to_torch(toy_onnx) -> None:
    _, path = toy_onnx
    torch.set_num_threads(2)
    sess = backends.onnxruntime_session(path)
    assert sess.handle.get_session_options().intra_op_num_threads == 2


def test_onnxruntime_run_matches_eager(toy_onnx) -> None:
    model, path = toy_onnx
    sess = backends.onnxruntime_session(path, threads=1)
    res = check.check_runner(model, sess.run, check.fixed_inputs((1, 3, 16, 16)))
    assert res["ok"], res["check_reason"]


def test_onnxruntime_bf16_and_gpu_are_skips_with_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = backends.skip_reason("onnxruntime", "bf16", "cpu")
    assert reason and "bf16" in reason
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        reason = backends.skip_reason("onnxruntime", "fp32", "cuda")
        assert reason and "CUDAExecutionProvider" in reason
        with pytest.raises(backends.BackendUnavailable, match="CUDAExecutionProvider"):
            backends.onnxruntime_session("unused.onnx", device="cuda")
    assert backends.skip_reason("onnxruntime", "fp32", "cpu") is None


def test_missing_library_is_a_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_openvino(name: str, *a, **k):  # noqa: ANN002, ANN003
        if name.split(".")[0] == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *a, **k)

    monkeypatch.setattr(backends.importlib, "import_module", no_openvino)
    reason = backends.skip_reason("openvino", "fp32")
    assert reason and "cannot import openvino" in reason
    with pytest.raises(backends.BackendUnavailable, match="openvino"):
        backends.make_session("openvino", "unused.onnx")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="precision"):
        backends.skip_reason("onnxruntime", "int4")
    with pytest.raises(ValueError, match="backend"):
        backends.skip_reason("tvm")
    with pytest.raises(ValueError, match="threads"):
        backends.onnxruntime_session("unused.onnx", threads=0)


def test_runtime_versions_lists_installed_libraries() -> None:
    v = backends.runtime_versions()
    assert v["onnxruntime"] and v["onnx"]


# ------------------------------------------------------------------ openvino
@pytest.mark.parametrize("threads", [1, 2])
def test_openvino_fp32_precision_and_threads_pinned(toy_onnx, openvino, threads: int) -> None:
    model, path = toy_onnx
    sess = backends.openvino_session(path, threads=threads, precision="fp32")
    compiled = sess.handle
    # read back from the compiled model, not from what was asked
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == threads
    assert int(compiled.get_property("NUM_STREAMS")) == 1
    res = check.check_runner(model, sess.run, check.fixed_inputs((1, 3, 16, 16)))
    assert res["ok"], res["check_reason"]


def test_openvino_bf16_is_bf16_or_refused(toy_onnx, openvino) -> None:
    _, path = toy_onnx
    caps = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in caps:
        sess = backends.openvino_session(path, threads=1, precision="bf16")
        assert sess.handle.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16
    else:  # the plugin would quietly compute in f32: refused with the reason
        assert "no native bf16" in backends.skip_reason("openvino", "bf16")
        with pytest.raises(backends.BackendUnavailable, match="bf16"):
            backends.openvino_session(path, threads=1, precision="bf16")


def test_openvino_precision_mismatch_is_refused(
    toy_onnx, openvino, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin that ignores the hint (reads back another precision) is never labelled fp32."""
    _, path = toy_onnx
    real_compile = openvino.Core.compile_model

    class Ignores:
        def __init__(self, compiled) -> None:  # noqa: ANN001
            self._c = compiled

        def get_property(self, key: str):  # noqa: ANN201
            if key == "INFERENCE_PRECISION_HINT":
                return openvino.Type.bf16
            return self._c.get_property(key)

    monkeypatch.setattr(
        openvino.Core, "compile_model", lambda self, *a, **k: Ignores(real_compile(self, *a, **k))
    )
    with pytest.raises(backends.BackendUnavailable, match="reports"):
        backends.openvino_session(path, threads=1, precision="fp32")


def test_sessions_agree(toy_onnx, openvino) -> None:
    _, path = toy_onnx
    x = check.fixed_inputs((1, 3, 16, 16), n=1)[0]
    a = backends.make_session("onnxruntime", path, threads=1).run(x)
    b = backends.make_session("openvino", path, threads=1).run(x)
    assert isinstance(b, np.ndarray) and b.shape == a.shape
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_session_module_wraps_a_session(toy_onnx) -> None:
    model, path = toy_onnx
    mod = backends.SessionModule(backends.onnxruntime_session(path, threads=1))
    mod.eval()  # accepted like any module
    x = torch.from_numpy(check.fixed_inputs((1, 3, 16, 16), n=1)[0])
    out = mod(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 1, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)


def test_openvino_reshapes_a_dynamic_batch_graph(tmp_path: Path, openvino) -> None:
    path = tmp_path / "dyn.onnx"
    row = export.export_onnx(
        Toy().eval(),
        path,
        torch.randn(2, 3, 16, 16),
        exporters=("torchscript",),
        dynamic_batch=True,
    )
    assert row["status"] == "ok", row["reason"]
    sess = backends.make_session("openvino", path, threads=1, input_shape=(4, 3, 16, 16))
    assert sess.handle.inputs[0].get_partial_shape().is_static
    assert sess.run(check.fixed_inputs((4, 3, 16, 16), n=1)[0]).shape == (4, 1, 16, 16)
