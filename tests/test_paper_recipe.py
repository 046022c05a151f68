"""The paper recipe's switches: the authors' BCE form, their augmentation order, their split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench.core.io import read_json, write_json
from bench.data.augment import scale_images, training_batch
from bench.data.cache import prepare_data
from bench.data.layouts import DataError, index_dataset
from bench.data.synthetic import make_synthetic
from bench.engine.config import LATER_FIELDS, RUNTIME_FIELDS, TrainConfig
from bench.engine.losses import BceDiceLoss, build_loss
from bench.engine.rundir import config_differences

# ----------------------------------------------------------------------------- loss


def _dice_term(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def test_paper_loss_is_nn_bceloss_on_sigmoid_plus_dice():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=g) * 12  # many saturate
    logits[0, 0, 0, :4] = torch.tensor([17.0, 30.0, -30.0, -120.0])
    target = (torch.rand(3, 1, 8, 8, generator=g) > 0.5).float()
    a = logits.clone().requires_grad_()
    got = BceDiceLoss(form="bce_dice_probs")(a, target)
    got.backward()
    b = logits.clone().requires_grad_()
    want = nn.BCELoss()(torch.sigmoid(b), target) + _dice_term(b, target)
    want.backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-12)
    # the two forms differ here (saturated logits), so the test above can tell them apart
    assert float(BceDiceLoss()(logits, target)) != pytest.approx(float(got.detach()), rel=1e-3)


def test_at_a_saturated_wrong_logit_only_bce_with_logits_keeps_a_gradient():
    # one pixel per case, BCE only: d/dx of BCE-with-logits is sigmoid(x) - t (-> +-1);
    # nn.BCELoss on sigmoid(x) gives (p - t) / max(p(1-p), 1e-12) * p(1-p), which is 0 once
    # sigmoid(30) rounds to 1.0 in float32 (p(1-p) = 0), and 1e12 * exp(-40) = 4e-6 at x = -40
    for x, t, paper_grad in ((30.0, 0.0, 0.0), (-40.0, 1.0, -4.25e-6)):
        grads = {}
        for form in ("bce_dice_logits", "bce_dice_probs"):
            logit = torch.tensor([[[[x]]]], requires_grad=True)
            BceDiceLoss(dice_weight=0.0, form=form)(logit, torch.tensor([[[[t]]]])).backward()
            grads[form] = float(logit.grad)
        assert grads["bce_dice_logits"] == pytest.approx(1.0 - 2 * t)
        assert grads["bce_dice_probs"] == pytest.approx(paper_grad, abs=1e-7)
    # unsaturated: the same gradient in both forms
    logit = torch.tensor([[[[2.0]]]])
    target = torch.zeros_like(logit)
    grads = []
    for form in ("bce_dice_logits", "bce_dice_probs"):
        x = logit.clone().requires_grad_()
        BceDiceLoss(form=form)(x, target).backward()
        grads.append(float(x.grad))
    assert grads[0] == pytest.approx(grads[1], rel=1e-5)


def test_paper_loss_under_autocast_and_deep_supervision():
    g = torch.Generator().manual_seed(3)
    main, aux = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    t = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    loss = build_loss(loss_weights=(1.0, (0.5,)), form="bce_dice_probs")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(main.bfloat16(), t, [aux.bfloat16()])
    assert value.dtype == torch.float32 and torch.isfinite(value)
    base = BceDiceLoss(form="bce_dice_probs")
    want = base(main.bfloat16().float(), t) + 0.5 * base(aux.bfloat16().float(), t)
    assert float(value) == pytest.approx(float(want), rel=1e-6)
    with pytest.raises(ValueError, match="loss='bce'"):
        BceDiceLoss(form="bce")


# ----------------------------------------------------------------------------- augmentation order


def test_scale_before_augment_keeps_the_images_own_contrast():
    # A gray image (background 100, a 200 square in the middle) that gets rotated: rotating
    # the uint8 image fills the corners with 0, and min-max scaling afterwards maps 0 -> 0
    # and 200 -> 255, so the background 100 lands at 127.5. Scaling first maps 100 -> 0 and
    # 200 -> 255, and the corners are filled with 0 after: the image keeps its own contrast.
    img = torch.full((1, 3, 16, 16), 100, dtype=torch.uint8)
    img[:, :, 4:12, 4:12] = 200
    mask = (img[:, :1] == 200).to(torch.uint8)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    kw = dict(scaling="minmax255")
    # p_rotate is 0.5 per sample; generator seed 0 rotates this sample (checked below)
    late, _ = training_batch(img, mask, gen(), scale_first=False, **kw)
    early, _ = training_batch(img, mask, gen(), scale_first=True, **kw)
    plain = scale_images(img, "minmax255")
    centre = (slice(None), slice(None), slice(7, 9), slice(7, 9))
    border_value = early[0, 0, 1, 8]  # the image's own background after rotation or flip
    assert torch.all(early[centre] == 255) and torch.all(late[centre] == 255)
    if torch.equal(late, plain) or torch.equal(late, plain.flip(-1)):
        pytest.fail("seed 0 did not rotate: choose another seed")
    # late: background 100 became ~127.5 (the corners' 0 is the new minimum)
    assert late[0, 0, 1, 8] == pytest.approx(127.5, abs=1.0)
    assert border_value == pytest.approx(0.0, abs=1e-4)
    # without augmentation the two orders are the same
    a, _ = training_batch(img, mask, augment=False, scale_first=False, **kw)
    b, _ = training_batch(img, mask, augment=False, scale_first=True, **kw)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- recipes, hashes


def test_paper_recipe_carries_loss_augment_order_and_split_mode():
    fair = TrainConfig.from_recipe("fair", data="x")
    paper = TrainConfig.from_recipe("paper", data="x")
    assert (fair.loss, fair.scale_before_augment, fair.split_mode) == (
        "bce_dice_logits",
        False,
        "auto",
    )
    assert (paper.loss, paper.scale_before_augment, paper.split_mode) == (
        "bce_dice_probs",
        True,
        "seeded",
    )
    with pytest.raises(ValueError, match="split_mode"):
        TrainConfig.from_recipe("fair", data="x", split_mode="random")
    with pytest.raises(ValueError, match="loss"):
        TrainConfig.from_recipe("fair", data="x", loss="focal")


def test_fields_added_later_leave_existing_run_hashes_alone(tmp_path):
    cfg = TrainConfig.from_recipe("fair", data="/x/isic2017-mini", epochs=20, model="egeunet")
    # the hash as computed before loss / scale_before_augment / split_mode existed
    old = {
        k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS and k not in LATER_FIELDS
    }
    old["dataset"] = cfg.dataset_name
    old_hash = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.config_hash == old_hash
    for k, v in {"loss": "bce_dice_probs", "scale_before_augment": True}.items():
        assert cfg.replace(**{k: v}).config_hash != old_hash
    # a config.json written before the fields existed differs in nothing from the fair config
    legacy = {k: v for k, v in cfg.to_dict().items() if k not in LATER_FIELDS}
    write_json(tmp_path / "config.json", legacy)
    assert config_differences(tmp_path, cfg) == []
    assert config_differences(tmp_path, cfg.replace(loss="bce_dice_probs")) == [
        "loss: 'bce_dice_logits' -> 'bce_dice_probs'"
    ]


# ----------------------------------------------------------------------------- split mode


def _prep(root: Path, tmp: Path, **kw):
    return prepare_data(root, size=24, cache_dir=tmp / "cache", progress=False, workers=1, **kw)


def test_seeded_split_of_an_official_download_is_the_papers_pool(tmp_path):
    root = make_synthetic(tmp_path / "i", n=20, seed=0, size=(40, 56), layout="isic2017")
    official = index_dataset(root).official_split_ids()
    auto = _prep(root, tmp_path)
    seeded = _prep(root, tmp_path, split_mode="seeded")
    assert auto.split_file != seeded.split_file  # never the same file
    assert read_json(auto.split_file)["source"] == "official"
    saved = read_json(seeded.split_file)
    assert saved["source"] == "seeded" and saved["excluded"] == sorted(official["test"])
    pool = sorted(official["train"] + official.get("val", []))
    got = seeded.split_ids
    assert sorted(got["train"] + got["val"] + got["test"]) == pool
    assert len(got["test"]) == round(0.3 * len(pool))
    # an explicit mode never reuses a split file of another kind
    with pytest.raises(DataError, match="holds a official split.*seeded"):
        _prep(root, tmp_path, split_mode="seeded", split_file=auto.split_file)
    with pytest.raises(DataError, match="holds a seeded split.*official"):
        _prep(root, tmp_path, split_mode="official", split_file=seeded.split_file)
    # a folder without an official test part: seeded = every image, the same file as auto
    flat = make_synthetic(tmp_path / "f", n=10, seed=0, size=(40, 56))
    a, s = _prep(flat, tmp_path), _prep(flat, tmp_path, split_mode="seeded")
    assert a.split_file == s.split_file and a.split_ids == s.split_ids
