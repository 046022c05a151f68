"""``segbench export``: weights sources, rows for failures, exit codes, int8/bf16 with DSC."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from bench.cli import export as cli_export
from bench.jobs import export as job
from bench.jobs import precision


class Toy(nn.Module):
    """A thresholdable segmenter: logit = a weighted sum of the channels, minus a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x / 255.0)))


@pytest.fixture
def toy_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """``_create`` builds a Toy for 'toy', raises for 'broken' (counts builds)."""
    built = {"n": 0}

    def create(name: str, **kwargs) -> nn.Module:  # noqa: ANN003
        if name == "broken":
            raise RuntimeError("builder exploded")
        built["n"] += 1
        return Toy()

    monkeypatch.setattr(job, "_create", create)
    return built


def _fake_run(tmp_path: Path, model: str = "toy", size: int = 32) -> Path:
    run = tmp_path / "runs" / "syn" / model / "fair-e1" / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(3)
    torch.save({"model": Toy().state_dict()}, run / "checkpoints" / "best.pt")
    cfg = {"model": model, "model_kwargs": {}, "image_size": size, "input_scaling": "minmax255",
           "threshold": 0.5, "split_seed": 1, "val_fraction": 0.2, "test_fraction": 0.3}  # fmt: skip
    (run / "config.json").write_text(json.dumps(cfg))
    return run


# ------------------------------------------------------------------ weights
def test_weights_from_sources(tmp_path: Path) -> None:
    w = job.weights_from(input_size=64)
    assert w.label == job.RANDOM_INIT and not w.trained and w.input_size == 64
    run = _fake_run(tmp_path)
    w = job.weights_from(run_dir=run)
    assert w.trained and w.model == "toy" and w.input_size == 32
    assert w.split == {"split_seed": 1, "val_fraction": 0.2, "test_fraction": 0.3}
    # the label names the run by its place under runs/, not by this machine's path
    assert "run runs/syn/toy/fair-e1/seed0 (best.pt" in w.label and str(tmp_path) not in w.label
    ckpt = run / "checkpoints" / "best.pt"
    assert job.weights_from(checkpoint=ckpt).checkpoint == ckpt
    with pytest.raises(ValueError, match="not both"):
        job.weights_from(checkpoint=ckpt, run_dir=run)
    with pytest.raises(ValueError, match="no such file"):
        job.weights_from(checkpoint=tmp_path / "nope.pt")
    ckpt.unlink()
    with pytest.raises(ValueError, match="best.pt"):
        job.weights_from(run_dir=run)
    with pytest.raises(ValueError, match="config.json"):
        job.weights_from(run_dir=tmp_path)


def test_trained_weights_are_loaded(tmp_path: Path, toy_registry: dict) -> None:
    run = _fake_run(tmp_path)
    model = job.build_model("toy", job.weights_from(run_dir=run))
    torch.manual_seed(3)
    want = Toy().state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, want[k])


# ------------------------------------------------------------------ export rows
def test_run_export_rows_and_table(tmp_path: Path, toy_registry: dict) -> None:
    df = job.run_export(
        ["toy", "broken"], tmp_path, weights=job.Weights(input_size=32),
        exporters=("torchscript",), threads=1,
    )  # fmt: skip
    toy, broken = df.set_index("model").loc["toy"], df.set_index("model").loc["broken"]
    assert toy["status"] == "ok" and toy["ok"] and toy["max_abs_diff"] < 1e-4
    assert Path(toy["path"]) == tmp_path / "onnx" / "toy.onnx" and Path(toy["path"]).is_file()
    assert broken["status"] == "error" and "builder exploded" in broken["reason"]
    table = pd.read_csv(tmp_path / "export.csv")
    assert sorted(table["model"]) == ["broken", "toy"]
    # a re-run replaces the model's row and keeps the others
    job.run_export(["toy"], tmp_path, weights=job.Weights(input_size=32),
                   exporters=("torchscript",), threads=1)  # fmt: skip
    assert sorted(pd.read_csv(tmp_path / "export.csv")["model"]) == ["broken", "toy"]
    data = json.loads((tmp_path / "export.json").read_text())
    assert data["environment"]["versions"]["onnxruntime"] and len(data["rows"]) == 2


