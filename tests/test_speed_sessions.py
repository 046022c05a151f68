"""One speed or deployment table = one host and one measuring run (issue 24, item 5)."""

from __future__ import annotations

import json
import math
import warnings

import pandas as pd
import pytest

from bench.analysis.report.load import ReportInputError
from bench.speed import files, sessions


def _rows(model: str, run: str, host: str, peak: float, bs: tuple[int, ...] = (1, 8),
          median: float = 10.0) -> pd.DataFrame:  # fmt: skip
    return files._frame(
        [
            {"model": model, "mode": "inference", "dtype": "fp32", "layout": "contiguous",
             "compile": False, "batch_size": b, "requested_batch_size": b, "threads": 2,
             "input_size": 32, "device": "cpu", "device_name": host, "median_ms": median * b,
             "status": "ok", "reason": "", "run": run, "peak_tflops": peak, "peak_gbps": 20.0}
            for b in bs
        ]
    )  # fmt: skip


def _meta(peak: float) -> dict:
    return {"peaks": {"fp32": {"tflops": peak, "gbps": 20.0, "source": "test"}}}


def test_writer_replaces_an_older_measuring_run(tmp_path) -> None:
    files.write_results(_rows("a", "r1", "EPYC", 0.1889), tmp_path, "cpu-t", "r1", _meta(0.1889))
    # same measuring run (same peak), another call: rows are merged
    files.write_results(_rows("b", "r2", "EPYC", 0.1889), tmp_path, "cpu-t", "r2", _meta(0.1889))
    data = json.loads((tmp_path / "speed-cpu-t.json").read_text())
    assert {r["model"] for r in data["rows"]} == {"a", "b"}
    # a new measuring run (another peak) replaces both older runs' rows
    with pytest.warns(UserWarning, match="dropped 4 row"):
        files.write_results(
            _rows("c", "r3", "EPYC", 0.1331), tmp_path, "cpu-t", "r3", _meta(0.1331)
        )
    data = json.loads((tmp_path / "speed-cpu-t.json").read_text())
    assert {r["model"] for r in data["rows"]} == {"c"} and set(data["runs"]) == {"r3"}
    # another host: replaced too
    with pytest.warns(UserWarning, match="host"):
        files.write_results(
            _rows("d", "r4", "Xeon", 0.1331), tmp_path, "cpu-t", "r4", _meta(0.1331)
        )
    assert set(pd.read_csv(tmp_path / "speed-cpu-t.csv")["model"]) == {"d"}


def _mixed_file(folder) -> None:
    """A fixture speed file holding two hosts and two peaks, as written before the fix."""
    rows = pd.concat([_rows("a", "r1", "EPYC", 0.1889), _rows("a", "r2", "Xeon", 0.1331)])
    rows.loc[rows["run"] == "r2", "mode"] = "train"  # distinct configurations, so both stay
    (folder / "speed").mkdir(parents=True)
    rows.to_csv(folder / "speed" / "speed-cpu-t.csv", index=False)
    recs = files._records(rows)
    meta = {"r1": _meta(0.1889), "r2": _meta(0.1331)}
    (folder / "speed" / "speed-cpu-t.json").write_text(
        json.dumps({"device_slug": "cpu-t", "runs": meta, "rows": recs})
    )


def test_report_refuses_a_speed_file_with_two_hosts_and_peaks(tmp_path) -> None:
    from bench.analysis.report.write import write_report

    _mixed_file(tmp_path)
    with pytest.raises(ReportInputError, match=r"speed-cpu-t\.csv.*r1.*r2.*host"):
        write_report(tmp_path, tmp_path / "out", progress=False)


def test_keep_latest_run_repairs_a_mixed_file(tmp_path) -> None:
    _mixed_file(tmp_path)
    path = tmp_path / "speed" / "speed-cpu-t.csv"
    with pytest.raises(sessions.MixedSpeedFileError):
        files.read_checked(path)
    assert files.keep_latest_run(path) == 2
    df, runs = files.read_checked(path)
    assert set(df["run"]) == {"r2"} and set(runs) == {"r2"}
    assert files.keep_latest_run(path) == 0  # nothing more to drop


