"""onnxruntime int8 quantization: the quantized graph is really int8 and runs; failures are rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from bench.deploy import check, export, quantize
from bench.deploy.backends import onnxruntime_session


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 16, 3, padding=1)
        self.mid = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(torch.relu(self.body(x)))))


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("q") / "toy.onnx"
    row = export.export_onnx(
        Toy().eval(), path, torch.randn(1, 3, 16, 16), exporters=("torchscript",)
    )
    assert row["status"] == "ok", row["reason"]
    return path


def _op_types(path: str | Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _agreement(fp32: Path, int8: str) -> dict:
    xs = check.fixed_inputs((1, 3, 16, 16), n=2, seed=1)
    ref = onnxruntime_session(fp32, threads=1)
    q = onnxruntime_session(int8, threads=1)
    return check.compare_outputs([ref.run(x) for x in xs], [q.run(x) for x in xs], None)


def test_dynamic_quantization_runs(fp32_onnx: Path, tmp_path: Path) -> None:
    row = quantize.quantize_onnx(fp32_onnx, tmp_path / "toy.int8.onnx", mode="dynamic")
    assert row["status"] == "ok", row["reason"]
    assert "ConvInteger" in _op_types(row["path"])  # really integer convolutions
    agree = _agreement(fp32_onnx, row["path"])
    assert np.isfinite(agree["max_abs_diff"])
    assert agree["rel_max_diff"] < 0.2  # close to fp32, not identical
    assert agree["max_abs_diff"] > 0


def test_static_quantization_with_calibration_images(fp32_onnx: Path, tmp_path: Path) -> None:
    images = check.fixed_inputs((3, 3, 16, 16), n=2, seed=7)  # two stacks of 3 images
    row = quantize.quantize_onnx(
        fp32_onnx, tmp_path / "toy.int8.onnx", mode="static", calibration=images
    )
    assert row["status"] == "ok", row["reason"]
    assert row["calibration_images"] == 6  # stacks split to the graph's batch of 1
    ops = _op_types(row["path"])
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert _agreement(fp32_onnx, row["path"])["rel_max_diff"] < 0.2


def test_static_needs_calibration_and_a_real_file(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibration"):
        quantize.quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="static")
    with pytest.raises(ValueError, match="mode"):
        quantize.quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="int4")
    with pytest.raises(ValueError, match="no such ONNX file"):
        quantize.quantize_onnx(tmp_path / "missing.onnx", tmp_path / "q.onnx", mode="dynamic")


def test_empty_calibration_is_a_row(fp32_onnx: Path, tmp_path: Path) -> None:
    row = quantize.quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="static", calibration=[])
    assert row["status"] == "error" and row["path"] == ""
    assert row["reason"].startswith("static quantization: ")
    assert not (tmp_path / "q.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # temp folder cleaned up


def test_data_reader_splits_and_validates() -> None:
    imgs = [np.zeros((3, 4, 4)), np.zeros((4, 3, 4, 4))]
    reader = quantize.ArrayDataReader("input", imgs, batch=2)
    shapes = [item["input"].shape for item in reader]
    assert shapes == [(2, 3, 4, 4), (2, 3, 4, 4)]  # the lone CHW image cannot fill a batch of 2
    assert reader.fed == 4
    with pytest.raises(ValueError, match="CHW or NCHW"):
        list(quantize.ArrayDataReader("input", [np.zeros((4, 4))], batch=1))


class SharedGroupNorms(nn.Module):
    """One conv applied twice and GroupNorms (exported as InstanceNormalization with shared
    constant scale/bias): initializers shared between ops, as in MALUNet."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.n1, self.n2 = nn.GroupNorm(4, 8), nn.GroupNorm(4, 8)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.n1(self.shared(torch.relu(self.stem(x))))
        return self.head(self.n2(self.shared(torch.relu(h))))


def test_shared_initializers_are_unshared_for_static_int8(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "shared.onnx"
    row = export.export_onnx(
        SharedGroupNorms().eval(), src, torch.randn(1, 3, 16, 16), exporters=("dynamo",)
    )
    assert row["status"] == "ok", row["reason"]
    graph = onnx.load(str(src)).graph
    uses: dict[str, int] = {}
    for n in graph.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert any(uses.get(n, 0) > 1 for n in floats)  # the fixture really shares a weight
    out, note = quantize.unshare_weights(src, tmp_path / "unshared.onnx", (1, 3, 16, 16))
    assert out != src and "bit-identical" in note
    g2 = onnx.load(str(out)).graph
    uses2: dict[str, int] = {}
    for n in g2.node:
        for x in n.input:
            uses2[x] = uses2.get(x, 0) + 1
    f2 = {i.name for i in g2.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert all(uses2.get(n, 0) <= 1 for n in f2)
    xs = check.fixed_inputs((1, 3, 16, 16), n=1, seed=3)
    a = onnxruntime_session(src, threads=1).run(xs[0])
    b = onnxruntime_session(out, threads=1).run(xs[0])
    assert np.array_equal(a, b)
    # nothing shared: the graph is returned as it is
    plain = tmp_path / "plain.onnx"
    export.export_onnx(Toy().eval(), plain, torch.randn(1, 3, 16, 16), exporters=("torchscript",))
    assert quantize.unshare_weights(plain, tmp_path / "p2.onnx", (1, 3, 16, 16)) == (plain, "")


@pytest.mark.slow
def test_malunet_static_int8_is_no_longer_skipped(tmp_path: Path, monkeypatch) -> None:
    """Issue 24 item 14: without unsharing, onnxruntime refused MALUNet's graph
    ("Quantization parameter shared mode is not supported for weight yet")."""
    from models import create_model

    torch.manual_seed(0)
    row = export.export_model(
        "malunet", tmp_path, model=create_model("malunet").eval(), exporters=("dynamo",)
    )
    assert row["status"] == "ok", row["reason"]
    calib = [np.random.default_rng(i).standard_normal((1, 3, 256, 256), dtype=np.float32)
             for i in range(2)]  # fmt: skip
    q = quantize.quantize_onnx(row["path"], tmp_path / "m8.onnx", mode="static", calibration=calib)
    assert q["status"] == "ok", q["reason"]
    assert "unshared" in q["reason"]
    monkeypatch.setattr(quantize, "unshare_weights", lambda src, dst, shape: (src, ""))
    q = quantize.quantize_onnx(row["path"], tmp_path / "m9.onnx", mode="static", calibration=calib)
    assert q["status"] == "error" and "shared mode" in q["reason"]
