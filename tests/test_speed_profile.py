"""Operator profiles per batch size (``segbench profile``): what the table says and sorts.

No test asserts how long an operator takes; the synthetic frames fix the arithmetic and
the tiny model only checks that every batch size's operators are found and accounted.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn as nn

from bench.speed.profile import batch_rise, profile_operators, summary


def _frame(per_image: dict[str, dict[int, float]]) -> pd.DataFrame:
    rows = [
        {
            "batch_size": b,
            "op": op,
            "input_shapes": "",
            "calls": 1.0,
            "self_ms": ms * b,
            "per_image_ms": ms,
        }  # fmt: skip
        for op, by_batch in per_image.items()
        for b, ms in by_batch.items()
    ]
    return pd.DataFrame(rows)


def test_batch_rise_puts_the_operators_that_add_per_image_time_first():
    # D runs only at batch 8 (another kernel took over C's work), A triples, B is flat
    frame = _frame({"A": {1: 1.0, 8: 3.0}, "B": {1: 2.0, 8: 2.0}, "C": {1: 1.5}, "D": {8: 5.0}})
    rise = batch_rise(frame)
    assert list(rise["op"]) == ["D", "A", "B", "C", "(all operators)"]
    got = rise.set_index("op")
    assert got.loc["D", "added_ms"] == 5.0 and math.isnan(got.loc["D", "ratio"])
    assert got.loc["A", "ratio"] == 3.0 and got.loc["C", "added_ms"] == -1.5
    total = got.loc["(all operators)"]
    assert (total["per_image_ms@1"], total["per_image_ms@8"]) == (4.5, 10.0)
    assert total["ratio"] == pytest.approx(10.0 / 4.5)
    text = summary(rise, top=2)
    assert "4.50 ms at batch 1, 10.00 ms at batch 8 (2.22x)" in text
    assert "D +5.00 ms, A +2.00 ms" in text and "B" not in text.split("added per image:")[1]


def test_profile_accounts_every_batch_size_and_its_operators():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    frame = profile_operators(model, (3, 16, 16), [1, 2], iters=2, warmup=1)
    assert sorted(frame["batch_size"].unique()) == [1, 2]
    for _, part in frame.groupby("batch_size"):
        assert part["share"].sum() == pytest.approx(1.0)
        assert (part["self_ms"] > 0).all()
        # one convolution per call: the aten entry point is counted once per iteration
        assert part.set_index("op").loc["aten::conv2d", "calls"] == 1.0
    b2 = frame[frame["batch_size"] == 2]
    assert (b2["per_image_ms"] == b2["self_ms"] / 2).all()
    assert not frame["op"].str.startswith("ProfilerStep").any()


@pytest.mark.parametrize("bad", [{"batch_sizes": []}, {"batch_sizes": [0]}, {"iters": 0}])
def test_profile_refuses_bad_settings(bad):
    kwargs = {"batch_sizes": [1], "iters": 1, **bad}
    batch_sizes = kwargs.pop("batch_sizes")
    with pytest.raises(ValueError):
        profile_operators(nn.Identity(), (3, 8, 8), batch_sizes, **kwargs)


def test_profile_command_writes_a_host_named_record(tmp_path, capsys):
    from bench.cli import main
    from bench.core.env import device_slug

    threads = torch.get_num_threads()
    args = ["profile", "--model", "egeunet", "--batch-sizes", "1,2", "--input-size", "32",
            "--iters", "1", "--warmup", "0", "--threads", "1", "--results", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    assert torch.get_num_threads() == threads  # restored
    out = capsys.readouterr().out
    stem = tmp_path / "speed" / "profile" / f"egeunet-{device_slug('cpu')}"
    record = json.loads(stem.with_suffix(".json").read_text())
    assert record["settings"]["threads"] == 1 and record["settings"]["batch_sizes"] == [1, 2]
    assert record["settings"]["environment"]["device_name"] in out
    assert record["summary"] in out and record["batch_rise"][-1]["op"] == "(all operators)"
    assert set(pd.read_csv(stem.with_suffix(".csv"))["batch_size"]) == {1, 2}
    assert main(["profile", "--model", "no_such_model", "--results", str(tmp_path)]) == 2
    assert "--model no_such_model" in capsys.readouterr().err
