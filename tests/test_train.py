"""Training engine on synthetic lesions: recipe configs, run files, resume, NaN, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from run_fixtures import tiny_unet_config

from bench.engine.config import TrainConfig
from bench.engine.evaluate import PER_IMAGE_COLUMNS
from bench.engine.run_control import NonFiniteLossError
from bench.engine.train import run_training

METRIC_KEYS = {
    "model",
    "dataset",
    "seed",
    "recipe",
    "epochs",
    "config_hash",
    "status",
    "best_epoch",
    "test",
    "train_images_per_s",
    "epoch_time_s",
    "environment",
}
TEST_KEYS = {
    "acc",
    "sen",
    "spe",
    "dsc",
    "miou",
    "dice_mean",
    "dice_std",
    "iou_mean",
    "iou_std",
    "hd95_mean",
    "hd95_median",
    "isic_jaccard",
    "n_images",
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from bench.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("data") / "syn", n=40, size=(48, 64), seed=3)


def _cfg(data_root: Path, **kw) -> TrainConfig:
    return tiny_unet_config(data_root, **{"model_kwargs": {"base_width": 4}, "epochs": 3, **kw})


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- config


def test_fair_recipe_is_the_dataclass_default_and_paper_differs():
    fair = TrainConfig.from_recipe("fair", data="x")
    assert fair == TrainConfig(data="x")
    assert (fair.lr, fair.weight_decay, fair.betas, fair.eps) == (1e-3, 1e-2, (0.9, 0.999), 1e-8)
    assert (fair.t_max, fair.eta_min, fair.batch_size, fair.epochs, fair.seed) == (
        None,
        1e-5,
        8,
        300,
        42,
    )
    # fair: the cosine spans the run's own budget; paper: the authors' T_max 50 of 300
    assert fair.effective_t_max == 300
    assert fair.replace(epochs=10).effective_t_max == 10
    assert fair.select_split == "val" and fair.input_scaling == "minmax255"
    paper = TrainConfig.from_recipe("paper", data="x")
    assert (paper.select_split, paper.select_metric, paper.val_every) == ("test", "loss", 30)
    assert paper.train_splits == ("train", "val") and paper.lr == fair.lr
    assert paper.t_max == paper.effective_t_max == 50
    assert paper.config_hash != fair.config_hash


def test_config_overrides_coercion_and_errors(tmp_path):
    cfg = TrainConfig.from_recipe(
        "fair",
        data="x",
        lr="5e-4",
        betas="0.8, 0.9",
        amp="none",
        augment="false",
        model_kwargs="{base_width: 4}",
    )
    assert cfg.lr == 5e-4 and cfg.betas == (0.8, 0.9) and cfg.amp is None and not cfg.augment
    assert cfg.model_kwargs == {"base_width": 4}
    with pytest.raises(ValueError, match="unknown TrainConfig field.*lerning_rate"):
        TrainConfig.from_recipe("fair", lerning_rate=1)
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        TrainConfig.from_recipe("nope")
    bad = tmp_path / "mine.yaml"
    bad.write_text("inherit: fair\nepochs: 0\n")
    with pytest.raises(ValueError, match=r"mine\.yaml: epochs=0"):
        TrainConfig.from_recipe(bad)
    bad.write_text("select_split: test\ntrain_splits: [train, test]\n")
    with pytest.raises(ValueError, match="train_splits"):
        TrainConfig.from_recipe(bad)
    bad.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match=r"mine\.yaml: unknown key\(s\) epochz"):
        TrainConfig.from_recipe(bad)
    with pytest.raises(ValueError, match="select_metric"):
        TrainConfig.from_recipe("fair", select_metric="f1")


def test_only_the_paper_recipe_may_select_on_the_test_split(tmp_path):
    with pytest.raises(ValueError, match="select_split.*recipe 'fair' must not select"):
        TrainConfig.from_recipe("fair", data="x", select_split="test")
    with pytest.raises(ValueError, match="select_split.*eval_split='val'"):
        TrainConfig.from_recipe("fair", data="x", eval_split="val")  # selects on val too
    mine = tmp_path / "mine.yaml"
    mine.write_text("select_split: test\n")
    with pytest.raises(ValueError, match=r"mine\.yaml: select_split='test'"):
        TrainConfig.from_recipe(mine)
    assert TrainConfig.from_recipe("paper", data="x").select_split == "test"
    assert TrainConfig.from_recipe("fair", data="x", select_split="none").select_split == "none"


def test_config_hash_ignores_where_and_how_fast():
    a = TrainConfig(data="/a/isic", device="cpu", threads=1)
    b = TrainConfig(data="/elsewhere/isic", device="cuda", threads=4, deterministic=False)
    assert a.config_hash == b.config_hash and len(a.config_hash) == 16
    assert a.config_hash != a.replace(lr=2e-3).config_hash
    assert a.config_hash != a.replace(data="/a/other").config_hash


def test_split_kwargs_are_the_keywords_prepare_data_takes():
    import inspect

    from bench.data.cache import data_identity, prepare_data
    from bench.engine.config import split_kwargs

    cfg = TrainConfig(data="/a/isic", split_seed=7, test_fraction=0.2, split_mode="seeded")
    kw = split_kwargs(cfg)
    assert kw == {"split_file": None, "seed": 7, "val_fraction": 0.1, "test_fraction": 0.2,
                  "split_mode": "seeded"}  # fmt: skip
    for fn in (prepare_data, data_identity):  # a renamed keyword fails here, not in a run
        inspect.signature(fn).bind("/a/isic", **kw)
    # a recorded config.json from before split_mode: the default, as the run had
    recorded = {k: v for k, v in cfg.to_dict().items() if k != "split_mode"}
    assert split_kwargs(recorded) == {**kw, "split_mode": "auto"}


# --------------------------------------------------------------------------- a full short run


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    cfg = _cfg(data_root, epochs=4)
    return cfg, results, run_training(cfg, results, quiet=True)


def test_short_run_reduces_loss_and_writes_the_schema(finished_run):
    cfg, results, run = finished_run
    assert run == results / "runs" / "syn" / "unet" / "fair-e4" / "seed42"
    log = pd.read_csv(run / "log.csv")
    assert list(log["epoch"]) == [1, 2, 3, 4]
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]
    assert {"loss", "lr", "val_loss", "val_dsc", "val_miou", "epoch_time_s", "images_per_s"} <= set(
        log
    )
    assert log["lr"].iloc[0] == pytest.approx(1e-3)
    # the fair cosine spans the 4-epoch budget: epoch 4 trains at lr(3) = eta_min + half of
    # the cosine's last quarter step, and the schedule would reach eta_min after it
    lr4 = 1e-5 + (1e-3 - 1e-5) * (1 + np.cos(np.pi * 3 / 4)) / 2
    assert log["lr"].iloc[-1] == pytest.approx(lr4)
    m = json.loads((run / "metrics.json").read_text())
    assert m["t_max"] == 4 and m["hosts"] and len(m["code_fingerprint"]) == 16
    assert m["train_time_total_s"] == pytest.approx((log["epoch_time_s"] + log["val_time_s"]).sum())
    assert 1 <= m["epoch_to_99pct_best"] <= 4
    assert METRIC_KEYS <= set(m) and TEST_KEYS <= set(m["test"])
    assert m["status"] == "finished" and m["config_hash"] == cfg.config_hash
    assert m["experiment_hash"] == cfg.experiment_hash and m["amp"] is None  # fp32
    assert m["best_epoch"] == int(log.loc[log["val_loss"].idxmin(), "epoch"])
    assert all(0 <= m["test"][k] <= 1 for k in ("acc", "sen", "spe", "dsc", "miou", "dice_mean"))
    per = pd.read_csv(run / "per_image.csv")
    assert list(per.columns) == PER_IMAGE_COLUMNS
    assert len(per) == m["test"]["n_images"] == 12
    man = json.loads((run / "manifest.json").read_text())
    assert man["dataset"]["fingerprint"] and man["dataset"]["split_file"]
    assert "torch" in man["versions"] and "deterministic_algorithms" in man["torch_backends"]
    conf = json.loads((run / "config.json").read_text())
    again = TrainConfig.from_dict({k: v for k, v in conf.items() if k != "config_hash"})
    assert again == cfg.replace(dataset="syn") and again.config_hash == conf["config_hash"]
    assert (run / "checkpoints" / "best.pt").is_file() and (
        run / "checkpoints" / "last.pt"
    ).is_file()
    assert list(run.glob("events.out.tfevents.*"))


def test_best_checkpoint_reproduces_the_test_metrics(finished_run):
    from bench.data.cache import prepare_data
    from bench.engine.checkpoints import load_weights
    from bench.engine.evaluate import evaluate_split
    from models import create_model

    cfg, _, run = finished_run
    model = create_model("unet", base_width=4)
    load_weights(model, run / "checkpoints" / "best.pt")
    prepared = prepare_data(cfg.data, size=32, progress=False)
    res = evaluate_split(model, prepared, "test")
    m = json.loads((run / "metrics.json").read_text())
    assert res.metrics == pytest.approx(m["test"])


def test_finished_run_is_skipped_unless_forced(finished_run):
    cfg, results, run = finished_run
    stamp = (run / "metrics.json").stat().st_mtime_ns
    assert run_training(cfg, results, quiet=True) == run
    assert (run / "metrics.json").stat().st_mtime_ns == stamp
    # same experiment (recipe, epochs), other settings: a conflict naming what differs
    with pytest.raises(ValueError, match=r"another configuration.*lr: 0\.001 -> 0\.0005"):
        run_training(cfg.replace(lr=5e-4), results, quiet=True)


def test_unreadable_metrics_file_is_named(finished_run, tmp_path):
    cfg, results, run = finished_run
    broken = tmp_path / "runs" / "syn" / "unet" / "fair-e4" / "seed42"
    broken.mkdir(parents=True)
    (broken / "metrics.json").write_text('{"status": "fini')  # e.g. hand-edited, cut short
    with pytest.raises(ValueError, match=r"seed42[/\\]metrics\.json: unreadable"):
        run_training(cfg, tmp_path, quiet=True)


def test_other_experiment_does_not_block_and_stays_apart(finished_run):
    from bench.analysis.report.accuracy import accuracy_summary
    from bench.analysis.report.load import load_results
    from bench.engine.rundir import experiment_name

    cfg, results, run = finished_run
    stamp = (run / "metrics.json").stat().st_mtime_ns
    short = run_training(cfg.replace(epochs=1), results, quiet=True)  # same model/data/seed
    assert short == results / "runs" / "syn" / "unet" / "fair-e1" / "seed42" != run
    assert (run / "metrics.json").stat().st_mtime_ns == stamp  # the 4-epoch run untouched
    assert json.loads((short / "metrics.json").read_text())["epochs"] == 1
    acc = accuracy_summary(load_results(results).runs)
    assert sorted(zip(acc["model"], acc["epochs"], acc["n_seeds"])) == [
        ("unet", 1, 1),
        ("unet", 4, 1),
    ]
    assert experiment_name("my recipe/v2", 300) == "my-recipe-v2-e300"


# --------------------------------------------------------------------------- failures


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    import bench.engine.trainer as bt

    real = bt.build_loss
    calls = {"n": 0}

    def poisoned(*a, **kw):
        loss = real(*a, **kw)

        def forward(logits, target, aux=()):
            if torch.is_grad_enabled():
                calls["n"] += 1
                if calls["n"] == 9:  # epoch 2, step 2 (7 steps per epoch)
                    return logits.sum() * float("nan")
            return type(loss).forward(loss, logits, target, aux)

        loss.forward = forward
        return loss

    monkeypatch.setattr(bt, "build_loss", poisoned)
    cfg = _cfg(data_root)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 2, step 2"):
        run_training(cfg, tmp_path, quiet=True)
    run = tmp_path / "runs" / "syn" / "unet" / "fair-e3" / "seed42"
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["step"] == 0
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "failed" and "non-finite" in m["reason"]


def test_ctrl_c_saves_mid_epoch_and_resume_matches_uninterrupted(data_root, tmp_path, monkeypatch):
    import bench.data.augment

    cfg = _cfg(data_root, epochs=2)
    ref = run_training(cfg, tmp_path / "ref", quiet=True)

    real = bench.data.augment.augment_batch
    calls = {"n": 0}

    def interrupting(x, y, gen, **kw):
        calls["n"] += 1
        if calls["n"] == 10:  # epoch 2, step 3: as if the user pressed Ctrl-C here
            signal.raise_signal(signal.SIGINT)
        return real(x, y, gen, **kw)

    monkeypatch.setattr(bench.data.augment, "augment_batch", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "int", quiet=True)
    run = tmp_path / "int" / "runs" / "syn" / "unet" / "fair-e2" / "seed42"
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (last["epoch"], last["step"]) == (1, 3)
    assert not (run / "metrics.json").exists()
    monkeypatch.setattr(bench.data.augment, "augment_batch", real)
    run_training(cfg, tmp_path / "int", quiet=True)
    _assert_same_run(ref, run)


def _assert_same_run(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ma["test"] == mb["test"]
    assert (ma["best_epoch"], ma["selection"]) == (mb["best_epoch"], mb["selection"])
    la, lb = (pd.read_csv(p / "log.csv") for p in (a, b))
    assert la[["epoch", "loss", "lr", "val_loss", "val_dsc"]].equals(
        lb[["epoch", "loss", "lr", "val_loss", "val_dsc"]]
    )
    sa, sb = (torch.load(p / "checkpoints" / "last.pt", weights_only=True)["model"] for p in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_after_sigkill_matches_uninterrupted_run(data_root, tmp_path):
    cfg = _cfg(data_root, image_size=64, batch_size=2, epochs=3)
    ref = run_training(cfg, tmp_path / "ref", quiet=True)

    cmd = [
        sys.executable,
        "-m",
        "bench.cli",
        "train",
        "--model",
        "unet",
        "--data",
        str(data_root),
        "--epochs",
        "3",
        "--batch-size",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--set",
        "image_size=64",
        "--set",
        "model_kwargs={base_width: 4}",
        "--results",
        str(tmp_path / "killed"),
        "--quiet",
    ]
    run = tmp_path / "killed" / "runs" / "syn" / "unet" / "fair-e3" / "seed42"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run / "log.csv").exists():  # epoch 1 done: now in epoch 2
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "training did not reach epoch 2"
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (run / "metrics.json").exists(), "killed too late: the run had finished"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _assert_same_run(ref, run)


def test_paper_recipe_selects_on_test_and_trains_on_train_plus_val(data_root, tmp_path):
    cfg = tiny_unet_config(data_root, "paper", val_every=1)
    run = run_training(cfg, tmp_path, quiet=True)
    log = pd.read_csv(run / "log.csv")
    assert "test_loss" in log and "val_loss" not in log
    # train (24) + val (4) images of the 40-image 7:3 split, as the authors' 70% part
    assert log["images_per_s"].iloc[0] * log["epoch_time_s"].iloc[0] == pytest.approx(28)
    m = json.loads((run / "metrics.json").read_text())
    assert m["selection"]["split"] == "test" and m["recipe"] == "paper"
    assert m["best_epoch"] == int(log.loc[log["test_loss"].idxmin(), "epoch"])


def test_paper_fixed_angle_recipe_is_the_paper_recipe_with_one_angle_per_run():
    paper = TrainConfig.from_recipe("paper", data="x")
    fixed = TrainConfig.from_recipe("paper-fixed-angle", data="x")
    assert paper.rotation == "per-sample" and fixed.rotation == "fixed"
    assert fixed.select_split == "test"  # an ablation of paper may select as paper does
    diff = {k for k, v in fixed.to_dict().items() if paper.to_dict().get(k) != v}
    assert diff - {"config_hash", "experiment_hash"} == {"recipe", "rotation"}
    with pytest.raises(ValueError, match="rotation='sometimes': choose one of per-sample, fixed"):
        TrainConfig.from_recipe("paper", data="x", rotation="sometimes")
    # a config recorded before the field hashes as it did (the field's old behaviour)
    old = {k: v for k, v in paper.to_dict().items() if k != "rotation"}
    from bench.engine.config import experiment_hash_of

    assert experiment_hash_of(old) == experiment_hash_of(paper.to_dict())


def test_fixed_rotation_gives_every_rotated_sample_of_a_run_the_seeds_angle(tmp_path, monkeypatch):
    from bench.data import augment
    from bench.data.synthetic import make_synthetic
    from bench.engine.config import fixed_rotation_angle

    data = make_synthetic(tmp_path / "syn", n=16, size=(40, 40), seed=3)
    seen: dict[str, list] = {"fixed": [], "per-sample": []}
    real = augment.augment_batch
    for rotation in seen:

        def spy(*args, _r=rotation, **kw):
            seen[_r].append(kw.get("fixed_angle"))
            return real(*args, **kw)

        monkeypatch.setattr(augment, "augment_batch", spy)
        cfg = tiny_unet_config(data, recipe="paper", epochs=2, rotation=rotation, seed=5)
        run_training(cfg, tmp_path / rotation, quiet=True)
    angle = fixed_rotation_angle(5)
    assert 0 <= angle < 360 and angle != fixed_rotation_angle(6)
    assert seen["fixed"] and set(seen["fixed"]) == {angle}
    assert seen["per-sample"] and set(seen["per-sample"]) == {None}
