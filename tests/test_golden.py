"""Regression guard: every registry model's parameters and MACs equal results/complexity/golden.json.

A failure prints model, field, golden value, current value and the change in percent. After a
deliberate model change, regenerate the file with ``segbench complexity --update-golden`` (or
``nox -s update-golden``) and commit it. Counting runs on the meta device (shapes only), so
the whole registry takes seconds; a model that differs there is recounted on CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch.nn as nn

from bench.cost import golden as gold
from bench.cost.flops import analyze
from models import create_model, list_models

MODELS = list_models()


@pytest.fixture(scope="module")
def golden() -> dict:
    try:
        return gold.load_golden()
    except (FileNotFoundError, ValueError) as err:
        pytest.fail(str(err))


@pytest.mark.parametrize("name", MODELS)
def test_model_matches_golden(name: str, golden: dict) -> None:
    drifts = gold.check_golden([name], golden)
    assert not drifts, "\n" + gold.format_drift(drifts)


def test_no_stale_golden_entries(golden: dict) -> None:
    stale = sorted(set(golden) - set(MODELS))
    assert not stale, (
        f"golden entries for models no longer registered: {', '.join(stale)}; {gold.UPDATE_HINT}"
    )


def test_golden_file_is_at_the_documented_shape() -> None:
    from bench.core.io import read_json

    data = read_json(gold.GOLDEN_PATH)
    assert data["input_shape"] == "1x3x256x256"
    for name, entry in data["models"].items():
        assert all(isinstance(entry[f], int) for f in gold.GOLDEN_FIELDS), name
        assert entry["gmacs"] == round(entry["macs"] / 1e9, 3), name


# --- the check itself catches drift ---------------------------------------------------------


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))


def test_altered_model_copy_is_reported() -> None:
    model = _tiny()
    ref = {"tiny": gold.golden_entry(analyze(model, gold.GOLDEN_SHAPE, device="meta"))}
    altered = copy.deepcopy(model)
    altered[0] = nn.Conv2d(3, 16, 3, padding=1)  # a wider first layer
    altered[2] = nn.Conv2d(16, 1, 1)
    now = {"tiny": gold.golden_entry(analyze(altered, gold.GOLDEN_SHAPE, device="meta"))}
    drifts = gold.compare_golden(ref, now)
    assert {d["field"] for d in drifts} == {"params_total", "params_unique", "macs"}
    macs = next(d for d in drifts if d["field"] == "macs")
    assert (macs["golden"], macs["now"]) == (ref["tiny"]["macs"], now["tiny"]["macs"])
    assert macs["change %"] == pytest.approx(
        100.0 * (now["tiny"]["macs"] / ref["tiny"]["macs"] - 1)
    )
    text = gold.format_drift(drifts)
    assert "tiny" in text and f"{ref['tiny']['macs']:,}" in text and "+100.000" in text
    assert "--update-golden" in text
    assert gold.compare_golden(ref, ref) == []


def test_registry_model_drift_is_reported(golden: dict) -> None:
    name = "malunet" if "malunet" in MODELS else MODELS[0]
    if name not in golden:
        pytest.skip(f"{name} has no golden entry (reported by test_model_matches_golden)")
    model = create_model(name)
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    conv = model.get_submodule(first)
    parent, _, attr = first.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    # Same output shape, one extra input channel per group's worth of weights: params and MACs
    # both grow, the forward still runs.
    setattr(
        holder,
        attr,
        nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=conv.bias is None,
        ),
    )
    now = {name: gold.golden_entry(analyze(model, gold.GOLDEN_SHAPE, device="meta"))}
    drifts = gold.compare_golden(golden, now)
    assert [d["field"] for d in drifts] == ["params_total", "params_unique"]
    assert "params_total" in gold.format_drift(drifts)


def test_missing_entry_says_how_to_add_it() -> None:
    now = {"newnet": {"params_total": 1, "params_unique": 1, "macs": 5, "gmacs": 0.0}}
    drifts = gold.compare_golden({}, now)
    assert [d["field"] for d in drifts] == ["(no golden entry)"]
    text = gold.format_drift(drifts)
    assert "segbench complexity --update-golden" in text and "nox -s update-golden" in text


def test_fake_golden_entry_fails_check() -> None:
    # A mismatch on meta is recounted on CPU before it is reported: use a cheap model.
    name = "malunet" if "malunet" in MODELS else MODELS[0]
    fake = {name: {"params_total": 1, "params_unique": 1, "macs": 1, "gmacs": 0.0}}
    drifts = gold.check_golden([name], fake)
    assert {d["field"] for d in drifts} == {"params_total", "params_unique", "macs"}
