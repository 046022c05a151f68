"""Run-aware and cross-dataset evaluation: --run, stored settings and mismatches, --split all,
evaluation-only folders, derived external sets, the HD95 conventions."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from run_fixtures import tiny_unet_config

from bench.cli import main
from bench.data.cache import split_file_for
from bench.data.derive import SHIFTS, derive_dataset
from bench.data.layouts import dataset_name, detect_layout, index_dataset
from bench.data.synthetic import make_synthetic
from bench.engine.metrics import hd95
from bench.engine.train import run_training


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "syn", n=30, size=(48, 64), seed=4)


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory) -> Path:
    cfg = tiny_unet_config(data_root)
    return run_training(cfg, tmp_path_factory.mktemp("results"), quiet=True)


def _eval(*args: str) -> int:
    return main(["evaluate", *args, "--quiet", "--device", "cpu"])


# ----------------------------------------------------------------------------- --run


def test_run_reproduces_its_own_test_metrics_exactly(run, capsys):
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["precision"] == "fp32" and trained["hd95_convention"] == "monai"
    assert _eval("--run", str(run)) == 0
    out = run / "eval" / f"{trained['dataset']}-test"
    got = json.loads((out / "metrics.json").read_text())
    assert got["metrics"] == trained["test"]  # exact, not approx
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "per_image.csv"), pd.read_csv(run / "per_image.csv")
    )
    assert got["config_hash"] == trained["config_hash"]
    assert (got["train_dataset"], got["eval_dataset"], got["split"]) == (
        trained["dataset"],
        trained["dataset"],
        "test",
    )
    assert got["n_images"] == trained["test"]["n_images"] and got["mismatches"] == []
    assert got["precision"] == "fp32" and got["hd95_convention"] == "monai"
    assert got["command"] and "versions" in got["environment"]


def test_a_checkpoint_carries_its_settings_and_a_mismatch_is_refused(run, capsys):
    best = run / "checkpoints" / "best.pt"
    trained = json.loads((run / "metrics.json").read_text())
    out = run.parent / "ckpt-eval"
    # no --model, --size, --model-kwargs: all from the checkpoint
    assert _eval("--checkpoint", str(best), "--results", str(out)) == 0
    got = json.loads((out / "metrics.json").read_text())
    assert got["metrics"] == trained["test"] and got["model"] == "unet"
    # a 32-px run scored at 64: refused, the message lists the difference and the way out
    capsys.readouterr()
    assert _eval("--checkpoint", str(best), "--input-size", "64", "--threshold", "0.5") == 2
    err = capsys.readouterr().err
    assert "image_size: trained with 32, given 64" in err and "--allow-mismatch" in err
    assert "threshold" not in err  # the same value is no difference
    assert _eval("--run", str(run), "--scaling", "unit") == 2
    assert "input_scaling: trained with 'minmax255', given 'unit'" in capsys.readouterr().err
    # explicit override: scored, loud warning, recorded
    assert _eval("--run", str(run), "--input-size", "64", "--allow-mismatch") == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "image_size" in err
    rec = json.loads(
        (run / "eval" / f"{trained['dataset']}-test-image_size64" / "metrics.json").read_text()
    )
    assert rec["mismatches"] == ["image_size: trained with 32, given 64"]
    assert rec["settings"]["image_size"] == 64


def test_split_settings_count_on_the_runs_own_dataset(run, capsys):
    assert _eval("--run", str(run), "--split-seed", "7") == 2
    assert "split_seed: trained with 42, given 7" in capsys.readouterr().err


# ----------------------------------------------------------------------------- --split all


def test_split_all_scores_every_image_of_another_dataset(run, tmp_path, capsys):
    ph2 = make_synthetic(tmp_path / "ph2set", n=9, size=(48, 64), seed=8, layout="ph2")
    assert _eval("--run", str(run), "--data", str(ph2)) == 2  # which split? say it
    assert "--split all" in capsys.readouterr().err
    assert _eval("--run", str(run), "--data", str(ph2), "--split", "all") == 0
    rec = json.loads((run / "eval" / "ph2set-all" / "metrics.json").read_text())
    assert rec["n_images"] == 9 and rec["eval_layout"] == "ph2"
    assert rec["eval_dataset"] == "ph2set" and rec["train_dataset"] == "syn"
    per = pd.read_csv(run / "eval" / "ph2set-all" / "per_image.csv")
    assert sorted(per["image_id"]) == sorted(index_dataset(ph2).ids)
    # the medpy convention: a scoring option, in its own folder, never larger than MONAI's
    assert _eval("--run", str(run), "--data", str(ph2), "--split", "all", "--hd95", "medpy") == 0
    medpy = pd.read_csv(run / "eval" / "ph2set-all-hd95medpy" / "per_image.csv")
    both = per.merge(medpy, on="image_id", suffixes=("_monai", "_medpy")).dropna()
    assert len(both) and (both["hd95_medpy"] <= both["hd95_monai"] + 1e-9).all()
    rec = json.loads((run / "eval" / "ph2set-all-hd95medpy" / "metrics.json").read_text())
    assert rec["hd95_convention"] == "medpy"


def _val_only(src: Path, dst: Path, n: int = 6) -> Path:
    """Copy n pairs of an ISIC-2017-layout folder into the official validation-only layout."""
    layout = detect_layout(src)
    samples = index_dataset(src, layout=layout).samples[:n]
    img_dir, gt_dir = (
        dst / "ISIC-2017_Validation_Data",
        dst / "ISIC-2017_Validation_Part1_GroundTruth",
    )
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    for s in samples:
        shutil.copy(s.image, img_dir / s.image.name)
        shutil.copy(s.mask, gt_dir / s.mask.name)
    return dst


@pytest.fixture(params=["synthetic", "isic2017-mini"])
def val_only(request, tmp_path) -> Path:
    if request.param == "synthetic":
        src = make_synthetic(tmp_path / "src", n=20, size=(48, 64), seed=1, layout="isic2017")
        # keep only its validation part: what an official validation download looks like
        for d in src.iterdir():
            if d.is_dir() and "Validation" not in d.name:
                shutil.rmtree(d)
        return src
    shared = request.getfixturevalue("shared_dir")
    return _val_only(shared / "data" / "isic2017-mini", tmp_path / "val-only", n=7)


def test_a_validation_only_folder_is_never_resplit(run, val_only, capsys):
    n = len(index_dataset(val_only).ids)
    assert n >= 2
    # the official part as it is, every image of it
    assert _eval("--run", str(run), "--data", str(val_only), "--split", "val") == 0
    rec = json.loads((run / "eval" / f"{val_only.name}-val" / "metrics.json").read_text())
    assert rec["n_images"] == n
    assert _eval("--run", str(run), "--data", str(val_only), "--split", "all") == 0
    assert (
        json.loads((run / "eval" / f"{val_only.name}-all" / "metrics.json").read_text())["n_images"]
        == n
    )
    # the test split does not exist in this folder: an error that names the fix
    capsys.readouterr()
    assert _eval("--run", str(run), "--data", str(val_only), "--split", "test") == 2
    err = capsys.readouterr().err
    assert "--split all" in err and "official val" in err
    # and it cannot be trained on
    cfg = tiny_unet_config(val_only, epochs=1)
    with pytest.raises(ValueError, match="no training part.*--split all"):
        run_training(cfg, run.parent / "val-only-results", quiet=True)


# ----------------------------------------------------------------------------- derive


def test_derive_writes_a_split_in_another_layout_and_never_into_the_source(
    run, data_root, tmp_path
):
    before = sorted(p.relative_to(data_root) for p in data_root.rglob("*"))
    src = index_dataset(data_root)
    split_file = split_file_for(data_root, dataset_name(src.layout, data_root), src)
    test_ids = json.loads(split_file.read_text())["splits"]["test"]
    rec = derive_dataset(data_root, tmp_path / "as-ph2", split="test", layout="ph2", command="t")
    assert detect_layout(tmp_path / "as-ph2").name == "ph2"
    assert sorted(rec["ids"].values()) == sorted(test_ids) and rec["n_images"] == len(test_ids)
    val = derive_dataset(
        data_root, tmp_path / "as-val", split="test", layout="isic-val", shift="gamma"
    )
    idx = index_dataset(tmp_path / "as-val")
    assert idx.layout.official_splits == ("val",) and sorted(idx.ids) == sorted(test_ids)
    assert val["shift"]["name"] == "gamma"
    assert sorted(p.relative_to(data_root) for p in data_root.rglob("*")) == before
    # the unshifted copy scores exactly like the source's test split (same pixels)
    assert _eval("--run", str(run), "--data", str(tmp_path / "as-ph2"), "--split", "all") == 0
    ext = json.loads((run / "eval" / "as-ph2-all" / "metrics.json").read_text())["metrics"]
    own = json.loads((run / "metrics.json").read_text())["test"]
    assert ext == pytest.approx(own, nan_ok=True)
    with pytest.raises(FileExistsError, match="--force"):
        derive_dataset(data_root, tmp_path / "as-ph2", layout="ph2")
    with pytest.raises(ValueError, match="outside the source"):
        derive_dataset(data_root, data_root / "sub", layout="ph2")
    with pytest.raises(ValueError, match="--shift"):
        derive_dataset(data_root, tmp_path / "x", layout="ph2", shift="sepia")


def test_shifts_change_images_and_keep_them_8_bit():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    for shift in SHIFTS.values():
        out = shift.apply(img)
        assert out.dtype == np.uint8 and out.shape == img.shape and not np.array_equal(out, img)


# ----------------------------------------------------------------------------- HD95


def test_hd95_conventions_on_a_hand_computed_case():
    # Two one-pixel-thick horizontal lines in row 1 of a 3 x 24 image, so every pixel is a
    # surface pixel and distances are column differences:
    #   A (prediction) = columns 2..21 (20 pixels), B (target) = columns 2..11 (10 pixels).
    # A -> B: columns 2..11 are on B (0, ten times), columns 12..21 are 1..10 away:
    #   [0]*10 + [1, 2, ..., 10]. B -> A: [0]*10.
    # MONAI: max of the directed 95th percentiles. numpy's linear percentile of the 20
    #   sorted A -> B values sits at rank 0.95 * 19 = 18.05, between 9 (rank 18) and 10
    #   (rank 19): 9.05; B -> A gives 0. HD95 = 9.05.
    # medpy: the 95th percentile of all 30 values pooled: rank 0.95 * 29 = 27.55, between
    #   rank 27 (= 8: ranks 20..29 hold 1..10) and rank 28 (= 9): 8.55.
    a = np.zeros((3, 24), bool)
    b = np.zeros((3, 24), bool)
    a[1, 2:22] = True
    b[1, 2:12] = True
    assert hd95(a, b) == pytest.approx(9.05)
    assert hd95(a, b, convention="monai") == pytest.approx(9.05)
    assert hd95(a, b, convention="medpy") == pytest.approx(8.55)
    assert hd95(b, a, convention="medpy") == pytest.approx(8.55)  # symmetric
    assert hd95(a, np.zeros_like(a), convention="medpy") is math.nan or math.isnan(
        hd95(a, np.zeros_like(a), convention="medpy")
    )
    assert hd95(np.zeros_like(a), np.zeros_like(a), convention="medpy") == 0.0
    with pytest.raises(ValueError, match="convention"):
        hd95(a, b, convention="scipy")
