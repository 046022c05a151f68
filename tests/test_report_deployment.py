"""The best deployment variant per model names its accuracy change (issue 24 item 14)."""

from __future__ import annotations

import math

import pandas as pd

from bench.analysis.report.deployment import best_variants


def _row(model: str, variant: str, ms: float, change: float, status: str = "ok") -> dict:
    return {"model": model, "variant": variant, "status": status, "latency_ms": ms,
            "speedup_vs_eager_fp32": 100.0 / ms, "dsc_change_pts": change, "cpu": "Xeon"}  # fmt: skip


def test_fastest_variant_within_the_dsc_budget_wins() -> None:
    df = pd.DataFrame(
        [
            _row("unet", "torch fp32", 100.0, 0.0),
            _row("unet", "openvino bf16", 11.6, -0.01),
            _row("unet", "onnxruntime int8-static", 8.0, -1.3),  # faster, too lossy
            _row("unet", "openvino int8-static", 5.0, math.nan, status="error"),
            _row("malunet", "torch fp32", 16.0, math.nan),
            _row("malunet", "onnxruntime fp32", 6.0, math.nan),
        ]
    )
    best = best_variants(df).set_index("model")
    assert best.loc["unet", "best_variant"] == "openvino bf16"
    assert best.loc["unet", "accuracy"] == "DSC -0.01 pts vs eager fp32"
    assert best.loc["unet", "host"] == "Xeon"
    assert best.loc["malunet", "best_variant"] == "onnxruntime fp32"
    assert math.isnan(best.loc["malunet", "dsc_change_pts"])
    assert "not measured" in best.loc["malunet", "accuracy"]


def test_every_variant_too_lossy_is_said() -> None:
    df = pd.DataFrame([_row("m", "torch fp32", 10.0, -0.0), _row("m", "int8", 5.0, -2.0)])
    df.loc[0, "dsc_change_pts"] = -0.9  # even the reference row, for the test
    best = best_variants(df).iloc[0]
    assert best["best_variant"] == "int8" and "loses more than" in best["accuracy"]
    assert best_variants(pd.DataFrame()).empty


def test_a_change_that_rounds_to_zero_is_not_printed_as_minus_zero() -> None:
    df = pd.DataFrame(
        [_row("m", "torch fp32", 10.0, 0.0), _row("m", "onnxruntime fp32", 4.0, -4.1e-05)]
    )
    accuracy = best_variants(df).iloc[0]["accuracy"]
    assert "-0.00" not in accuracy
    assert accuracy == "DSC ±0.00 (-4e-05) pts vs eager fp32"
