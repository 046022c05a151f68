"""One runtime table: a runtime registered in one place is timed by ``segbench speed`` and by
``segbench export --int8`` (issue 27). Tiny models, tiny inputs, a few timed calls; no
timing thresholds."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from tiny_models import TinyConvNet

from bench.deploy import backends
from bench.deploy.backends import Runtime, Session
from bench.jobs import export as job
from bench.jobs import precision
from bench.speed import run, steps
from bench.speed.timing import MIN_CAPPED_ITERS

CALLS: dict[str, int] = {}


def _counted(name: str, run_fn: Any, precision_: str, device: str, settings: dict) -> Session:
    def step(x: np.ndarray) -> np.ndarray:
        CALLS[name] = CALLS.get(name, 0) + 1
        return run_fn(x)

    return Session(name, precision_, device, step, versions={name: "0.1"}, settings=settings)


def _fake_module_session(model: nn.Module, *, precision: str = "fp32", device: str = "cpu",
                         offset: float = 0.0, name: str = "fake", **_: Any) -> Session:  # fmt: skip
    """A 'runtime' that runs the torch model itself (``offset`` makes it compute wrong)."""
    model = model.eval()

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy() + offset

    return _counted(name, forward, precision, device, {"engine": "torch-in-disguise"})


def _fake_onnx_session(path: Path, *, threads: int | None = None, precision: str = "fp32",
                       device: str = "cpu", **_: Any) -> Session:  # fmt: skip
    """A 'runtime' on an ONNX file (so it also gets the int8 graphs): onnxruntime inside."""
    inner = backends.onnxruntime_session(path, threads=threads, precision=precision)
    return _counted("fake_onnx", inner.run, precision, device, {"inner": "onnxruntime"})


def _no_bf16(precision: str, device: str) -> str | None:
    return "fake: no bf16 on this pretend library" if precision == "bf16" else None


@pytest.fixture
def fake_runtimes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the fakes in the one table, and nowhere else."""
    CALLS.clear()
    entries = {
        "fake": Runtime("fake", "module", _fake_module_session, _no_bf16, dist="fake-rt-absent"),
        "fake_onnx": Runtime("fake_onnx", "onnx", _fake_onnx_session, _no_bf16, dist="numpy"),
        "fake_wrong": Runtime(
            "fake_wrong", "module",
            lambda m, **kw: _fake_module_session(m, offset=1.0, name="fake_wrong", **kw),
            _no_bf16, dist="fake-rt-absent",
        ),
    }  # fmt: skip
    for name, rt in entries.items():
        monkeypatch.setitem(backends.RUNTIMES, name, rt)


@pytest.fixture
def tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed harness's model hooks and complexity counter on a tiny stand-in."""
    info = types.SimpleNamespace(loss_weights=(1.0, ()), has_aux=False, input_multiple=1,
                                 min_input=0, source="")  # fmt: skip
    monkeypatch.setattr(steps, "_build_model", lambda name: TinyConvNet())
    monkeypatch.setattr(steps, "model_info", lambda name: info)
    fake_cx = types.ModuleType("bench.cost.flops")
    fake_cx.analyze = lambda model, input_shape: types.SimpleNamespace(  # type: ignore[attr-defined]
        macs=40 * input_shape[2] * input_shape[3], activation_bytes=36 * input_shape[2] ** 2
    )
    monkeypatch.setitem(sys.modules, "bench.cost.flops", fake_cx)
    monkeypatch.setattr(job, "_create", lambda name, **kw: TinyConvNet())


