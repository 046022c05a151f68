"""Committed trained weights: publish, load by name (hash-verified), reproduce the run's scores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from run_fixtures import tiny_unet_config

from bench.data.synthetic import make_synthetic
from bench.engine.train import run_training
from bench.jobs.weights import publish_run
from models import create_model
from models.weights import WeightsError, list_weights, weights_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    data = make_synthetic(tmp_path_factory.mktemp("data") / "syn", n=30, size=(48, 64), seed=4)
    return run_training(tiny_unet_config(data), tmp_path_factory.mktemp("results"), quiet=True)


@pytest.fixture()
def wdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SEGBENCH_WEIGHTS", str(tmp_path / "weights"))
    return tmp_path / "weights"


def _score(model: torch.nn.Module, run: Path) -> pd.DataFrame:
    """Per-image Dice of ``model`` on the run's own test split, as the run scored it."""
    from bench.data.cache import prepare_data
    from bench.engine.evaluate import EvalSettings, evaluate_split

    cfg = json.loads((run / "config.json").read_text())
    data = prepare_data(cfg["data"], cfg["image_size"], seed=cfg["split_seed"], progress=False)
    res = evaluate_split(model.eval(), data, "test", EvalSettings(batch_size=cfg["batch_size"]))
    return res.per_image


def test_publish_then_load_by_name_reproduces_the_runs_test_scores(run, wdir):
    entry = publish_run(run)
    assert (wdir / entry["file"]).is_file() and (wdir / "index.json").is_file()
    [listed] = list_weights("unet")
    assert listed.name == entry["name"] and listed.model_kwargs == {"base_width": 2}
    # built with the kwargs it was trained with (base_width 2), without the caller saying so
    model = create_model("unet", weights=entry["name"])
    got = _score(model, run).set_index("image_id")["dice"]
    want = pd.read_csv(run / "per_image.csv").set_index("image_id")["dice"]
    np.testing.assert_array_equal(got.loc[want.index].to_numpy(), want.to_numpy())


