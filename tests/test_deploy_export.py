"""ONNX export of registered models and its equivalence check on onnxruntime.

Default-suite tests use small inputs (1x3x64x64) and the TorchScript exporter, which takes
a few seconds per model here; the dynamo exporter (10-20 s per model on the 2-core VM) is
exercised on a toy model by default and on the registered models under ``-m slow``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tiny_models import TinyConvNet

from bench.deploy import check, export
from bench.deploy.backends import onnxruntime_session
from models import create_model


@torch.library.custom_op("segbench_test::opaque", mutates_args=())
def _opaque(x: torch.Tensor) -> torch.Tensor:
    """An op with no ONNX translation in either exporter."""
    return x.clone()


@_opaque.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Unexportable(TinyConvNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _opaque(super().forward(x))


# ------------------------------------------------------------ registered models (acceptance)
@pytest.mark.parametrize("name", ["malunet", "egeunet", "unet"])
def test_registered_model_exports_and_matches_eager(name: str, tmp_path: Path) -> None:
    model = create_model(name)
    row = export.export_model(
        name, tmp_path, model=model, input_size=64, exporters=("torchscript",)
    )
    assert row["status"] == "ok", row["reason"]
    assert row["exporter"] == "torchscript" and Path(row["path"]) == tmp_path / f"{name}.onnx"
    assert row["opset"] >= 17 and row["weights"] == "random init"
    res = check.check_onnx(model, row["path"], name=name, input_shape=(1, 3, 64, 64))
    assert res["ok"], res["check_reason"]
    # the tolerance is about rounding, not a free pass: the error is a small part of the scale
    assert res["rel_max_diff"] < check.tolerance_for(name).rtol
    assert res["mask_diff_fraction"] <= 1e-3
    assert res["ref_max_abs"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["malunet", "egeunet", "unet"])
def test_registered_model_dynamo_export(name: str, tmp_path: Path) -> None:
    model = create_model(name)
    row = export.export_model(name, tmp_path, model=model, input_size=64, exporters=("dynamo",))
    assert row["status"] == "ok", row["reason"]
    res = check.check_onnx(model, row["path"], name=name, input_shape=(1, 3, 64, 64))
    assert res["ok"], res["check_reason"]


# ------------------------------------------------------------ failures become rows
def test_unexportable_model_is_a_row_with_each_exporters_reason(tmp_path: Path) -> None:
    x = torch.randn(1, 3, 16, 16)
    row = export.export_onnx(Unexportable(), tmp_path / "bad.onnx", x)
    assert row["status"] == "error" and row["path"] == "" and row["exporter"] == ""
    assert set(row["attempts"]) == {"dynamo", "torchscript"}
    # each reason names the op that has no ONNX translation
    for exporter, reason in row["attempts"].items():
        assert "opaque" in reason, (exporter, reason)
        assert f"{exporter}: {reason}" in row["reason"]
    assert math.isnan(row["opset"])
    assert list(tmp_path.iterdir()) == []  # no half-written or temp file left behind


def test_export_model_with_unknown_name_is_a_row(tmp_path: Path) -> None:
    row = export.export_model("no_such_model", tmp_path)
    assert row["status"] == "error" and row["reason"].startswith("build: ")
    assert "no_such_model" in row["reason"]


def test_bad_arguments_raise(tmp_path: Path) -> None:
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="exporters"):
        export.export_onnx(TinyConvNet(), tmp_path / "t.onnx", x, exporters=("tracing",))
    with pytest.raises(ValueError, match="opset"):
        export.export_onnx(TinyConvNet(), tmp_path / "t.onnx", x, opset=3)


def test_error_reason_names_the_innermost_cause() -> None:
    try:
        try:
            raise KeyError("No ONNX function found for aten::foo")
        except KeyError as inner:
            raise RuntimeError("\x1b[96mstep 3/3\x1b[0m generic advice\nmore") from inner
    except RuntimeError as err:
        text = export.error_reason(err)
    assert text.startswith("KeyError: ") and "aten::foo" in text
    assert "raised as RuntimeError" in text and "\x1b" not in text


# ------------------------------------------------------------ options
@pytest.mark.parametrize("exporter", export.EXPORTERS)
def test_dynamic_batch_and_opset(exporter: str, tmp_path: Path) -> None:
    model = TinyConvNet()
    x = torch.randn(2, 3, 16, 16)
    row = export.export_onnx(
        model, tmp_path / "toy.onnx", x, exporters=(exporter,), opset=18, dynamic_batch=True
    )
    assert row["status"] == "ok", row["reason"]
    assert row["opset"] == export.graph_opset(row["path"]) == 18
    proto = onnx.load(row["path"])
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    assert [i.name for i in proto.graph.input] == [export.INPUT_NAME]
    sess = onnxruntime_session(row["path"], threads=1)
    for b in (1, 3):
        xb = check.fixed_inputs((b, 3, 16, 16), n=1)[0]
        out = sess.run(xb)
        assert out.shape == (b, 1, 16, 16)
        np.testing.assert_allclose(out, check.torch_reference(model, [xb])[0], atol=1e-5)


def test_static_batch_graph_is_fixed(tmp_path: Path) -> None:
    row = export.export_onnx(
        TinyConvNet(), tmp_path / "toy.onnx", torch.randn(1, 3, 16, 16), exporters=("torchscript",)
    )
    dim = onnx.load(row["path"]).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 1


def test_falls_back_to_the_next_exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export._export_once

    def dynamo_breaks(model, example, path, exporter, opset, dynamic_batch):  # noqa: ANN001
        if exporter == "dynamo":
            raise RuntimeError("simulated dynamo failure")
        return real(model, example, path, exporter, opset, dynamic_batch)

    monkeypatch.setattr(export, "_export_once", dynamo_breaks)
    row = export.export_onnx(TinyConvNet(), tmp_path / "toy.onnx", torch.randn(1, 3, 8, 8))
    assert row["status"] == "ok" and row["exporter"] == "torchscript"
    assert row["attempts"]["dynamo"] == "RuntimeError: simulated dynamo failure"
    assert row["reason"] == "dynamo: RuntimeError: simulated dynamo failure"


def test_graph_that_onnxruntime_cannot_load_is_not_a_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def writes_garbage(model, example, path, exporter, opset, dynamic_batch):  # noqa: ANN001
        Path(path).write_bytes(b"not an onnx graph")

    monkeypatch.setattr(export, "_export_once", writes_garbage)
    row = export.export_onnx(TinyConvNet(), tmp_path / "toy.onnx", torch.randn(1, 3, 8, 8))
    assert row["status"] == "error" and len(row["attempts"]) == 2
    assert not (tmp_path / "toy.onnx").exists()