def test_a_registered_runtime_appears_in_speed_rows(
    fake_runtimes: None, tiny_model: None, tmp_path: Path
) -> None:
    df = run.run_speed(
        ["tiny"], batch_sizes=(1, 2), modes=("inference",), dtypes=("fp32", "bf16"), threads=1,
        backends=("torch", "fake", "fake_onnx", "fake_wrong"), exporters=("torchscript",),
        min_time_s=0.0, min_iters=3, warmup=1, input_size=16, progress=False, peak="1,10",
        isolate=False, out_dir=tmp_path,
    )  # fmt: skip
    rows = {(r["backend"], r["dtype"], r["batch_size"]): r for r in df.to_dict("records")}
    for backend in ("fake", "fake_onnx"):
        for b in (1, 2):
            r = rows[(backend, "fp32", b)]
            assert r["status"] == "ok", r["reason"]
            assert r["median_ms"] > 0 and r["count"] >= 3 and r["achieved_gflops"] > 0
            assert r["backend_version"] == "0.1" and r["mode"] == "inference"
            assert r["out_max_abs_diff"] < 1e-4  # proved against eager fp32 before timing
        # the entry's skip reason, word for word, on every batch size
        assert {rows[(backend, "bf16", b)]["reason"] for b in (1, 2)} == {_no_bf16("bf16", "")}
        assert {rows[(backend, "bf16", b)]["status"] for b in (1, 2)} == {"skipped"}
    assert rows[("fake", "fp32", 1)]["precision_detail"] == "fp32 (engine=torch-in-disguise)"
    assert rows[("fake_onnx", "fp32", 1)]["exporter"] == "torchscript"
    # timed through the entry's session: warm-up + check + >= 3 timed calls per batch size
    assert CALLS["fake"] >= 2 * 5 and CALLS["fake_onnx"] >= 2 * 5
    # an entry that computes something else is an error row, never a timing
    wrong = rows[("fake_wrong", "fp32", 1)]
    assert wrong["status"] == "error" and "output differs from eager fp32" in wrong["reason"]
    assert CALLS["fake_wrong"] == 2  # the check call of each batch size, no timing
    assert {r["status"] for k, r in rows.items() if k[0] == "torch"} == {"ok"}
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {r["backend"] for r in data["rows"]} == {"torch", "fake", "fake_onnx", "fake_wrong"}
    (meta,) = data["runs"].values()
    assert meta["backends"] == ["torch", "fake", "fake_onnx", "fake_wrong"]


def test_a_registered_runtime_appears_in_the_precision_table(
    fake_runtimes: None, tiny_model: None, tmp_path: Path
) -> None:
    df = precision.run_precision(
        ["tiny"], tmp_path, weights=job.Weights(input_size=16), int8=("dynamic",), bf16=True,
        agree_images=2, latency_s=0.01, threads=1, exporters=("torchscript",), write=False,
    )  # fmt: skip
    rows = df.set_index("variant")
    assert list(df["variant"])[0] == "torch fp32"  # the reference comes first
    for v in ("fake fp32", "fake_onnx fp32", "fake_onnx int8-dynamic"):
        assert rows.loc[v]["status"] == "ok", rows.loc[v]["reason"]
        assert rows.loc[v]["latency_ms"] > 0 and rows.loc[v]["speedup_vs_eager_fp32"] > 0
    assert rows.loc["fake fp32"]["out_max_abs_diff"] < 1e-5
    assert rows.loc["fake_onnx int8-dynamic"]["size_mb"] > 0
    # a runtime on the module gets no int8 graph; bf16 follows the entry's skip reason
    assert "fake int8-dynamic" not in rows.index
    for v in ("fake bf16", "fake_onnx bf16"):
        assert rows.loc[v]["status"] == "skipped"
        assert rows.loc[v]["reason"] == _no_bf16("bf16", "")
    # the latency is timed through the entry's session: 2 agreement calls, then at least
    # one warm-up and MIN_CAPPED_ITERS timed calls (more unless the machine is very slow)
    assert CALLS["fake"] >= 2 + 1 + MIN_CAPPED_ITERS
    assert pd.isna(rows.loc["fake_wrong fp32"].get("dsc", np.nan))  # untrained: no DSC
    assert rows.loc["fake_wrong fp32"]["out_max_abs_diff"] == pytest.approx(1.0, rel=1e-5)


def test_cli_backend_choices_follow_the_table(fake_runtimes: None) -> None:
    from bench.cli import build_parser

    args = build_parser("speed").parse_args(
        ["speed", "--models", "tiny", "--backend", "torch,fake"]
    )
    assert args.backend == ["torch", "fake"]
    with pytest.raises(SystemExit):
        build_parser("speed").parse_args(["speed", "--models", "tiny", "--backend", "tvm"])
