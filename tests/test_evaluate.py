"""Evaluation engine: checkpoint formats, the evaluate command, original-resolution scoring."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from PIL import Image

from bench.engine.checkpoints import extract_state_dict, load_weights
from bench.engine.evaluate import (
    PER_IMAGE_COLUMNS,
    EvalSettings,
    baseline_model,
    evaluate_arrays,
    evaluate_split,
)


def _tiny_unet() -> nn.Module:
    from models import create_model

    torch.manual_seed(0)
    return create_model("unet", base_width=2).eval()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from bench.data.cache import prepare_data
    from bench.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path_factory.mktemp("syn") / "lesions", n=12, seed=1)
    return prepare_data(root, size=32, progress=False, workers=1)


def test_all_foreground_baseline_by_hand(prepared):
    model = baseline_model("all", prepared.masks("train"))
    res = evaluate_split(model, prepared, "test", original_resolution=True)
    masks = prepared.masks("test").astype(bool)
    fg = masks.reshape(len(masks), -1).sum(1)
    hw = masks.shape[1] * masks.shape[2]
    assert res.metrics["dsc"] == pytest.approx(
        2 * fg.sum() / (2 * fg.sum() + (hw * len(masks) - fg.sum()))
    )
    assert res.metrics["sen"] == 1.0 and res.metrics["spe"] == 0.0
    assert res.per_image["dice"].to_numpy() == pytest.approx(2 * fg / (fg + hw))
    assert list(res.per_image["image_id"]) == prepared.split_ids["test"]
    assert list(res.per_image.columns) == PER_IMAGE_COLUMNS
    # each image's own confusion counts: all foreground predicted, so no fn and no tn
    per = res.per_image
    assert list(per["tp"]) == list(fg) and list(per["fp"]) == list(hw - fg)
    assert (per["fn"] == 0).all() and (per["tn"] == 0).all()
    # and they pool to the pooled metric
    assert 2 * per["tp"].sum() / (2 * per["tp"].sum() + per["fp"].sum() + per["fn"].sum()) == (
        pytest.approx(res.metrics["dsc"], abs=0)
    )
    # at the original size the upsampled all-foreground map is all foreground too
    dice_orig = []
    for i in range(len(masks)):
        m = prepared.original_mask("test", i).astype(bool)
        dice_orig.append(2 * m.sum() / (m.sum() + m.size))
    assert res.original_per_image["dice"].to_numpy() == pytest.approx(dice_orig)
    assert res.original["n_images"] == len(masks)


def test_evaluate_loss_and_training_mode_restored(prepared):
    from bench.engine.losses import build_loss

    model = _tiny_unet().train()
    no_hd95 = EvalSettings(compute_hd95=False)
    res = evaluate_split(model, prepared, "val", no_hd95, loss_fn=build_loss())
    assert np.isfinite(res.loss) and model.training
    assert np.isnan(res.metrics["hd95_mean"])


def test_extract_state_dict_formats():
    model = _tiny_unet()
    sd = model.state_dict()
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    for obj in (
        sd,
        {"model_state_dict": sd, "epoch": 3},
        {"state_dict": wrapped},
        {"model": sd, "optimizer": {}},
        model,
    ):
        out = extract_state_dict(obj)
        assert out.keys() == sd.keys()
    with pytest.raises(ValueError, match="no model weights"):
        extract_state_dict({"epoch": 1}, "x.pt")
    with pytest.raises(ValueError, match="x.pt"):
        extract_state_dict([1, 2], "x.pt")


def test_load_weights_errors(tmp_path):
    model = _tiny_unet()
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_weights(model, tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_weights(model, bad)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"head.weight": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match="do not match"):
        load_weights(model, other)


def test_evaluate_command_on_authors_style_checkpoint(prepared, tmp_path, capsys):
    from bench.cli import main

    model = _tiny_unet()
    ckpt = tmp_path / "best.pth"
    torch.save(
        {"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt
    )
    out, masks_dir = tmp_path / "eval", tmp_path / "masks"
    rc = main(
        [
            "evaluate",
            "--model",
            "unet",
            "--checkpoint",
            str(ckpt),
            "--model-kwargs",
            "{base_width: 2}",
            "--data",
            str(prepared.root),
            "--input-size",
            "32",
            "--results",
            str(out),
            "--save-masks",
            str(masks_dir),
            "--quiet",
        ]
    )
    assert rc == 0
    assert "dsc" in capsys.readouterr().out
    got = json.loads((out / "metrics.json").read_text())
    model2 = _tiny_unet()
    load_weights(model2, ckpt)
    want = evaluate_split(model2, prepared, "test")
    assert got["metrics"] == pytest.approx(want.metrics, nan_ok=True)
    assert got["split"] == "test" and got["n_images"] == len(prepared.split_ids["test"])
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "per_image.csv"), want.per_image, check_dtype=False
    )
    pngs = sorted(masks_dir.glob("*.png"))
    assert [p.stem for p in pngs] == sorted(prepared.split_ids["test"])
    arr = np.asarray(Image.open(pngs[0]))
    assert arr.shape == (32, 32) and set(np.unique(arr)) <= {0, 255}


def test_authors_malunet_state_dict_loads(shared_dir, tmp_path):
    from models import create_model

    ref = torch.load(shared_dir / "reference" / "malunet_reference.pt", weights_only=True)
    path = tmp_path / "latest.pth"  # the authors' training script's checkpoint layout
    torch.save({"epoch": 1, "model_state_dict": ref["state_dict"], "loss": 0.5}, path)
    model = create_model("malunet")
    load_weights(model, path)
    for k, v in ref["state_dict"].items():
        assert torch.equal(model.state_dict()[k], v), k


def test_evaluate_arrays_checks_lengths():
    with pytest.raises(ValueError, match="do not match"):
        evaluate_arrays(
            baseline_model("all", np.zeros((1, 8, 8))),
            np.zeros((2, 8, 8, 3), np.uint8),
            np.zeros((2, 8, 8)),
            ["a"],
        )


def test_disc_and_mean_mask_baselines(prepared, capsys):
    from bench.cli import main

    train = prepared.masks("train")
    disc = torch.sigmoid(baseline_model("disc", train).logits) > 0.5
    assert disc.float().mean().item() == pytest.approx(train.mean(), abs=0.02)
    assert disc[16, 16] and not disc[0, 0]  # centred
    mean = torch.sigmoid(baseline_model("mean-mask", train).logits)
    assert torch.allclose(mean, torch.tensor(train.mean(0), dtype=torch.float32), atol=1e-3)
    rc = main(
        [
            "evaluate",
            "--baseline",
            "disc",
            "--data",
            str(prepared.root),
            "--input-size",
            "32",
            "--quiet",
            "--no-hd95",
        ]
    )
    assert rc == 0 and "dsc" in capsys.readouterr().out
    assert main(["evaluate", "--data", str(prepared.root), "--input-size", "32", "--quiet"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_evaluate_takes_the_training_split_settings(tmp_path, capsys):
    from bench.cli import main
    from bench.data.cache import prepare_data
    from bench.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path / "seeded7", n=12, seed=2)
    prepare_data(root, size=32, seed=7, progress=False, workers=1)  # writes split.json, seed 7
    args = ["evaluate", "--baseline", "disc", "--data", str(root), "--input-size", "32", "--quiet"]
    assert main(args) == 2  # default split seed 42 disagrees with the split file
    assert "split" in capsys.readouterr().err
    assert main([*args, "--split-seed", "7"]) == 0
    assert "dsc" in capsys.readouterr().out
