"""Machine peak: the best backend wins and is recorded; failures are rows. No timing asserts."""

from __future__ import annotations

import math

import pytest
import torch

from bench.cost import peak


@pytest.fixture
def fake_timers(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """GEMM/copy timers returning fixed seconds; records the (size, threads, reps) calls."""
    calls: dict[str, list] = {"gemm": [], "conv": [], "copy": []}

    def timer(kind: str, seconds: float):  # noqa: ANN202
        def fn(size: int, threads: int, reps: int) -> float:
            calls[kind].append((size, threads, reps))
            return seconds

        return fn

    def broken(size: int, threads: int, reps: int) -> float:
        raise RuntimeError("kernel exploded")

    def absent(size: int, threads: int, reps: int) -> float:
        raise peak._Skip("openvino not installed")

    n = 100
    flops = 2 * n**3
    monkeypatch.setattr(
        peak,
        "GEMM_BACKENDS",
        {
            "torch": timer("gemm", flops / 200e9),  # 200 GFLOP/s
            "numpy": timer("gemm", flops / 250e9),
            "onnxruntime": timer("gemm", flops / 460e9),  # the fastest
            "openvino": absent,
            "broken": broken,
        },
    )

    def conv_timer(gflops: float):  # noqa: ANN202
        def fn(c: int, s: int, threads: int, reps: int) -> float:
            calls["conv"].append((c, s, threads, reps))
            return 2 * c * c * 9 * s * s / (gflops * 1e9)

        return fn

    monkeypatch.setattr(
        peak, "CONV_BACKENDS", {"torch": conv_timer(150.0), "onnxruntime": conv_timer(180.0)}
    )
    numel = (1 << 20) // 4  # 1 MiB
    monkeypatch.setattr(
        peak,
        "COPY_BACKENDS",
        {
            "torch": timer("copy", 2 * numel * 4 / 30e9),
            "numpy": timer("copy", 2 * numel * 4 / 12e9),
        },
    )
    return calls


def test_peak_is_the_best_backend_and_says_so(fake_timers) -> None:
    mp = peak.machine_peak(threads=2, n=100, copy_mib=1, reps=3)
    assert mp.compute_backend == "onnxruntime" and mp.bandwidth_backend == "torch"
    assert mp.peak.tflops == pytest.approx(0.460)
    assert mp.peak.gbps == pytest.approx(30.0)
    assert "onnxruntime" in mp.peak.source and "2 threads" in mp.peak.source
    for name in ("torch 200", "numpy 250", "onnxruntime 460", "openvino skipped", "broken error"):
        assert name in mp.peak.source
    # every backend ran with the same thread count and repetitions
    assert {c[1:] for c in fake_timers["gemm"]} == {(2, 3)}
    assert {c[0] for c in fake_timers["gemm"]} == {100}
    assert {c[0] for c in fake_timers["copy"]} == {(1 << 20) // 4}
    # the convolution probe ran too, at the default shape, and is listed
    assert {c for c in fake_timers["conv"]} == {(512, 32, 2, 3)}
    assert "3x3 conv 512ch 32px: torch 150, onnxruntime 180 GFLOP/s" in mp.peak.source


def test_a_convolution_faster_than_every_gemm_is_the_peak(fake_timers, monkeypatch) -> None:
    # seen on an AVX-512 EPYC: GEMM 199 GFLOP/s at best, onnxruntime's 3x3 conv 218
    slow = {k: v for k, v in peak.GEMM_BACKENDS.items() if k in ("torch", "numpy")}
    monkeypatch.setattr(peak, "GEMM_BACKENDS", slow)
    mp = peak.machine_peak(threads=2, n=100, conv_channels=64, conv_size=8, copy_mib=1, reps=1)
    assert mp.peak.tflops == pytest.approx(0.250)  # numpy's GEMM beats both convolutions
    monkeypatch.setitem(
        peak.CONV_BACKENDS, "onnxruntime", lambda c, s, t, r: 2 * c * c * 9 * s * s / 300e9
    )
    mp = peak.machine_peak(threads=2, n=100, conv_channels=64, conv_size=8, copy_mib=1, reps=1)
    assert mp.compute_backend == "onnxruntime conv" and mp.peak.tflops == pytest.approx(0.300)
    assert mp.peak.source.startswith("measured: best fp32 compute = onnxruntime 3x3 conv 64ch 8px")
    assert [m.backend for m in mp.conv] == ["torch", "onnxruntime"]


def test_failed_and_absent_backends_are_rows(fake_timers) -> None:
    rows = {m.backend: m for m in peak.measure_gemm(n=100, threads=1, reps=1)}
    assert rows["openvino"].status == "skipped" and "not installed" in rows["openvino"].reason
    assert rows["broken"].status == "error" and "kernel exploded" in rows["broken"].reason
    assert math.isnan(rows["broken"].value)
    assert rows["numpy"].value == pytest.approx(250.0)


def test_no_backend_measured_is_an_error(fake_timers) -> None:
    with pytest.raises(ValueError, match="no backend could be measured.*kernel exploded"):
        peak.machine_peak(threads=1, n=100, gemm_backends=["broken", "openvino"], conv_backends=[])
    # a convolution that could be measured is a compute peak on its own
    mp = peak.machine_peak(threads=1, n=100, copy_mib=1, gemm_backends=["broken"])
    assert mp.compute_backend == "onnxruntime conv"
    with pytest.raises(ValueError, match="unknown gemm backend"):
        peak.measure_gemm(n=100, backends=["tpu"])


def test_nonsense_timer_result_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peak, "GEMM_BACKENDS", {"zero": lambda n, t, r: 0.0})
    (row,) = peak.measure_gemm(n=8, threads=1, reps=1)
    assert row.status == "error" and "0.0" in row.reason


def test_as_dict_lists_every_measurement(fake_timers) -> None:
    d = peak.machine_peak(threads=1, n=100, copy_mib=1, reps=1).as_dict()
    assert d["compute_backend"] == "onnxruntime" and len(d["gemm"]) == 5
    assert {m["backend"] for m in d["conv"]} == {"torch", "onnxruntime"}
    assert {m["backend"] for m in d["bandwidth"]} == {"torch", "numpy"}


def test_real_timers_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real timers work at a tiny size (values only checked to be positive)."""
    rows = peak.measure_gemm(n=64, threads=1, reps=1)
    assert {m.backend for m in rows} == set(peak.GEMM_BACKENDS)
    for m in rows:
        if m.backend in ("torch", "numpy", "onnxruntime"):
            assert m.status == "ok" and m.value > 0, m
        else:  # openvino: ok, or skipped when it is not installed
            assert m.status in ("ok", "skipped"), m
    convs = peak.measure_conv(channels=8, size=8, threads=1, reps=1)
    assert [m.backend for m in convs] == list(peak.CONV_BACKENDS)
    assert all(m.status == "ok" and m.value > 0 for m in convs), convs
    copies = peak.measure_bandwidth(mib=1, threads=1, reps=1)
    assert all(m.status == "ok" and m.value > 0 for m in copies)


def test_bf16_peak_adds_bf16_gemms(fake_timers, monkeypatch: pytest.MonkeyPatch) -> None:
    flops = 2 * 100**3
    monkeypatch.setattr(
        peak,
        "BF16_GEMM_BACKENDS",
        {"torch-bf16": lambda n, t, r: flops / 900e9, "openvino-bf16": lambda n, t, r: 1.0},
    )
    fp32 = peak.machine_peak(threads=1, n=100, copy_mib=1, reps=1)
    assert fp32.compute_backend == "onnxruntime"  # bf16 timers are not fp32 candidates
    assert "torch-bf16" not in fp32.peak.source
    bf16 = peak.machine_peak(threads=1, dtype="bf16", n=100, copy_mib=1, reps=1)
    assert bf16.compute_backend == "torch-bf16" and bf16.peak.tflops == pytest.approx(0.9)
    assert "best bf16" in bf16.peak.source
    with pytest.raises(ValueError, match="dtype"):
        peak.measure_gemm(n=8, dtype="int8")


def test_resolve_peak_on_cpu_is_the_machine_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.cost import roofline

    seen = []
    fake = peak.MachinePeak(roofline.Peak(0.5, 20.0, "measured: fake"), "numpy", "torch", 2)

    def cached(dtype: str = "fp32", threads: int | None = None) -> peak.MachinePeak:
        seen.append((dtype, threads))
        return fake

    monkeypatch.setattr(peak, "cached_machine_peak", cached)
    assert roofline.resolve_peak("cpu", "fp32") is fake.peak
    assert seen == [("fp32", torch.get_num_threads())]
    override = roofline.Peak(1.0, 1.0, "override")
    assert roofline.resolve_peak("cpu", "fp32", override=override) is override
    assert len(seen) == 1
    # measuring off: no measurement, the table (None for an unknown CPU) decides
    roofline.resolve_peak("cpu", "fp32", measure=False)
    assert len(seen) == 1


def test_cached_machine_peak_measures_once(fake_timers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peak, "_CACHE", {})
    calls = []
    real = peak.machine_peak
    monkeypatch.setattr(
        peak, "machine_peak", lambda t, **k: calls.append(t) or real(t, n=100, copy_mib=1, reps=1)
    )
    a = peak.cached_machine_peak("fp32", threads=1)
    assert peak.cached_machine_peak("fp32", threads=1) is a and calls == [1]
    peak.cached_machine_peak("fp32", threads=2)
    assert calls == [1, 2]