def test_output_mismatch_fails_the_row(
    tmp_path: Path, toy_registry: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.deploy import check

    monkeypatch.setitem(check.TOLERANCES, "toy", check.Tolerance(rtol=0.0, atol=-1.0, reason="t"))
    df = job.run_export(["toy"], tmp_path, weights=job.Weights(input_size=32),
                        exporters=("torchscript",), threads=1, write=False)  # fmt: skip
    row = df.iloc[0]
    assert row["status"] == "error" and row["reason"].startswith("output differs")


def test_exit_codes() -> None:
    assert cli_export.exit_code(["ok", "ok"]) == 0
    assert cli_export.exit_code(["ok", "error"]) == cli_export.EXIT_PARTIAL == 3
    assert cli_export.exit_code(["error", "error"]) == 1
    assert cli_export.exit_code([]) == 1


def test_cli_export_partial_and_total_failure(
    tmp_path: Path, toy_registry: dict, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from bench.cli import main
    from bench.core import names

    monkeypatch.setattr(names, "expand_models", lambda spec, *a, **k: spec.split(","))
    common = ["--exporters", "torchscript", "--input-size", "32", "--threads", "1", "--quiet"]
    rc = main(["export", "--models", "toy,broken", "--results", str(tmp_path / "a"), *common])
    out = capsys.readouterr().out
    assert rc == 3 and "builder exploded" in out and "random init" in out
    rc = main(["export", "--models", "broken", "--results", str(tmp_path / "b"), *common])
    assert rc == 1
    rc = main(["export", "--models", "toy", "--results", str(tmp_path / "c"), *common])
    assert rc == 0 and (tmp_path / "c" / "deploy" / "onnx" / "toy.onnx").is_file()


def test_cli_export_bad_arguments(tmp_path: Path, capsys) -> None:
    from bench.cli import main

    assert main(["export", "--models", "malunet,unet", "--checkpoint", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--format", "tflite"])
    with pytest.raises(SystemExit):
        main(["export", "--int8", "fp4"])


# ------------------------------------------------------------------ int8 / bf16
@pytest.fixture(scope="module")
def syn_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("syn"), n=12, size=(40, 48), seed=0)


def test_precision_with_trained_weights_reports_dsc_change(
    tmp_path: Path, toy_registry: dict, syn_data: Path
) -> None:
    run = _fake_run(tmp_path)
    df = precision.run_precision(
        ["toy"], tmp_path / "out", weights=job.weights_from(run_dir=run), data=syn_data,
        int8=("dynamic", "static"), bf16=True, calib_images=4, agree_images=2,
        latency_s=0.01, threads=1, exporters=("torchscript",),
    )  # fmt: skip
    rows = df.set_index("variant")
    eager, ort = rows.loc["torch fp32"], rows.loc["onnxruntime fp32"]
    assert eager["status"] == ort["status"] == "ok"
    assert 0.0 <= eager["dsc"] <= 1.0 and eager["dsc_change_pts"] == 0.0
    assert abs(ort["dsc_change_pts"]) < 1e-6  # fp32 on another runtime: the same masks
    assert ort["out_rel_max_diff"] < 1e-5 and ort["speedup_vs_eager_fp32"] > 0
    for v in ("onnxruntime int8-dynamic", "onnxruntime int8-static"):
        r = rows.loc[v]
        assert r["status"] == "ok", r["reason"]
        assert np.isfinite(r["dsc_change_pts"]) and r["latency_ms"] > 0
        assert 0 < r["out_max_abs_diff"]  # quantization changes the logits
    assert rows.loc["onnxruntime int8-static"]["n_images"] == eager["n_images"] > 0
    assert rows.loc["torch bf16"]["status"] == "ok"
    assert rows.loc["openvino bf16"]["status"] in ("ok", "skipped")
    # every runtime of `segbench speed`, at each precision (issue 24 item 15)
    assert {"openvino fp32", "openvino int8-dynamic", "openvino int8-static",
            "onnxruntime bf16"} <= set(rows.index)  # fmt: skip
    assert rows.loc["openvino fp32"]["status"] == "ok"
    assert abs(rows.loc["openvino fp32"]["dsc_change_pts"]) < 0.5
    assert rows.loc["openvino int8-static"]["status"] in ("ok", "error")
    # a scored row keeps `reason` empty; its warnings are in `notes`, in full
    ok = df[df["status"] == "ok"]
    assert (ok["reason"].fillna("") == "").all()
    assert all(len(r) > 0 for r in df.loc[df["status"] != "ok", "reason"])
    table = pd.read_csv(tmp_path / "out" / "precision.csv")
    # every row carries what produced it, so rows merged from several commands keep theirs
    assert {"cpu", "load_avg_1min", "git_commit", "command"} <= set(table.columns)
    assert table["command"].notna().all() and len(table) == len(df)


def test_a_variant_over_the_time_budget_is_skipped_with_its_forward_time(
    tmp_path: Path, toy_registry: dict
) -> None:
    df = precision.run_precision(
        ["toy"], tmp_path, weights=job.Weights(input_size=32), int8=("dynamic",), bf16=True,
        agree_images=2, latency_s=0.01, threads=1, exporters=("torchscript",), write=False,
        max_variant_s=1e-9,
    )  # fmt: skip
    rows = df.set_index("variant")
    assert rows.loc["torch fp32"]["status"] == "ok"  # the reference is always scored
    for v in ("onnxruntime fp32", "onnxruntime int8-dynamic", "torch bf16"):
        assert rows.loc[v]["status"] == "skipped"
        assert re.search(
            r"one batch-1 forward took [0-9.]+ s, so its 9 forwards", rows.loc[v]["reason"]
        )


def test_precision_untrained_has_no_dsc_and_static_needs_data(
    tmp_path: Path, toy_registry: dict
) -> None:
    df = precision.run_precision(
        ["toy"], tmp_path, weights=job.Weights(input_size=32), int8=("dynamic", "static"),
        agree_images=2, latency_s=0.01, threads=1, exporters=("torchscript",), write=False,
    )  # fmt: skip
    rows = df.set_index("variant")
    assert "dsc" not in df or rows["dsc"].isna().all()
    assert "untrained" in rows.loc["onnxruntime int8-dynamic"]["notes"]
    assert rows.loc["onnxruntime int8-dynamic"]["reason"] == ""
    for backend in ("onnxruntime", "openvino"):
        assert rows.loc[f"{backend} int8-static"]["status"] == "skipped"
        assert "--data" in rows.loc[f"{backend} int8-static"]["reason"]
    with pytest.raises(ValueError, match="--int8"):
        precision.run_precision(["toy"], tmp_path, int8=("fp4",), write=False)