def test_a_changed_weights_file_is_refused_by_hash(run, wdir):
    entry = publish_run(run, name="x")
    path = wdir / entry["file"]
    state = torch.load(path, weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1
    torch.save(state, path)
    with pytest.raises(WeightsError, match="sha256"):
        create_model("unet", weights="x")


def test_unknown_name_and_contradicting_kwargs_are_named(run, wdir):
    publish_run(run, name="y")
    with pytest.raises(WeightsError, match="known for unet: y"):
        create_model("unet", weights="nope")
    with pytest.raises(WeightsError, match="contradicts"):
        create_model("unet", weights="y", base_width=8)


def test_publish_refuses_an_unfinished_run_and_a_taken_name(run, wdir, tmp_path):
    publish_run(run, name="z")
    with pytest.raises(ValueError, match="already in"):
        publish_run(run, name="z")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text(json.dumps({"status": "running"}))
    (bad / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not finished"):
        publish_run(bad)


COMMITTED = list_weights() if (REPO / "results" / "weights" / "index.json").is_file() else []


@pytest.mark.parametrize("entry", COMMITTED, ids=lambda e: f"{e.model}:{e.name}")
def test_committed_weights_reproduce_their_committed_test_dice(entry, shared_dir, monkeypatch):
    """Each committed light model's weights, scored on the first 16 images of its run's
    test split, give exactly the per-image Dice its committed per_image.csv holds."""
    monkeypatch.delenv("SEGBENCH_WEIGHTS", raising=False)
    assert weights_dir() == REPO / "results" / "weights"
    if entry.path is None:
        pytest.skip(f"{entry.model}:{entry.name} is kept outside git and no store here holds it")
    from bench.data.cache import prepare_data
    from bench.engine.evaluate import EvalSettings, evaluate_arrays

    run = REPO / entry.meta["run"]
    cfg = json.loads((run / "config.json").read_text())
    data_root = shared_dir / "data" / cfg["dataset"]
    if not data_root.is_dir():
        pytest.skip(f"{data_root} absent")
    data = prepare_data(
        data_root,
        cfg["image_size"],
        seed=cfg["split_seed"],
        val_fraction=cfg["val_fraction"],
        test_fraction=cfg["test_fraction"],
        split_mode=cfg.get("split_mode", "auto"),
        progress=False,
    )
    assert data.split_hash == entry.meta["split_hash"]
    model = create_model(entry.model, weights=entry.name).eval()
    # the run scored its test split in its own memory format and thread count: fp32 sums
    # in another order can move a pixel across the threshold (seen: 1 pixel of 65,536
    # with a contiguous model against the run's channels_last)
    manifest = json.loads((run / "manifest.json").read_text())
    if manifest.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.get("threads") or threads)
    n = 16
    try:
        res = evaluate_arrays(
            model,
            data.images("test")[:n],
            data.masks("test")[:n],
            data.ids("test")[:n],
            EvalSettings(
                batch_size=cfg["batch_size"],
                scaling=entry.input_scaling,
                threshold=entry.threshold,
                compute_hd95=False,
            ),
        )
    finally:
        torch.set_num_threads(threads)
    want = pd.read_csv(run / "per_image.csv").set_index("image_id")["dice"]
    got = res.per_image.set_index("image_id")["dice"]
    np.testing.assert_allclose(got.to_numpy(), want.loc[got.index].to_numpy(), rtol=0, atol=1e-12)


def test_evaluate_and_export_accept_weights_by_name(run, wdir, tmp_path, capsys):
    from bench.cli import main

    entry = publish_run(run, name="w")
    cfg = json.loads((run / "config.json").read_text())
    out = tmp_path / "ev"
    args = ["evaluate", "--model", "unet", "--weights", "w", "--data", cfg["data"]]
    assert main([*args, "--results", str(out), "--no-hd95", "--quiet"]) == 0
    rec = json.loads((out / "metrics.json").read_text())
    want = json.loads((run / "metrics.json").read_text())["test"]["dsc"]
    assert rec["metrics"]["dsc"] == pytest.approx(want, abs=1e-6)
    assert main(["evaluate", "--model", "unet", "--weights", "nope", "--data", cfg["data"]]) == 2
    assert "known for unet: w" in capsys.readouterr().err
    exp = tmp_path / "ex"
    assert main(["export", "--models", "unet", "--weights", "w", "--results", str(exp),
                 "--input-size", "32"]) == 0  # fmt: skip
    assert f"weights unet:w (sha256 {entry['sha256'][:12]})" in capsys.readouterr().out


def test_publish_refuses_weights_too_heavy_for_git(run, wdir, monkeypatch):
    """results/weights is committed: a model's weights over the limit stay with the run,
    and nothing is written (no file, no index entry, no empty folder)."""
    from bench.jobs import weights as publishing

    monkeypatch.setattr(publishing, "MAX_WEIGHTS_MB", 0.0001)  # the tiny UNet is ~1 kB
    with pytest.raises(ValueError, match="over the 0.0001 MB"):
        publish_run(run, name="heavy")
    assert not (wdir / "unet").exists() and not (wdir / "index.json").exists()


def test_publish_refuses_weights_past_the_folders_budget(run, wdir, monkeypatch):
    """The folder's total is capped too: a publish that would pass it writes nothing, and
    re-publishing a name (--force) does not count its own old file twice."""
    from bench.jobs import weights as publishing

    first = publish_run(run, name="one")
    size_mb = (wdir / first["file"]).stat().st_size / 1e6
    monkeypatch.setattr(publishing, "MAX_TOTAL_MB", size_mb * 1.5)
    with pytest.raises(ValueError, match="over its .* MB budget"):
        publish_run(run, name="two")
    assert not (wdir / "unet" / "two.pt").exists()
    assert [e["name"] for e in json.loads((wdir / "index.json").read_text())["weights"]] == ["one"]
    publish_run(run, name="one", force=True)  # replaces its own file: within budget


def test_weights_over_the_limit_go_to_an_external_store_and_load_from_it(
    run, wdir, tmp_path, monkeypatch
):
    """--store keeps the file out of the committed folder; the index pins its sha256; it
    loads by name only where SEGBENCH_WEIGHTS_STORE lists a folder holding an intact copy."""
    from models.weights import STORE_ENV

    monkeypatch.delenv(STORE_ENV, raising=False)
    store = tmp_path / "store"
    entry = publish_run(run, name="ext", store=store)
    assert entry["store"] == "external" and (store / entry["file"]).is_file()
    assert not (wdir / entry["file"]).exists()
    assert entry["meta"]["bytes"] == (store / entry["file"]).stat().st_size
    with pytest.raises(WeightsError, match=rf"{STORE_ENV} is not set.*{entry['sha256']}"):
        create_model("unet", weights="ext")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv(STORE_ENV, f"{elsewhere}{os.pathsep}{store}")  # the second holds it
    model = create_model("unet", weights="ext")
    got = _score(model, run).set_index("image_id")["dice"]
    want = pd.read_csv(run / "per_image.csv").set_index("image_id")["dice"]
    np.testing.assert_array_equal(got.loc[want.index].to_numpy(), want.to_numpy())
    path = store / entry["file"]
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(WeightsError, match="file changed or damaged"):
        create_model("unet", weights="ext")
    with pytest.raises(ValueError, match="committed to git"):
        publish_run(run, name="inside", store=wdir / "sub")


def test_moving_committed_weights_to_a_store_leaves_no_committed_copy(run, wdir, tmp_path):
    entry = publish_run(run, name="m")
    assert (wdir / entry["file"]).is_file()
    publish_run(run, name="m", force=True, store=tmp_path / "store")
    assert not (wdir / entry["file"]).exists() and (tmp_path / "store" / entry["file"]).is_file()
    [listed] = list_weights("unet")
    assert listed.store == "external"


def test_committed_weights_fit_the_publish_limits():
    """What is committed under results/weights obeys the limits publish enforces."""
    from bench.jobs import weights as publishing

    files = list(weights_dir().rglob("*.pt"))
    sizes = {f.name: f.stat().st_size / 1e6 for f in files}
    assert all(mb <= publishing.MAX_WEIGHTS_MB for mb in sizes.values()), sizes
    assert sum(sizes.values()) <= publishing.MAX_TOTAL_MB, sizes
    # every committed entry's file is here; no file of an external entry was committed
    for e in COMMITTED:
        assert (weights_dir() / e.file).is_file() == (e.store == "repo"), (e.model, e.name)
