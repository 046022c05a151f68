"""Speed harness: statistics, OOM back-off, variant skips, roofline, result files, a tiny run.

No test asserts how long anything takes; the tiny model keeps the real run well
under a second of measuring.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import sys
import time
import types

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from bench.cost import roofline
from bench.cost.roofline import Peak, parse_peak, step_bytes, step_flops
from bench.cost.roofline import roofline as roofline_point
from bench.speed import checks, files, memory, run, steps, timing, variants
from bench.speed import worker as speed_worker


# --------------------------------------------------------------------------- fakes
class TinyNet(nn.Module):
    """Two convs; ``forward_aux`` adds one side head (deep supervision)."""

    aux_calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 1, 1)
        self.side = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        type(self).aux_calls += 1
        h = torch.relu(self.body(x))
        return self.head(h), [self.side(h)]


def _info(aux: bool) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        loss_weights=(1.0, (0.5,)) if aux else (1.0, ()), input_multiple=8, min_input=8
    )


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Registry stand-ins: 'tiny' (plain) and 'tiny_aux' (deep supervision); counts builds."""
    built = {"n": 0}

    def build(name: str) -> nn.Module:
        if name not in ("tiny", "tiny_aux"):
            raise AssertionError(f"unexpected model {name}")
        built["n"] += 1
        return TinyNet()

    def info(name: str) -> types.SimpleNamespace:
        from models import UnknownModelError

        if name not in ("tiny", "tiny_aux"):
            raise UnknownModelError(f"unknown model {name!r}")
        return _info(name == "tiny_aux")

    macs_per_pixel = 3 * 4 * 9 + 4  # body conv + head conv
    fake_cx = types.ModuleType("bench.cost.flops")
    fake_cx.analyze = lambda model, input_shape: types.SimpleNamespace(  # type: ignore[attr-defined]
        macs=macs_per_pixel * input_shape[2] * input_shape[3],
        activation_bytes=4 * (3 + 4 + 4 + 1) * input_shape[2] * input_shape[3],
    )
    monkeypatch.setattr(steps, "_build_model", build)
    monkeypatch.setattr(steps, "model_info", info)
    monkeypatch.setitem(sys.modules, "bench.cost.flops", fake_cx)
    TinyNet.aux_calls = 0
    return built


QUICK = dict(
    min_time_s=0.0, min_iters=3, warmup=1, input_size=32, progress=False, peak="1,10",
    isolate=False,
)  # fmt: skip


# --------------------------------------------------------------------------- statistics
@pytest.mark.parametrize(
    "values",
    [
        [5.0],
        [1.0, 2.0],
        [3.0, 1.0, 2.0, 10.0, 4.0],
        list(np.random.default_rng(0).lognormal(0.0, 0.5, 37)),
    ],
)
def test_summarize_matches_numpy(values: list[float]) -> None:
    st = timing.summarize(values)
    ms = np.asarray(values) * 1e3
    assert st.median_ms == pytest.approx(np.median(ms))
    assert st.q1_ms == pytest.approx(np.percentile(ms, 25))
    assert st.q3_ms == pytest.approx(np.percentile(ms, 75))
    assert st.iqr_ms == pytest.approx(np.percentile(ms, 75) - np.percentile(ms, 25))
    assert st.p90_ms == pytest.approx(np.percentile(ms, 90))
    assert st.mean_ms == pytest.approx(ms.mean())
    assert st.min_ms == pytest.approx(ms.min())
    assert st.count == len(values)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, -0.1], [[1.0, 2.0]]])
def test_summarize_rejects_bad_input(bad: list) -> None:
    with pytest.raises(ValueError):
        timing.summarize(bad)


def test_noisy_flag_follows_iqr_over_median() -> None:
    tight = [0.100, 0.101, 0.099, 0.100, 0.102]  # IQR/median = 0.01
    spread = [0.100, 0.150, 0.080, 0.120, 0.090]  # IQR/median = 0.3
    assert not timing.summarize(tight).noisy
    assert timing.summarize(spread).noisy
    assert not timing.summarize(spread, noisy_threshold=0.5).noisy
    assert timing.summarize(tight, noisy_threshold=0.005).noisy
    with pytest.raises(ValueError):
        timing.summarize(tight, noisy_threshold=-1)