def test_same_peak_within_tolerance_is_one_run() -> None:
    a = sessions.run_identity(files._records(_rows("a", "r1", "EPYC", 0.1889)))
    b = sessions.run_identity(files._records(_rows("b", "r2", "EPYC", 0.18895)))
    c = sessions.run_identity(files._records(_rows("b", "r2", "EPYC", 0.20)))
    assert sessions.compatible(a, b)[0]
    ok, why = sessions.compatible(a, c)
    assert not ok and "188.9" in why and "200.0" in why


def test_deploy_writer_keeps_one_host(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.core import env as core_env
    from bench.jobs.deploy_table import merge_write
    from bench.jobs.precision import PRECISION_KEY

    host = {"name": "AMD EPYC (2 cores, AVX2)"}
    monkeypatch.setattr(
        core_env, "environment",
        lambda dev="cpu": {"device_name": host["name"], "git_commit": "x", "load_average": [0.5]},
    )  # fmt: skip
    row = {"model": "m", "variant": "torch fp32", "status": "ok", "latency_ms": 1.0}
    merge_write(pd.DataFrame([row]), tmp_path / "precision", PRECISION_KEY)
    merge_write(pd.DataFrame([{**row, "model": "n"}]), tmp_path / "precision", PRECISION_KEY)
    assert len(pd.read_csv(tmp_path / "precision.csv")) == 2
    host["name"] = "AMD EPYC (2 cores, AVX-512+BF16)"
    with pytest.warns(UserWarning, match="one host"):
        merge_write(pd.DataFrame([row]), tmp_path / "precision", PRECISION_KEY)
    df = pd.read_csv(tmp_path / "precision.csv")
    assert list(df["cpu"]) == [host["name"]] and list(df["model"]) == ["m"]


def test_report_refuses_a_deployment_table_of_two_hosts(tmp_path) -> None:
    from bench.analysis.report.write import write_report

    (tmp_path / "deploy").mkdir()
    (tmp_path / "complexity").mkdir()
    pd.DataFrame({"model": ["m"], "params_total": [1.0], "macs": [1.0]}).to_csv(
        tmp_path / "complexity" / "complexity.csv", index=False
    )
    pd.DataFrame(
        {"model": ["m", "m"], "variant": ["a", "b"], "status": ["ok", "ok"], "cpu": ["X", "Y"]}
    ).to_csv(tmp_path / "deploy" / "precision.csv", index=False)
    with pytest.raises(ReportInputError, match="precision.csv.*2 hosts"):
        write_report(tmp_path, tmp_path / "out", progress=False)


def test_batch_scaling_flags_rising_per_image_time() -> None:
    df = pd.concat([_rows("a", "r", "h", 0.1, median=10.0)])
    df.loc[df["batch_size"] == 8, "median_ms"] = 8 * 10.0 * 12.7  # lraspp on the AMX host
    out = files.batch_scaling(df)
    big = out[out["batch_size"] == 8].iloc[0]
    assert big["per_image_vs_b1"] == pytest.approx(12.7)
    assert "12.70x" in big["batch_scaling"]
    fine = files.batch_scaling(_rows("a", "r", "h", 0.1))  # linear: per image the same
    assert (fine["batch_scaling"] == "").all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fine["per_image_vs_b1"].dropna().tolist() == [1.0, 1.0]


def test_rss_delta_under_the_weights_size_is_marked_not_measured() -> None:
    """Issue 24 item 6: ResNet34-UNet's 98 MB of weights cannot add 0.1 MB of RSS."""
    df = _rows("big", "r", "h", 0.1)
    df["rss_delta_mb"] = [0.14, 287.5]
    df["weights_mb"] = 93.2
    out = files.rss_checked(df)
    assert math.isnan(out["rss_delta_mb"].iloc[0]) and out["rss_delta_mb"].iloc[1] == 287.5
    assert "below the weights' 93.2 MB" in out["reason"].iloc[0]
    assert out["reason"].iloc[1] == ""
    # rows without the weights' size (older files) are left alone
    df["weights_mb"] = math.nan
    assert files.rss_checked(df)["rss_delta_mb"].tolist() == [0.14, 287.5]


def test_writer_marks_rss_rows_and_free_memory_trims() -> None:
    from bench.speed import memory

    assert memory.rss_delta_check(50.0, 12.0) == ""
    assert memory.rss_delta_check(float("nan"), 12.0) == ""
    assert "not measured" in memory.rss_delta_check(1.0, 12.0)
    memory._free_memory()  # runs (glibc: malloc_trim) without raising anywhere
