"""``segbench benchmark`` stage orchestration, with the heavy stages replaced by fakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.analysis.report import load, write
from bench.core.device import resolve_device
from bench.core.io import read_json
from bench.core.names import expand_models
from bench.cost import complexity
from bench.engine import rundir, train
from bench.jobs import benchmark
from bench.speed import run


class Calls:
    def __init__(self) -> None:
        self.complexity: list[dict[str, Any]] = []
        self.speed: list[dict[str, Any]] = []
        self.train: list[Any] = []
        self.report: list[tuple[Path, str]] = []


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    c = Calls()

    def fake_complexity(models: list[str], **kw: Any) -> pd.DataFrame:
        c.complexity.append({"models": list(models), **kw})
        return pd.DataFrame({"model": models, "status": "ok"})

    def fake_speed(models: list[str], **kw: Any) -> pd.DataFrame:
        c.speed.append({"models": list(models), **kw})
        return pd.DataFrame(
            [
                {
                    "model": m,
                    "mode": kw["modes"][0],
                    "batch_size": b,
                    "median_ms": 10.0 * b,
                    "status": "ok",
                }
                for m in models
                for b in kw["batch_sizes"]
            ]
        )

    def fake_training(cfg: Any, results_dir: Any = "results", **kw: Any) -> Path:
        if cfg.model == "boom":
            raise RuntimeError("diverged")
        c.train.append((cfg, Path(results_dir), kw))
        return rundir.run_dir_for(cfg, results_dir)

    def fake_report(results: Any, out: Any, command: str = "", progress: bool = True) -> Any:
        c.report.append((Path(results), command))
        return load.ReportOutput(readme=Path(out) / "README.md")

    monkeypatch.setattr(complexity, "run_complexity", fake_complexity)
    monkeypatch.setattr(run, "run_speed", fake_speed)
    monkeypatch.setattr(train, "run_training", fake_training)
    monkeypatch.setattr(write, "write_report", fake_report)
    monkeypatch.setattr(benchmark, "_device_peak", lambda device: None)  # no micro-measurement
    return c


def test_default_profile_runs_every_stage(calls: Calls, tmp_path: Path) -> None:
    res = benchmark.run_benchmark(
        ["malunet", "unet"],
        device="cpu",
        results_dir=tmp_path,
        progress=False,
        command="segbench benchmark",
    )
    assert res.ok, res.failures
    assert [s.name for s in res.stages] == ["setup", "complexity", "speed", "report"]
    assert calls.complexity[0]["models"] == ["malunet", "unet"]
    assert calls.complexity[0]["cross_check"] is True
    assert calls.complexity[0]["out_dir"] == tmp_path / "complexity"
    # inference at batch 1 and 8, then a training step at batch 8 per model, fp32
    assert [(s["models"], s["modes"], tuple(s["batch_sizes"])) for s in calls.speed] == [
        (["malunet", "unet"], ("inference",), (1, 8)),
        (["malunet"], ("train",), (8,)),
        (["unet"], ("train",), (8,)),
    ]
    assert all(s["device"] == "cpu" and s["out_dir"] == tmp_path / "speed" for s in calls.speed)
    # the inference pass times eager PyTorch and onnxruntime; training steps are eager only
    assert calls.speed[0]["backends"] == ("torch", "onnxruntime")
    assert calls.speed[0]["exporters"] == ("torchscript", "dynamo")
    assert all("backends" not in s for s in calls.speed[1:])
    assert calls.train == []  # no data, no training
    assert calls.report == [(tmp_path, "segbench benchmark")]
    record = read_json(tmp_path / "benchmark.json")
    assert record["command"] == "segbench benchmark"
    assert [s["name"] for s in record["stages"]] == ["setup", "complexity", "speed", "report"]
    assert record["environment"]["versions"]["torch"]


def test_quick_profile_and_skips(calls: Calls, tmp_path: Path) -> None:
    benchmark.run_benchmark(
        ["malunet"], device="cpu", results_dir=tmp_path, quick=True, progress=False
    )
    assert calls.complexity[0]["cross_check"] is False
    assert [tuple(s["batch_sizes"]) for s in calls.speed] == [(1,)]
    calls.speed.clear()
    benchmark.run_benchmark(["malunet"], device="cpu", results_dir=tmp_path, quick=True,
                            skip_complexity=True, progress=False, backends=["torch"])  # fmt: skip
    assert "backends" not in calls.speed[0]  # eager PyTorch only, as before runtimes
    calls.complexity.clear()
    calls.speed.clear()
    res = benchmark.run_benchmark(
        ["malunet"],
        device="cpu",
        results_dir=tmp_path,
        skip_complexity=True,
        skip_speed=True,
        progress=False,
    )
    assert calls.complexity == [] and calls.speed == []
    assert [s.name for s in res.stages] == ["setup", "report"]


def test_training_stage_with_data(calls: Calls, tmp_path: Path) -> None:
    data = tmp_path / "isic2017-mini"
    data.mkdir()
    res = benchmark.run_benchmark(
        ["malunet", "boom", "unet"],
        device="cpu",
        results_dir=tmp_path,
        skip_complexity=True,
        skip_speed=True,
        data=data,
        epochs=2,
        seeds=[0, 1],
        progress=False,
    )
    # every other cell still ran; the failing one is reported by name
    trained = [(cfg.model, cfg.seed, cfg.epochs) for cfg, _, _ in calls.train]
    assert trained == [("malunet", 0, 2), ("malunet", 1, 2), ("unet", 0, 2), ("unet", 1, 2)]
    cfg, results_dir, kw = calls.train[0]
    assert cfg.data == str(data) and cfg.device == "cpu" and cfg.recipe == "fair"
    assert results_dir == tmp_path and kw["resume"] is True and kw["force"] is False
    assert not res.ok
    assert any("boom seed 0" in f and "diverged" in f for f in res.failures)
    assert calls.report, "the report still runs after a failed training cell"
    calls.train.clear()
    benchmark.run_benchmark(["malunet"], device="cpu", results_dir=tmp_path, skip_complexity=True,
                     skip_speed=True, data=data, force_train=True, progress=False)  # fmt: skip
    assert [kw["force"] for _, _, kw in calls.train] == [True]


def test_failed_stage_does_not_stop_the_rest(
    calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> pd.DataFrame:
        raise RuntimeError("counter exploded")

    monkeypatch.setattr(complexity, "run_complexity", broken)
    res = benchmark.run_benchmark(["malunet"], device="cpu", results_dir=tmp_path, progress=False)
    status = {s.name: s.status for s in res.stages}
    assert status == {"setup": "ok", "complexity": "failed", "speed": "ok", "report": "ok"}
    assert res.failures == ["complexity: RuntimeError: counter exploded"]


def test_speed_errors_fail_the_stage(
    calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def erroring(models: list[str], **_: Any) -> pd.DataFrame:
        return pd.DataFrame(
            {"model": models, "status": "error", "batch_size": 1, "reason": "kernel crashed"}
        )

    monkeypatch.setattr(run, "run_speed", erroring)
    res = benchmark.run_benchmark(
        ["malunet"], device="cpu", results_dir=tmp_path, skip_complexity=True, progress=False
    )
    assert not res.ok and "kernel crashed" in res.failures[0]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_train_steps_cheapest_first_within_the_deadline() -> None:
    prof = benchmark.PROFILES["default"]
    rows = pd.DataFrame(
        [
            {"model": "big", "mode": "inference", "batch_size": 8, "median_ms": 3000.0,
             "status": "ok"},
            {"model": "small", "mode": "inference", "batch_size": 8, "median_ms": 50.0,
             "status": "ok"},
            # no batch-8 row: scaled from batch 1
            {"model": "mid", "mode": "inference", "batch_size": 1, "median_ms": 40.0,
             "status": "ok"},
            {"model": "broken", "mode": "inference", "batch_size": 8,
             "median_ms": float("nan"), "status": "error"},
        ]
    )  # fmt: skip
    names = ["big", "small", "mid", "broken"]
    est = {m: benchmark.estimate_train_s(ms, prof) for m, ms in
           (("big", 3000.0), ("small", 50.0), ("mid", 320.0))}  # fmt: skip
    assert est["small"] < est["mid"] < est["big"]
    # the slowest one's training step (9 s per step) keeps at least 3 timed steps
    assert est["big"] >= benchmark.MIN_TIMED_ITERS * 9.0

    clock, order = FakeClock(), []

    def exact(name: str) -> None:  # takes exactly its estimate
        order.append(name)
        clock.now += est[name]

    deadline = est["small"] + est["mid"] + 1
    done, skipped = benchmark.run_train_steps(rows, names, prof, deadline, exact, clock=clock)
    assert order == ["small", "mid"]  # cheapest first
    assert done == ["small", "mid"]
    assert set(skipped) == {"big", "broken"}
    assert "s left" in skipped["big"] and "no inference timing" in skipped["broken"]

    # a machine twice as slow as estimated: after the first model the rest no longer fit
    clock, order = FakeClock(), []

    def slow(name: str) -> None:
        order.append(name)
        clock.now += 2 * est[name]

    done, skipped = benchmark.run_train_steps(rows, names, prof, deadline, slow, clock=clock)
    assert order == ["small"] and "mid" in skipped
    # a calibration scale from the inference pass applies from the start
    done, _ = benchmark.run_train_steps(
        rows, names, prof, deadline, exact, scale=100, clock=FakeClock()
    )
    assert done == []
    # no deadline: everything with a timing
    done, skipped = benchmark.run_train_steps(rows, names, prof, None, lambda n: None)
    assert done == ["big", "small", "mid"] and list(skipped) == ["broken"]
    assert benchmark.run_train_steps(rows, names, benchmark.PROFILES["quick"], None, exact) == (
        [],
        {},
    )


def test_budget_skips_the_training_step(calls: Calls, tmp_path: Path) -> None:
    res = benchmark.run_benchmark(
        ["malunet", "unet"], device="cpu", results_dir=tmp_path, budget_min=0.5, progress=False
    )  # 30 s: less than the reserve
    assert [s["modes"] for s in calls.speed] == [("inference",)]
    detail = {s.name: s.detail for s in res.stages}["speed"]
    assert "not timed: malunet: needs" in detail and "s left" in detail
    assert res.ok


def test_resolve_models() -> None:
    from models import UnknownModelError, list_models

    assert expand_models(None) == list_models()
    assert expand_models("unet,malunet,unet") == ["unet", "malunet"]
    assert set(expand_models("smp_*")) == set(list_models("smp_*"))
    with pytest.raises(UnknownModelError, match="malunett"):
        expand_models("malunett")
    with pytest.raises(ValueError, match="matches no registered model"):
        expand_models("nothing_*")


def test_cli_arguments(calls: Calls, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    assert (
        main(
            [
                "benchmark",
                "--models",
                "malunet",
                "--results",
                str(tmp_path),
                "--device",
                "cpu",
                "--quick",
                "--quiet",
            ]
        )
        == 0
    )
    assert calls.speed[0]["models"] == ["malunet"]
    assert main(["benchmark", "--models", "no_such_model", "--quiet"]) == 2
    assert "no_such_model" in capsys.readouterr().err
    assert main(["benchmark", "--epochs", "2", "--quiet"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["benchmark", "--data", str(tmp_path / "absent"), "--quiet"]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["benchmark", "--budget", "-1", "--quiet"]) == 2
    assert "--budget" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["benchmark", "--seeds", "1,x"])


def test_unavailable_cuda_is_a_clear_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: nothing to refuse")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert str(resolve_device("auto")) == "cpu"


def test_runtime_rows_do_not_feed_the_training_estimate() -> None:
    """Training steps are eager: their estimate uses eager rows, not the faster runtime's."""
    prof = benchmark.PROFILES["default"]
    rows = pd.DataFrame(
        [
            {"model": "m", "backend": "torch", "mode": "inference", "batch_size": 8,
             "median_ms": 400.0, "status": "ok"},
            {"model": "m", "backend": "onnxruntime", "mode": "inference", "batch_size": 8,
             "median_ms": 100.0, "status": "ok"},
        ]
    )  # fmt: skip
    assert benchmark._fwd_ms(rows, "m", 8) == 400.0
    assert benchmark._fwd_ms(rows, "m", 8, "onnxruntime") == 100.0
    # the prediction of the inference pass counts the runtime configurations and exports
    eager_only = benchmark.dataclasses.replace(prof, backends=("torch",))
    extra = benchmark.predict_inference_s(rows, ["m"], prof) - benchmark.predict_inference_s(
        rows, ["m"], eager_only
    )
    assert extra == pytest.approx(benchmark.EXPORT_S + benchmark.config_s(0.1, prof))