def test_time_step_counts_warmup_and_iterations() -> None:
    calls = []
    times, capped = timing.time_step(
        lambda: calls.append(1), "cpu", warmup=2, min_time_s=0.0, min_iters=5
    )
    assert len(times) == 5 and len(calls) == 7 and not capped
    assert all(t >= 0 for t in times)


def test_time_step_cap_keeps_minimum_iterations() -> None:
    times, capped = timing.time_step(
        lambda: time.sleep(0.002), "cpu", warmup=0, min_time_s=0.0, min_iters=10_000,
        max_time_s=0.001,
    )  # fmt: skip
    assert capped and timing.MIN_CAPPED_ITERS <= len(times) < 10_000


def test_time_step_cuda_events_use_the_model_devices_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # cuda:1 while the current device is 0: a bare Event.record() would time device 0's idle
    # stream. Fakes stand in for the CUDA runtime (no GPU needed).
    streams = {0: object(), 1: object()}
    recorded: list[object] = []

    class FakeEvent:
        def __init__(self, enable_timing: bool = False) -> None:
            self.t = 0.0

        def record(self, stream: object = None) -> None:
            recorded.append(stream)
            self.t = time.perf_counter()

        def synchronize(self) -> None:
            pass

        def elapsed_time(self, other: FakeEvent) -> float:
            return (other.t - self.t) * 1e3

    def current_stream(device: object = None) -> object:
        return streams[torch.device(device).index if device is not None else 0]

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    times, _ = timing.time_step(
        lambda: None, torch.device("cuda", 1), warmup=1, min_time_s=0.0, min_iters=3
    )
    assert len(times) == 3
    assert len(recorded) == 6 and all(s is streams[1] for s in recorded)


