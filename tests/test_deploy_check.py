"""Equivalence metrics and the tolerance table (pure numpy, no export)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench.deploy import check


def test_compare_outputs_by_hand() -> None:
    ref = np.array([[[[1.0, -2.0], [0.5, -0.1]]]], dtype=np.float32)  # 1x1x2x2
    out = np.array([[[[1.0, -2.5], [0.5, 0.1]]]], dtype=np.float32)
    res = check.compare_outputs(ref, out, tolerance=None)
    assert res["max_abs_diff"] == pytest.approx(0.5)
    assert res["mean_abs_diff"] == pytest.approx((0.5 + 0.2) / 4)
    assert res["ref_max_abs"] == pytest.approx(2.0)
    assert res["rel_max_diff"] == pytest.approx(0.25)
    assert res["mask_diff_fraction"] == pytest.approx(0.25)  # -0.1 -> 0.1 flips one pixel
    assert res["ok"] is None  # reported, not judged


def test_tolerance_is_relative_to_the_logit_scale() -> None:
    tol = check.Tolerance(rtol=1e-4, atol=1e-5, mask_fraction=0.0)
    big = np.full((1, 1, 4, 4), 100.0)
    assert check.compare_outputs(big, big + 5e-3, tol)["ok"]  # 5e-3 <= 1e-5 + 1e-2
    res = check.compare_outputs(big, big + 2e-2, tol)
    assert res["ok"] is False and "allowed" in res["check_reason"]
    small = np.full((1, 1, 4, 4), 0.1)
    assert not check.compare_outputs(small, small + 5e-3, tol)["ok"]


def test_mask_flips_fail_even_with_tiny_logit_differences() -> None:
    ref = np.full((1, 1, 10, 10), 1.0)
    ref[0, 0, 0, :5] = 1e-7
    out = ref.copy()
    out[0, 0, 0, :5] = -1e-7  # 5 of 100 pixels flip
    res = check.compare_outputs(ref, out, check.Tolerance(mask_fraction=0.01))
    assert res["mask_diff_fraction"] == pytest.approx(0.05)
    assert res["ok"] is False and "mask flips" in res["check_reason"]


def test_multiclass_mask_is_argmax() -> None:
    ref = np.zeros((1, 3, 1, 2))
    ref[0, 1, 0, 0] = ref[0, 2, 0, 1] = 1.0
    out = ref.copy()
    out[0, 0, 0, 1] = 2.0  # second pixel's argmax moves from class 2 to 0
    assert check.compare_outputs(ref, out, None)["mask_diff_fraction"] == pytest.approx(0.5)


def test_pooled_over_several_inputs_and_shape_checks() -> None:
    a, b = np.zeros((1, 1, 2, 2)), np.ones((2, 1, 2, 2))
    res = check.compare_outputs([a, b], [a + 0.1, b], None)
    assert res["max_abs_diff"] == pytest.approx(0.1)
    assert res["mean_abs_diff"] == pytest.approx(0.1 * 4 / 12)
    with pytest.raises(ValueError, match="shape"):
        check.compare_outputs(a, b, None)
    with pytest.raises(ValueError, match="reference"):
        check.compare_outputs([a, a], [a], None)


def test_non_finite_output_fails() -> None:
    ref = np.zeros((1, 1, 2, 2))
    out = ref.copy()
    out[0, 0, 0, 0] = np.nan
    res = check.compare_outputs(ref, out)
    assert res["ok"] is False and "non-finite" in res["check_reason"]
    assert math.isinf(res["max_abs_diff"])


def test_tolerance_table_entries_are_justified() -> None:
    default = check.DEFAULT_TOLERANCE
    assert check.tolerance_for("no_entry_model") is default
    for name, tol in check.TOLERANCES.items():
        looser = (
            tol.rtol > default.rtol
            or tol.atol > default.atol
            or tol.mask_fraction > default.mask_fraction
        )
        if looser:
            assert tol.reason and tol.reason != default.reason, f"{name}: loose without reason"


def test_fixed_inputs_are_reproducible() -> None:
    a = check.fixed_inputs((1, 3, 4, 4), n=2, seed=3)
    b = check.fixed_inputs((1, 3, 4, 4), n=2, seed=3)
    assert len(a) == 2 and a[0].dtype == np.float32
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])
    with pytest.raises(ValueError):
        check.fixed_inputs((1,), n=0)


def test_check_runner_against_a_perturbed_runner() -> None:
    model = nn.Conv2d(3, 1, 1)
    inputs = check.fixed_inputs((1, 3, 8, 8), n=2)

    def exact(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    assert check.check_runner(model, exact, inputs)["max_abs_diff"] == 0.0
    res = check.check_runner(model, lambda x: exact(x) + 0.5, inputs)
    assert res["ok"] is False and res["max_abs_diff"] == pytest.approx(0.5)
