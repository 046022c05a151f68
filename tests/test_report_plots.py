"""Pareto and roofline figures (issue 24 items 10, 16, 18): what they mark, not pixels."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.analysis.report.pareto_plot import (
    Panel,
    ParetoPoint,
    front_status,
    marker_for,
    plot_pareto_panels,
)
from bench.analysis.report.roofline_plot import plot_roofline, roofline_points


def _p(i: int, x: float, y: float, yerr: float = 0.1, xerr: float = math.nan, n: int = 3,
       precision: str = "fp32") -> ParetoPoint:  # fmt: skip
    return ParetoPoint(i, f"m{i}", x, y, yerr=yerr, xerr=xerr, n=n, precision=precision)


def test_front_uses_only_points_with_three_seeds() -> None:
    pts = [_p(1, 1.0, 90.0), _p(2, 2.0, 95.0, n=1), _p(3, 3.0, 92.0)]
    front, flips = front_status(pts)
    assert front == [0, 2]  # the one-seed point is better but cannot be on the front
    assert flips == []


def test_a_point_flipping_within_its_spread_is_marked() -> None:
    # EGE-UNet vs MALUNet: close costs, overlapping spreads
    pts = [_p(1, 45.6, 91.93, yerr=0.38, xerr=0.26), _p(2, 46.5, 92.13, yerr=0.46, xerr=0.41),
           _p(3, 48.9, 93.02, yerr=0.18, xerr=1.6)]  # fmt: skip
    front, flips = front_status(pts)
    assert front == [0, 1, 2]
    assert 1 in flips  # at 92.13 - 0.46 it falls under 91.93 at a higher cost
    solid = [_p(1, 1.0, 90.0, yerr=0.01), _p(2, 10.0, 95.0, yerr=0.01)]
    assert front_status(solid) == ([0, 1], [])


def test_marker_shapes_differ_per_precision() -> None:
    assert len({marker_for(p) for p in ("fp32", "bf16", "fp16", "int8")}) == 4


def test_pareto_figure_is_written_with_its_table(tmp_path) -> None:
    pts = [_p(1, 1.0, 92.0), _p(2, 2.0, 93.0, n=1, precision="bf16")]
    paths = plot_pareto_panels(
        Panel(pts, "measured", "DSC", "front", "Trivial baselines: disc 70.3"),
        Panel([ParetoPoint(1, "m1", 1.0, 88.1)], "reported", "DSC", "front"),
        "Parameters (M)", "a title " * 30, tmp_path / "p", {"m1": "red", "m2": "blue"},
    )  # fmt: skip
    assert {p.suffix for p in paths} == {".png", ".svg"}
    svg = (tmp_path / "p.svg").read_text()
    assert "not eligible (n=1)" in svg and "[backend]" not in svg
    with pytest.raises(ValueError):
        plot_pareto_panels(None, None, "x", "t", tmp_path / "q", {})


def _speed_rows(peak: float = 0.2) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": ["a", "a", "b"], "backend": ["torch", "onnxruntime", "torch"],
            "mode": "inference", "dtype": "fp32", "batch_size": 1, "status": "ok",
            "achieved_gflops": [10.0, 40.0, 150.0], "intensity_flop_per_byte": [3.0, 3.0, 50.0],
            "peak_tflops": peak, "peak_gbps": 20.0,
        }
    )  # fmt: skip


def test_roofline_points_and_figure(tmp_path) -> None:
    pts = roofline_points(_speed_rows())
    assert len(pts) == 3
    a = pts[(pts["model"] == "a") & (pts["backend"] == "torch")].iloc[0]
    assert a["bound_gflops"] == pytest.approx(60.0)  # memory-bound: 3 FLOP/B x 20 GB/s
    assert a["fraction"] == pytest.approx(10 / 60)
    b = pts[pts["model"] == "b"].iloc[0]
    assert b["bound_gflops"] == pytest.approx(200.0)  # compute roof
    assert plot_roofline(_speed_rows(), "host", tmp_path / "r", {"a": "red", "b": "blue"})
    mixed = pd.concat([_speed_rows(), _speed_rows(0.3).assign(model="c")])
    with pytest.raises(ValueError, match="different peaks"):
        plot_roofline(mixed, "host", tmp_path / "r2", {"a": "red", "b": "blue", "c": "k"})
    assert plot_roofline(_speed_rows().drop(columns="peak_gbps"), "h", tmp_path / "r3", {}) is None