def test_measure_config_always_warms_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first call compiles (torch.compile) or autotunes (cuDNN): never timed, even with
    # warmup=0.
    calls = {"n": 0}

    class Counting(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            return super().forward(x)

    monkeypatch.setattr(steps, "_build_model", lambda name: Counting())
    row = steps.measure_config(
        "tiny", _info(False), torch.device("cpu"), "inference", "fp32", False, False, 1,
        input_size=16, timing={"warmup": 0, "min_time_s": 0.0, "min_iters": 3,
                               "max_time_s": None},
        noisy_threshold=0.1, threads=1,
    )  # fmt: skip
    assert row["count"] == 3 and calls["n"] == 4


# --------------------------------------------------------------------------- OOM back-off
def test_sweep_backs_off_on_oom_and_records_it() -> None:
    calls: list[int] = []
    freed: list[int] = []

    def measure(b: int) -> dict:
        calls.append(b)
        if b > 4:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate at batch {b}")
        return {"median_ms": float(b)}

    rows = variants.sweep_batch_sizes([1, 8, 32], measure, free=lambda: freed.append(1))
    assert calls == [1, 8, 4]  # 32 is known to fail above 8; batch 4 is reused, not re-run
    assert len(freed) == 1
    assert [(r["requested_batch_size"], r["batch_size"]) for r in rows] == [(1, 1), (8, 4), (32, 4)]
    assert all(r["status"] == "ok" for r in rows)
    assert "reason" not in rows[0] or not rows[0]["reason"]
    assert "out of memory at batch sizes 8" in rows[1]["reason"]
    assert "backed off to 4" in rows[1]["reason"]
    assert "32 (inferred)" in rows[2]["reason"] and "backed off to 4" in rows[2]["reason"]
    assert rows[2]["median_ms"] == 4.0


def test_sweep_oom_even_at_batch_one_is_an_error_row() -> None:
    def measure(b: int) -> dict:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    rows = variants.sweep_batch_sizes([2], measure, free=lambda: None)
    assert rows[0]["status"] == "error"
    assert rows[0]["reason"] == "out of memory at batch sizes 2, 1"
    assert rows[0]["batch_size"] == 2


def test_sweep_other_errors_are_recorded_not_retried() -> None:
    calls: list[int] = []

    def measure(b: int) -> dict:
        calls.append(b)
        raise ValueError("Expected more than 1 value per channel when training")

    rows = variants.sweep_batch_sizes([4], measure, free=lambda: None)
    assert calls == [4]
    assert rows[0]["status"] == "error"
    assert rows[0]["reason"].startswith("ValueError: Expected more than 1 value")


# --------------------------------------------------------------------------- variants
def test_variant_skip_reasons() -> None:
    assert "fp16" in variants.variant_skip_reason("cpu", "fp16", False)
    assert variants.variant_skip_reason("cpu", "bf16", False) is None
    assert variants.variant_skip_reason("cpu", "fp32", False) is None
    with pytest.raises(ValueError, match="dtype must be one of"):
        variants.variant_skip_reason("cpu", "int8", False)


def test_compile_without_a_cxx_compiler_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(variants.shutil, "which", lambda name: None)
    reason = variants.variant_skip_reason("cpu", "fp32", True)
    assert reason is not None and "C++ compiler" in reason


def test_run_speed_skips_unsupported_variants_with_reasons(
    fake_models: dict, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(variants.shutil, "which", lambda name: None)
    df = run.run_speed(
        ["tiny"], dtypes=("fp16",), batch_sizes=(1, 2), compile=(False, True),
        modes=("inference",), out_dir=tmp_path, **QUICK,
    )  # fmt: skip
    assert fake_models["n"] == 0  # nothing was built or timed
    assert len(df) == 4 and set(df["status"]) == {"skipped"}
    assert all("fp16 autocast is not offered on CPU" in r for r in df["reason"])
    assert df["median_ms"].isna().all()


def test_run_speed_reports_input_size_problems(fake_models: dict, tmp_path) -> None:
    df = run.run_speed(
        ["tiny"], batch_sizes=(1,), modes=("inference",), out_dir=None,
        **{**QUICK, "input_size": 30},
    )  # fmt: skip
    assert df["status"].tolist() == ["error"]  # the request cannot be met: not a skip
    assert "multiples of 8" in df["reason"].iloc[0]


def test_run_speed_rejects_bad_arguments(fake_models: dict) -> None:
    with pytest.raises(ValueError, match="modes"):
        run.run_speed(["tiny"], modes=("infer",), out_dir=None, **QUICK)
    with pytest.raises(ValueError, match="batch_sizes"):
        run.run_speed(["tiny"], batch_sizes=(0,), out_dir=None, **QUICK)
    with pytest.raises(ValueError, match="device"):
        run.run_speed(["tiny"], device="tpu", out_dir=None, **QUICK)
    with pytest.raises(KeyError, match="unknown model"):
        run.run_speed(["nope"], out_dir=None, **QUICK)


# --------------------------------------------------------------------------- roofline
def test_roofline_memory_and_compute_bound() -> None:
    peak = Peak(10.0, 100.0, "test")  # 1e13 FLOP/s, 1e11 B/s -> ridge at 100 FLOP/B
    mem = roofline_point(1e9, 1e8, peak, achieved_flops=5e11)
    assert mem.intensity == pytest.approx(10.0)
    assert mem.bound_flops == pytest.approx(1e12) and mem.limiter == "memory"
    assert mem.fraction == pytest.approx(0.5)
    comp = roofline_point(1e12, 1e9, peak, achieved_flops=2e12)
    assert comp.bound_flops == pytest.approx(1e13) and comp.limiter == "compute"
    assert comp.fraction == pytest.approx(0.2)
    assert math.isnan(roofline_point(1.0, 1.0, peak).fraction)
    with pytest.raises(ValueError):
        roofline_point(0.0, 1.0, peak)


def test_step_flops_and_bytes() -> None:
    assert step_flops(100, 4, "inference") == 800
    assert step_flops(100, 4, "train") == 2400
    # 2 * activations * batch + params; train: 3x activations, 10x params
    assert step_bytes(1000, 50, 2, "inference") == 4050
    assert step_bytes(1000, 50, 2, "train") == 3 * 4000 + 500
    assert step_bytes(1000, 50, 2, "inference", activation_scale=0.5) == 2050
    with pytest.raises(ValueError):
        step_flops(1, 1, "eval")


def test_parse_peak_and_table() -> None:
    p = parse_peak(" 989, 3350 ")
    assert (p.tflops, p.gbps) == (989.0, 3350.0) and "override" in p.source
    for bad in ("989", "a,b", "1,2,3", "-1,5", "0,10"):
        with pytest.raises(ValueError, match="--peak"):
            parse_peak(bad)
    sxm = roofline.table_peak("NVIDIA H100 80GB HBM3", "fp32", tf32=True)
    assert sxm is not None and sxm.tflops == pytest.approx(494.7) and sxm.gbps == 3350.0
    assert roofline.table_peak("NVIDIA H100 80GB HBM3", "fp32", tf32=False).tflops == 67.0
    assert roofline.table_peak("NVIDIA H100 PCIe", "bf16").gbps == 2000.0
    assert roofline.table_peak("NVIDIA H200", "fp16").gbps == 4800.0
    cpu = roofline.table_peak("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "fp32", threads=4)
    assert cpu is not None and cpu.tflops == pytest.approx(4 * 0.1856)
    assert roofline.table_peak("Intel(R) Xeon(R) Platinum 8375C", "bf16") is None
    assert roofline.table_peak("Some Unknown Accelerator", "fp32") is None


def test_measure_peak_small_is_positive_and_cached() -> None:
    a = roofline.measure_peak("cpu", "fp32", reps=2, matmul_n=64, copy_numel=1 << 16)
    assert a.tflops > 0 and a.gbps > 0 and a.source.startswith("measured")
    assert roofline.measure_peak("cpu", "fp32", reps=2, matmul_n=64, copy_numel=1 << 16) is a


# --------------------------------------------------------------------------- memory
@pytest.mark.parametrize("method", ["auto", "sample"])
def test_peak_rss_sees_a_large_allocation(method: str) -> None:
    with memory.PeakRSS(method=method, interval_s=0.001) as rss:
        # A fresh anonymous mapping: np.ones could reuse pages malloc kept resident from
        # earlier tests, which would not raise RSS at all.
        mm = mmap.mmap(-1, 64 * 2**20)
        block = np.frombuffer(mm, dtype=np.uint8)
        block[:] = 1  # touch every page
        time.sleep(0.02)  # give the sampler a chance; the kernel counter needs none
        del block
        mm.close()
    assert rss.delta_mb > 48
    assert rss.peak_mb >= rss.start_bytes / 2**20 + 48
    assert rss.method


# --------------------------------------------------------------------------- files
def _rows(model: str, median: float, run: str) -> pd.DataFrame:
    return files._frame(
        [
            {"model": model, "mode": "inference", "dtype": "fp32", "layout": "contiguous",
             "compile": False, "batch_size": b, "requested_batch_size": b, "threads": 1,
             "input_size": 32, "device": "cpu", "median_ms": median, "status": "ok",
             "reason": "", "run": run}
            for b in (1, 8)
        ]
    )  # fmt: skip


def test_write_results_merges_and_replaces(tmp_path) -> None:
    files.write_results(_rows("a", 1.0, "r1"), tmp_path, "cpu-test", "r1", {"command": "one"})
    new = _rows("a", 2.0, "r2").iloc[:1]  # re-measure a @ batch 1 only
    new = pd.concat([new, _rows("b", 3.0, "r2")])
    csv, js = files.write_results(new, tmp_path, "cpu-test", "r2", {"command": "two"})
    assert csv.name == "speed-cpu-test.csv" and js.name == "speed-cpu-test.json"
    df = pd.read_csv(csv)
    assert len(df) == 4
    assert list(df.columns[: len(files.SCHEMA_COLUMNS)]) == files.SCHEMA_COLUMNS
    got = {(r.model, r.batch_size): r.median_ms for r in df.itertuples()}
    assert got == {("a", 1): 2.0, ("a", 8): 1.0, ("b", 1): 3.0, ("b", 8): 3.0}
    data = json.loads(js.read_text())
    assert set(data["runs"]) == {"r1", "r2"} and data["runs"]["r2"]["command"] == "two"
    assert len(data["rows"]) == 4
    # a full re-run drops the run nothing refers to any more
    files.write_results(pd.concat([_rows("a", 5.0, "r3"), _rows("b", 5.0, "r3")]),
                        tmp_path, "cpu-test", "r3", {"command": "three"})  # fmt: skip
    data = json.loads(js.read_text())
    assert set(data["runs"]) == {"r3"} and len(data["rows"]) == 4
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes left no temp files


def test_concurrent_writers_keep_every_row(tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def write(i: int) -> None:
        files.write_results(_rows(f"m{i}", float(i), f"r{i}"), tmp_path, "cpu-t", f"r{i}", {})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(16)))
    data = json.loads((tmp_path / "speed-cpu-t.json").read_text())
    assert len(data["rows"]) == 32 and len(data["runs"]) == 16
    assert len(pd.read_csv(tmp_path / "speed-cpu-t.csv")) == 32


def test_write_results_refuses_a_corrupt_json(tmp_path) -> None:
    (tmp_path / "speed-cpu-x.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="speed-cpu-x.json"):
        files.write_results(_rows("a", 1.0, "r"), tmp_path, "cpu-x", "r", {})


# --------------------------------------------------------------------------- real tiny run
def test_run_speed_tiny_cpu_end_to_end(fake_models: dict, tmp_path) -> None:
    before = torch.get_num_threads()
    df = run.run_speed(
        ["tiny", "tiny_aux"], batch_sizes=(1, 2), threads=1, out_dir=tmp_path, **QUICK
    )
    assert torch.get_num_threads() == before  # restored
    assert len(df) == 2 * 2 * 2 and set(df["status"]) == {"ok"}
    assert (df["threads"] == 1).all() and (df["count"] >= 3).all()
    assert (df["median_ms"] > 0).all() and (df["p90_ms"] >= df["median_ms"]).all()
    assert np.allclose(df["throughput_img_s"], df["batch_size"] / (df["median_ms"] / 1e3))
    macs = (3 * 4 * 9 + 4) * 32 * 32
    mult = df["mode"].map({"inference": 2, "train": 6})
    expect = mult * macs * df["batch_size"] / (df["median_ms"] / 1e3) / 1e9
    assert np.allclose(df["achieved_gflops"], expect)
    assert (df["roofline_fraction"] > 0).all() and (df["peak_tflops"] == 1.0).all()
    assert df["peak_mem_mb"].isna().all()  # CUDA only
    assert (df["rss_mb"] > 0).all()
    assert TinyNet.aux_calls > 0  # deep supervision heads were trained
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".csv") and files[1].endswith(".json")
    data = json.loads((tmp_path / files[1]).read_text())
    (meta,) = data["runs"].values()
    assert meta["environment"]["torch_threads"] == 1 and "run_speed(" in meta["command"]


def test_cli_speed_prints_table_and_writes(fake_models: dict, tmp_path, capsys) -> None:
    from bench.cli import main

    rc = main(["speed", "--models", "tiny", "--batch-sizes", "1", "--modes", "inference",
               "--min-time", "0", "--min-iters", "3", "--warmup", "1", "--input-size", "32",
               "--threads", "1", "--peak", "1,10", "--results", str(tmp_path), "--quiet", "--no-isolate"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "median ms" in out and "tiny" in out and "wrote" in out
    data = json.loads(next((tmp_path / "speed").glob("*.json")).read_text())
    (meta,) = data["runs"].values()
    assert meta["command"].startswith("segbench speed --models 'tiny'")
    assert f"--results {tmp_path}" in meta["command"]


def test_cli_speed_rejects_bad_arguments(fake_models: dict, tmp_path, capsys) -> None:
    from bench.cli import main

    assert main(["speed", "--models", "nope", "--results", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err
    for args in (["--peak", "989"], ["--batch-sizes", "1,x"], ["--dtype", "int8"]):
        with pytest.raises(SystemExit) as exc:
            main(["speed", "--models", "tiny", *args])
        assert exc.value.code == 2
    assert "--dtype" in capsys.readouterr().err


def test_run_speed_runtime_backends(fake_models: dict, tmp_path) -> None:
    """One run, three backends: same schema, backend column, versions, precision, agreement."""
    df = run.run_speed(
        ["tiny"], batch_sizes=(1, 2), modes=("inference",), threads=1, out_dir=tmp_path,
        backends=("torch", "onnxruntime", "openvino"), exporters=("torchscript",), **QUICK,
    )  # fmt: skip
    ok = df[df["status"] == "ok"]
    assert set(df["backend"]) == {"torch", "onnxruntime", "openvino"} or (
        set(df["backend"]) == {"torch", "onnxruntime"}
    )
    ort_rows = df[df["backend"] == "onnxruntime"]
    assert len(ort_rows) == 2 and set(ort_rows["status"]) == {"ok"}, ort_rows["reason"].tolist()
    assert (ort_rows["exporter"] == "torchscript").all()
    assert (ort_rows["backend_version"] != "").all() and (ort_rows["mode"] == "inference").all()
    assert ort_rows["precision_detail"].str.startswith("fp32 (provider=CPUExecutionProvider").all()
    assert ort_rows["precision_detail"].str.contains("intra_op_num_threads=1").all()
    # the runtime computes what eager computes (same seeded weights, same input)
    assert (ort_rows["out_rel_max_diff"] < 1e-4).all() and (ort_rows["out_mask_diff"] == 0).all()
    torch_rows = df[df["backend"] == "torch"]
    assert (torch_rows["precision_detail"] == "fp32 (no autocast)").all()
    assert torch_rows["out_max_abs_diff"].isna().all()  # fp32 eager is the reference itself
    assert (ok["achieved_gflops"] > 0).all() and (ok["threads"] == 1).all()
    ov_rows = df[df["backend"] == "openvino"]
    for _, r in ov_rows.iterrows():
        if r["status"] == "ok":
            assert "inference_precision_hint=f32" in r["precision_detail"]
        else:
            assert r["status"] == "skipped" and "openvino" in r["reason"]
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    (meta,) = data["runs"].values()
    assert meta["backends"] == ["torch", "onnxruntime", "openvino"]
    assert meta["runtime_versions"]["onnxruntime"]


def test_runtime_rows_keep_eager_rows_and_old_files(fake_models: dict, tmp_path) -> None:
    """Rows of different backends never replace each other; rows from before the backend
    column are eager rows and are replaced by a new eager run of the same configuration."""
    files.write_results(_rows("tiny", 5.0, "old"), tmp_path, "cpu-t", "old", {})
    path = tmp_path / "speed-cpu-t.json"
    data = json.loads(path.read_text())
    for r in data["rows"]:  # a file written before the backend column existed
        del r["backend"]
    path.write_text(json.dumps(data))
    kw = dict(batch_sizes=(1,), modes=("inference",), threads=1, exporters=("torchscript",))
    for backend in ("onnxruntime", "torch"):
        df = run.run_speed(["tiny"], out_dir=None, backends=(backend,), **kw, **QUICK)
        df["device_name"] = "t"
        files.write_results(df, tmp_path, "cpu-t", backend, {})
    rows = json.loads(path.read_text())["rows"]
    assert sorted((r["backend"], r["batch_size"]) for r in rows) == [
        ("onnxruntime", 1),
        ("torch", 1),
        ("torch", 8),
    ]
    fresh = next(r for r in rows if r["batch_size"] == 1 and r["backend"] == "torch")
    assert fresh["run"] != "old"  # the eager re-run replaced the old eager row


def test_runtime_skip_and_export_failure_are_rows(
    fake_models: dict, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.speed import runtime

    df = run.run_speed(
        ["tiny"], batch_sizes=(1,), modes=("inference",), dtypes=("bf16",), threads=1,
        out_dir=None, backends=("onnxruntime",), exporters=("torchscript",), **QUICK,
    )  # fmt: skip
    assert df["status"].tolist() == ["skipped"] and "bf16" in df["reason"].iloc[0]

    def broken_export(name, path, input_size, exporters):  # noqa: ANN001
        return {"status": "error", "exporter": "", "reason": "torchscript: Boom: no symbolic"}

    monkeypatch.setattr(run, "export_for_speed", broken_export)
    df = run.run_speed(
        ["tiny"], batch_sizes=(1, 2), modes=("inference",), threads=1, out_dir=None,
        backends=("torch", "onnxruntime"), **QUICK,
    )  # fmt: skip
    bad = df[df["backend"] == "onnxruntime"]
    assert bad["status"].tolist() == ["error", "error"]
    assert bad["reason"].str.contains("ONNX export failed: torchscript: Boom").all()
    assert set(df[df["backend"] == "torch"]["status"]) == {"ok"}
    with pytest.raises(ValueError, match="backends"):
        run.run_speed(["tiny"], backends=("tvm",), out_dir=None, **QUICK)
    assert runtime.runtime_skip_reason("openvino", torch.device("cuda"), "fp32")


def test_runtime_outside_tolerance_is_an_error_not_a_timing(
    fake_models: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.deploy import check

    impossible = check.Tolerance(rtol=0.0, atol=-1.0, reason="test: nothing passes")
    monkeypatch.setitem(check.TOLERANCES, "tiny", impossible)
    df = run.run_speed(
        ["tiny"], batch_sizes=(1,), modes=("inference",), threads=1, out_dir=None,
        backends=("onnxruntime",), exporters=("torchscript",), **QUICK,
    )  # fmt: skip
    (row,) = df.to_dict(orient="records")
    assert row["status"] == "error" and "output differs from eager fp32" in row["reason"]
    assert pd.isna(row["median_ms"])


def test_bf16_autocast_rows_report_agreement(fake_models: dict) -> None:
    df = run.run_speed(
        ["tiny"], batch_sizes=(1,), modes=("inference",), dtypes=("bf16",), threads=1,
        out_dir=None, **QUICK,
    )  # fmt: skip
    (row,) = df.to_dict(orient="records")
    assert row["status"] == "ok" and row["precision_detail"].startswith("bf16 autocast")
    assert 0 < row["out_max_abs_diff"] < 1.0  # bf16 rounds, but computes the same thing


# --------------------------------------------------------------------------- isolation
def test_worker_turns_crashes_and_errors_into_exceptions() -> None:
    # Library functions pickle by reference, so the spawned worker need not import this file.
    with speed_worker.Worker() as worker:
        assert worker.call(pow, 3, 2) == 9
        with pytest.raises(torch.OutOfMemoryError, match="can't allocate memory"):
            worker.call(torch.empty, 2**50)  # 4 PiB: the CPU allocator refuses
        with pytest.raises(variants.MeasurementError, match="ValueError: invalid literal"):
            worker.call(int, "x")
        # a crash inside a sweep is one error row, not the end of the run
        rows = variants.sweep_batch_sizes(
            [1], lambda b: worker.call(ctypes.string_at, 0), free=lambda: None
        )  # reads address 0
    assert rows[0]["status"] == "error" and "killed by SIGSEGV" in rows[0]["reason"]


def test_each_backend_measures_in_its_own_process_and_alone() -> None:
    # os.getpid pickles by reference; the worker's answer is the process that measured
    with speed_worker.BackendWorkers() as workers:
        torch_pid = workers.call_for("torch")(os.getpid)
        assert workers.call_for("torch")(os.getpid) == torch_pid  # reused within a backend
        first = workers._worker
        ort_pid = workers.call_for("onnxruntime")(os.getpid)
        assert len({torch_pid, ort_pid, os.getpid()}) == 3
        assert first is not None and first._proc is None  # torch's worker ended first
        assert workers.call_for("torch")(os.getpid) not in (torch_pid, ort_pid)
    assert workers._worker is None


@pytest.mark.slow
def test_worker_memory_limit_and_restart_after_a_crash() -> None:
    with speed_worker.Worker(mem_limit_gb=3) as worker:
        with pytest.raises(torch.OutOfMemoryError):
            worker.call(torch.ones, 2**30)  # 4 GiB > the 3 GiB heap limit
        assert worker.call(torch.ones, 2**20).numel() == 2**20  # 4 MiB still fine
        with pytest.raises(variants.WorkerCrashed, match="SIGSEGV"):
            worker.call(ctypes.string_at, 0)
        assert worker.call(pow, 2, 5) == 32  # a fresh worker took over
    with pytest.raises(ValueError, match="mem_limit_gb"):
        speed_worker.Worker(mem_limit_gb=0)


@pytest.mark.slow
def test_run_speed_isolated_with_a_registered_model(tmp_path) -> None:
    from models import list_models

    if "malunet" not in list_models():
        pytest.skip("malunet is not registered yet")
    df = run.run_speed(
        ["malunet"], batch_sizes=(1,), threads=1, out_dir=tmp_path,
        **{**QUICK, "isolate": True, "min_iters": 2},
    )  # fmt: skip
    assert df["status"].tolist() == ["ok", "ok"], df["reason"].tolist()
    assert (df["achieved_gflops"] > 0).all() and (df["rss_mb"] > 0).all()


# --------------------------------------------------------------------------- timer check
@pytest.mark.slow
def test_timer_agrees_with_torch_utils_benchmark() -> None:
    """Median of this timer vs torch.utils.benchmark.Timer, same model and threads (10%)."""
    from models import list_models

    name = "malunet" if "malunet" in list_models() else None
    model = name or nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 1, 1))
    res = checks.check_against_torch_timer(model, threads=1, input_size=128, min_time_s=2.0)
    assert res["ok"], res
