"""Fault matrix, issue 28: every result tied to the data, checkpoint and code it came from.

Each ``test_fault_*`` function is one row of the "Fault matrix" table in DEVELOPING.md.
The runs are tiny (a 4-channel UNet on 24 synthetic 32-px images, two epochs) and train
in this process.
"""

from __future__ import annotations

import errno
import json
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.core import exitcodes
from bench.engine.config import TrainConfig
from bench.engine.run_control import NonFiniteLossError, TrainingStopped
from bench.engine.run_record import DatasetChanged
from bench.engine.train import run_training

SETTINGS = {
    "model": "unet",
    "model_kwargs": {"base_width": 4},
    "epochs": 2,
    "image_size": 32,
    "batch_size": 4,
    "threads": 1,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from bench.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("data") / "syn", n=24, size=(48, 64), seed=5)


def _cfg(data: Path, **over) -> TrainConfig:
    return TrainConfig.from_recipe("fair", data=str(data), **{**SETTINGS, **over})


def _run_dir(results: Path, epochs: int = 2) -> Path:
    return results / "runs" / "syn" / "unet" / f"fair-e{epochs}" / "seed42"


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory) -> Path:
    """One finished run (copied by the tests that change it)."""
    torch.set_num_threads(1)
    return run_training(_cfg(data_root), tmp_path_factory.mktemp("ref"), quiet=True)


def _copy_run(run: Path, results: Path) -> Path:
    dst = _run_dir(results)
    shutil.copytree(run, dst)
    return dst


def _copy_data(src: Path, dst: Path, drop: int = 0) -> Path:
    """A copy of a flat synthetic folder without its last ``drop`` pairs."""
    shutil.copytree(src, dst)
    for img in sorted((dst / "images").iterdir())[len(list((dst / "images").iterdir())) - drop :]:
        img.unlink()
        (dst / "masks" / f"{img.stem}.png").unlink()
    return dst


def _stop_in_epoch_2(monkeypatch) -> None:
    """SIGINT during the first step of epoch 2 (after epoch 1 was saved)."""
    import bench.data.augment

    real = bench.data.augment.augment_batch
    n = {"calls": 0}

    def interrupting(x, y, gen, **kw):
        n["calls"] += 1
        if n["calls"] == 5:  # 15 training images at batch 4: 4 steps an epoch
            signal.raise_signal(signal.SIGINT)
        return real(x, y, gen, **kw)

    monkeypatch.setattr(bench.data.augment, "augment_batch", interrupting)


def _evaluate(run: Path, **kw):
    from bench.engine.run_eval import evaluate_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = evaluate_model(run_dir=run, device="cpu", compute_hd95=False, **kw)
    return out, [str(w.message) for w in caught]


# --------------------------------------------------------------------------- item 1


def test_fault_evaluation_of_an_unfinished_run_is_dropped_once_its_best_changes(
    data_root, tmp_path, monkeypatch
):
    from bench.analysis.report.load import load_results

    results = tmp_path / "res"
    cfg = _cfg(data_root, select_split="none")  # best = last epoch: epoch 2 replaces it
    _stop_in_epoch_2(monkeypatch)
    with pytest.raises(TrainingStopped):
        run_training(cfg, results, quiet=True)
    monkeypatch.undo()
    run = _run_dir(results)
    other = _copy_data(data_root, tmp_path / "other")
    out, warned = _evaluate(run, data=other, split="all", keep_training_images=True)
    rec = out.record
    assert rec["checkpoint_epoch"] == 1 and len(rec["checkpoint_sha256"]) == 64
    assert rec["run_status"] is None
    assert any("not a finished run" in w for w in warned)
    assert any("not a finished run" in n for n in rec["notes"])
    run_training(cfg, results, quiet=True)  # resumed to the end: best.pt is epoch 2 now
    m = json.loads((run / "metrics.json").read_text())
    assert m["checkpoint"]["epoch"] == 2 and m["checkpoint"]["sha256"] != rec["checkpoint_sha256"]
    res = load_results(results)
    assert res.external.empty  # the epoch-1 evaluation is not reported as the run's
    assert any("epoch 1" in p and "best" in p for p in res.problems), res.problems
    out2, _ = _evaluate(run, data=other, split="all", keep_training_images=True)
    res = load_results(results)
    assert len(res.external) == 1 and res.external["checkpoint_epoch"].iloc[0] == 2


# --------------------------------------------------------------------------- items 2-4


def test_fault_resume_refuses_a_changed_dataset(data_root, finished, tmp_path, monkeypatch):
    results = tmp_path / "res"
    data = _copy_data(data_root, tmp_path / "a" / "syn")
    cfg = _cfg(data)
    _stop_in_epoch_2(monkeypatch)
    with pytest.raises(TrainingStopped):
        run_training(cfg, results, quiet=True)
    monkeypatch.undo()
    shutil.rmtree(data)
    _copy_data(data_root, data, drop=3)  # the same folder, three pairs fewer
    with pytest.raises(DatasetChanged, match="content fingerprint .* -> .*split counts"):
        run_training(cfg, results, quiet=True)
    # another folder of the same base name: refused too, naming both folders
    moved = _copy_data(data_root, tmp_path / "b" / "syn", drop=5)
    with pytest.raises(DatasetChanged, match=f"folder {data} -> {moved}"):
        run_training(_cfg(moved), results, quiet=True)
    assert not (_run_dir(results) / "metrics.json").exists()


def test_fault_evaluate_run_refuses_a_changed_dataset_of_the_same_name(
    data_root, finished, tmp_path
):
    run = _copy_run(finished, tmp_path / "res")
    changed = _copy_data(data_root, tmp_path / "x" / "syn", drop=4)
    with pytest.raises(DatasetChanged, match="not the data .* was trained on"):
        _evaluate(run, data=changed)
    assert not (run / "eval").exists()
    out, _ = _evaluate(run)  # the unchanged data scores as before
    assert out.record["eval_fingerprint"] == out.record["train_fingerprint"]


def test_fault_finished_run_is_not_skipped_for_other_data_of_the_same_name(
    data_root, finished, tmp_path
):
    results = tmp_path / "res"
    _copy_run(finished, results)
    assert run_training(_cfg(data_root), results, quiet=True)  # same data: skipped
    other = _copy_data(data_root, tmp_path / "o" / "syn", drop=2)
    with pytest.raises(DatasetChanged, match="finished run .* other data of the same name"):
        run_training(_cfg(other), results, quiet=True)


def test_fault_report_keys_runs_by_dataset_content(data_root, finished, tmp_path):
    from bench.analysis.runs import aggregate_runs, find_runs

    results = tmp_path / "res"
    a = _copy_run(finished, results)
    b = a.parent / "seed43"
    shutil.copytree(a, b)
    for name in ("metrics.json", "config.json"):
        rec = json.loads((b / name).read_text())
        rec["seed"] = 43
        if "data_identity" in rec:
            rec["data_identity"]["fingerprint"] = "0" * 16  # trained on other data called "syn"
        (b / name).write_text(json.dumps(rec))
    man = json.loads((b / "manifest.json").read_text())
    man["dataset"]["fingerprint"] = "0" * 16  # trained on other data called "syn"
    (b / "manifest.json").write_text(json.dumps(man))
    runs = find_runs(results).sort_values("seed")
    fp = json.loads((a / "manifest.json").read_text())["dataset"]["fingerprint"]
    assert list(runs["dataset_fingerprint"]) == [fp, "0" * 16]
    assert list(runs["dataset"]) == [f"syn@{fp[:8]}", "syn@00000000"]
    agg = aggregate_runs(results)
    assert list(agg["n"]) == [1, 1]  # two datasets, never averaged as two seeds
    assert len(set(agg["dataset"])) == 2


# --------------------------------------------------------------------------- items 6, 11, 12


def test_fault_report_names_damaged_per_image_files(finished, tmp_path, caplog):
    from bench.analysis.report.load import load_results

    results = tmp_path / "res"
    a = _copy_run(finished, results)
    csv = a / "per_image.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:3]) + "\n")  # truncated
    with caplog.at_level("WARNING", logger="bench.analysis.report"):
        res = load_results(results)
    assert len(res.runs) == 1  # the row from metrics.json still computes
    assert any(str(csv) in p and "truncated" in p for p in res.problems), res.problems
    assert str(csv) in caplog.text
    df = pd.read_csv(finished / "per_image.csv")
    df.loc[0, "dice"] = np.nan
    df.to_csv(csv, index=False)
    assert any("NaN for 1 image(s)" in p for p in load_results(results).problems)
    csv.unlink()
    assert any(f"{csv}: missing" in p for p in load_results(results).problems)
    from bench.analysis.report.write import write_report

    readme = write_report(results, progress=False).readme.read_text()
    assert "## Inputs left out or damaged" in readme and f"{csv}: missing" in readme


def test_fault_report_names_failed_runs_and_refuses_a_copied_seed(finished, tmp_path):
    from bench.analysis.report.load import ReportInputError, load_results

    results = tmp_path / "res"
    a = _copy_run(finished, results)
    failed = a.parent / "seed7"
    failed.mkdir()
    (failed / "metrics.json").write_text(json.dumps({"status": "failed", "reason": "NaN at 3"}))
    (a.parent / "seed8").mkdir()  # stopped before its metrics.json
    res = load_results(results)
    assert len(res.runs) == 1
    text = "\n".join(res.problems)
    assert f"{failed}: failed, not in the tables (NaN at 3)" in text
    assert f"{a.parent / 'seed8'}: unfinished" in text
    shutil.copytree(a, a.parent / "seed99")  # a copy: its metrics.json says seed 42
    with pytest.raises(ReportInputError, match="records seed 42 but its folder is seed99"):
        load_results(results)


def test_fault_concurrent_reports_use_their_own_temp_files(tmp_path, monkeypatch):
    from bench.analysis.report import plots

    names = []
    real = plots.Path.replace

    def spy(self, target):
        names.append(self.name)
        return real(self, target)

    monkeypatch.setattr(plots.Path, "replace", spy)
    fig, ax, _ = plots._figure(2, 2) if hasattr(plots, "_figure") else (None, None, None)
    if fig is None:
        from matplotlib.figure import Figure

        fig = Figure()
    plots._save(fig, tmp_path / "p")
    assert names and all(str(__import__("os").getpid()) in n for n in names)


# --------------------------------------------------------------------------- item 5


def _nan_val_at(monkeypatch, epoch: int) -> None:
    import bench.engine.trainer as trainer

    real = trainer.evaluate_arrays
    n = {"calls": 0}

    def diverging(*a, **kw):
        res = real(*a, **kw)
        n["calls"] += 1
        if n["calls"] == epoch:
            res.loss = float("nan")
        return res

    monkeypatch.setattr(trainer, "evaluate_arrays", diverging)


def test_fault_nan_validation_loss_or_weights_fail_the_run(data_root, tmp_path, monkeypatch):
    results = tmp_path / "res"
    _nan_val_at(monkeypatch, epoch=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite val loss \(nan\) at epoch 2"):
        run_training(_cfg(data_root), results, quiet=True)
    run = _run_dir(results)
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "failed" and "end of epoch 1" in m["reason"]
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 1 and np.isfinite(best["value"])
    monkeypatch.undo()

    import bench.engine.trainer as trainer

    real = trainer._Trainer._train_epoch

    def poisoned(self, stop):
        row = real(self, stop)
        next(self.model.parameters()).data.fill_(float("inf"))
        return row

    monkeypatch.setattr(trainer._Trainer, "_train_epoch", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite weights .* after epoch 1"):
        run_training(_cfg(data_root), tmp_path / "res2", quiet=True)
    assert (
        "no checkpoint was written yet"
        in json.loads((_run_dir(tmp_path / "res2") / "metrics.json").read_text())["reason"]
    )


# --------------------------------------------------------------------------- item 7


def test_fault_evaluate_without_best_checkpoint_says_it_scored_last(data_root, finished, tmp_path):
    run = _copy_run(finished, tmp_path / "res")
    (run / "checkpoints" / "best.pt").unlink()
    out, warned = _evaluate(run)
    rec = out.record
    assert rec["checkpoint"].endswith("last.pt")
    assert any("best.pt is missing: scored" in n for n in rec["notes"])
    assert any("best.pt is missing" in w for w in warned)
    assert rec["checkpoint_epoch"] == 2


# --------------------------------------------------------------------------- items 9, 10, 13, 14


def test_fault_disk_full_log_write_exits_io_error_and_resume_completes_the_log(
    data_root, tmp_path, monkeypatch, capsys
):
    import bench.engine.trainer as trainer

    results = tmp_path / "res"
    real = trainer.write_csv
    n = {"log": 0}

    def full(path, df):
        if Path(path).name == "log.csv":
            n["log"] += 1
            if n["log"] == 2:  # end of epoch 2, after last.pt was saved
                raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")
        return real(path, df)

    monkeypatch.setattr(trainer, "write_csv", full)
    argv = ["train", "--model", "unet", "--data", str(data_root), "--epochs", "2",
            "--batch-size", "4", "--threads", "1", "--device", "cpu",
            "--set", "image_size=32", "--set", "model_kwargs={base_width: 4}",
            "--results", str(results), "--quiet"]  # fmt: skip
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == exitcodes.IO_ERROR == 74, err
    assert "log.csv" in err and "No space left" in err
    run = _run_dir(results)
    assert len(pd.read_csv(run / "log.csv")) == 1
    monkeypatch.undo()
    assert main(argv) == exitcodes.OK
    log = pd.read_csv(run / "log.csv")
    assert list(log["epoch"]) == [1, 2]


def test_fault_cache_build_on_a_full_disk_is_a_named_error(tmp_path, monkeypatch):
    import bench.data.cache as cache
    from bench.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path / "d", n=6, size=(40, 40), seed=1)

    class Usage:
        free = 1000

    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: Usage)
    with pytest.raises(OSError, match="needs about .* MiB, 0 MiB free") as info:
        cache.prepare_data(root, size=32, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert info.value.errno == errno.ENOSPC and exitcodes.is_io_failure(info.value)
    assert not list((tmp_path / "c").glob(".*tmp*"))  # nothing half-built left


def test_fault_damaged_cache_is_detected_and_rebuilt(tmp_path):
    from bench.data.cache import prepare_data
    from bench.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path / "d", n=8, size=(40, 40), seed=1)
    kw = dict(size=32, cache_dir=tmp_path / "c", workers=1, progress=False)
    first = prepare_data(root, **kw)
    want = np.array(first.images("train"))
    npy = first.cache_path / "train_images.npy"
    npy.write_bytes(npy.read_bytes()[:200])  # truncated
    with pytest.warns(UserWarning, match=f"{npy} is missing or truncated"):
        again = prepare_data(root, **kw)
    assert np.array_equal(np.array(again.images("train")), want)
    (again.cache_path / "meta.json").unlink()
    with pytest.warns(UserWarning, match="meta.json is missing"):
        third = prepare_data(root, **kw)
    assert np.array_equal(np.array(third.images("train")), want)


def test_fault_sigterm_during_final_test_scoring_says_so(data_root, tmp_path, monkeypatch, capsys):
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("SIGTERM already has a handler in this process")
    import bench.engine.trainer as trainer

    results = tmp_path / "res"
    real = trainer._Trainer._score_test

    def killed(self):
        signal.raise_signal(signal.SIGTERM)
        return real(self)

    monkeypatch.setattr(trainer._Trainer, "_score_test", killed)
    with pytest.raises(TrainingStopped) as info:
        run_training(_cfg(data_root), results, quiet=True)
    assert info.value.signum == signal.SIGTERM
    assert "during the final test scoring" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    monkeypatch.undo()
    run = run_training(_cfg(data_root), results, quiet=True)
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"


# --------------------------------------------------------------------------- issue 23


def _shared_copy(data_root: Path, run: Path, dst: Path) -> tuple[Path, dict[str, str]]:
    """Another dataset holding copies of three of the run's training images (same ID,
    renamed with the same pixels, renamed and re-encoded smaller) and of one test image,
    plus new images."""
    from PIL import Image

    from bench.data.synthetic import make_synthetic

    cfg = json.loads((run / "config.json").read_text())
    split = json.loads(
        Path(json.loads((run / "manifest.json").read_text())["dataset"]["split_file"]).read_text()
    )
    train = split["train"] if "train" in split else split["splits"]["train"]
    test = split["test"] if "test" in split else split["splits"]["test"]
    make_synthetic(dst, n=6, size=(48, 64), seed=99)
    for p in sorted((dst / "images").iterdir()):
        p.rename(p.with_name("NEW" + p.name))
    for p in sorted((dst / "masks").iterdir()):
        p.rename(p.with_name("NEW" + p.name))
    src = Path(cfg["data"])
    same_id, renamed, reencoded = train[:3]
    shutil.copy(src / "images" / f"{same_id}.jpg", dst / "images" / f"{same_id}.jpg")
    shutil.copy(src / "masks" / f"{same_id}.png", dst / "masks" / f"{same_id}.png")
    shutil.copy(src / "images" / f"{renamed}.jpg", dst / "images" / "COPY_A.jpg")
    shutil.copy(src / "masks" / f"{renamed}.png", dst / "masks" / "COPY_A.png")
    im = Image.open(src / "images" / f"{reencoded}.jpg")
    im.resize((60, 45)).save(dst / "images" / "COPY_B.jpg", quality=80)
    mask = Image.open(src / "masks" / f"{reencoded}.png")
    mask.resize((60, 45), Image.NEAREST).save(dst / "masks" / "COPY_B.png")
    shutil.copy(src / "images" / f"{test[0]}.jpg", dst / "images" / f"{test[0]}.jpg")
    shutil.copy(src / "masks" / f"{test[0]}.png", dst / "masks" / f"{test[0]}.png")
    return dst, {same_id: "id", "COPY_A": "pixel", "COPY_B": "phash"}


def test_fault_cross_dataset_evaluation_excludes_the_runs_own_images(
    data_root, finished, tmp_path, capsys
):
    run = _copy_run(finished, tmp_path / "res")
    other, expected = _shared_copy(data_root, run, tmp_path / "other")
    out, warned = _evaluate(run, data=other, split="all")
    ov = out.record["training_overlap"]
    assert {m["id"]: m["by"] for m in ov["images"]} == expected
    assert ov["n_matched"] == 3 and not ov["kept"] and ov["n_scored"] == 7
    assert out.record["n_images"] == 7  # 10 images, 3 seen in training: the test copy stays
    assert set(expected).isdisjoint(out.result.per_image["image_id"])
    assert len(out.result.per_image) == 7
    assert any("excluded 3 of 10 images of other" in w for w in warned)
    kept, warned = _evaluate(run, data=other, split="all", keep_training_images=True,
                             out=tmp_path / "kept")  # fmt: skip
    assert kept.record["n_images"] == 10 and kept.record["training_overlap"]["kept"]
    assert any("--keep-training-images: 3 of 10" in w for w in warned)
    # the command line says it too
    rc = main(["evaluate", "--run", str(run), "--data", str(other), "--split", "all",
               "--device", "cpu", "--no-hd95", "--quiet", "--results", str(tmp_path / "cli")])  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "3 image(s) the run trained or was selected on: excluded" in cap.out
    assert "excluded 3 of 10 images" in cap.err


@pytest.mark.slow
def test_fault_mini_run_scored_on_isic2017_256_leaves_out_its_319_images(shared_dir, tmp_path):
    """The real case of issue 23: a run on isic2017-mini scored on isic2017-256."""
    mini, full = shared_dir / "data" / "isic2017-mini", shared_dir / "data" / "isic2017-256"
    if not (mini.is_dir() and full.is_dir()):
        pytest.skip("isic2017-mini / isic2017-256 not in ../shared/data")
    from bench.data.cache import data_identity
    from bench.engine.overlap import training_overlap

    cfg = {"data": str(mini), "split_seed": 42, "val_fraction": 0.1, "test_fraction": 0.3,
           "split_mode": "auto", "eval_split": "test", "split_file": None}  # fmt: skip
    ident = data_identity(mini)
    recorded = {k: ident[k] for k in ("fingerprint", "split_hash")}
    other = data_identity(full)

    class Prepared:  # only what training_overlap reads
        index = other["index"]
        root = full
        cache_path = other["cache_root"] / "x"

    ids = [i for v in other["split_ids"].values() for i in v]
    matches = training_overlap(cfg, recorded, Prepared, ids)
    seen = {i for k, v in ident["split_ids"].items() if k != "test" for i in v}
    assert len(seen) == 319
    assert {m["match"] for m in matches.values()} == seen  # every one of them found
    assert sum(m["by"] == "id" for m in matches.values()) == 319
    assert not set(ident["split_ids"]["test"]) & set(matches)  # its test images stay
    # (plus near copies under other ISIC IDs: 4 at pHash distance 26-38 on 2026-12-07)


# --------------------------------------------------------------------------- items 16-19


def test_fault_masks_stored_as_0_1_train_with_the_hinted_binarize(data_root, tmp_path, capsys):
    from PIL import Image

    data = _copy_data(data_root, tmp_path / "syn")
    for m in (data / "masks").iterdir():
        Image.fromarray((np.asarray(Image.open(m)) > 127).astype(np.uint8)).save(m)
    argv = ["train", "--model", "unet", "--data", str(data), "--epochs", "1",
            "--batch-size", "4", "--threads", "1", "--device", "cpu",
            "--set", "image_size=32", "--set", "model_kwargs={base_width: 4}",
            "--results", str(tmp_path / "res"), "--quiet"]  # fmt: skip
    assert main(argv) == exitcodes.USAGE
    assert "--binarize" in capsys.readouterr().err  # the hint names the option...
    assert main([*argv, "--binarize"]) == exitcodes.OK  # ...which exists and works
    run = _run_dir(tmp_path / "res", epochs=1)
    assert json.loads((run / "config.json").read_text())["binarize"] is True
    assert (
        _cfg(data).config_hash
        == TrainConfig.from_recipe("fair", data=str(data), binarize=False, **SETTINGS).config_hash
    )  # runs recorded before the field keep their hash
    rc = main(["evaluate", "--run", str(run), "--device", "cpu", "--no-hd95", "--quiet"])
    assert rc == 0, capsys.readouterr().err  # scored with the run's binarize


def test_fault_empty_test_split_fails_before_training(data_root, tmp_path):
    with pytest.raises(ValueError, match=r"the test split \(eval_split\) is empty"):
        data = _copy_data(data_root, tmp_path / "syn")  # its own split file
        run_training(_cfg(data, test_fraction=0.0), tmp_path / "res", quiet=True)
    assert not (_run_dir(tmp_path / "res") / "checkpoints").exists()


def test_fault_option_and_set_that_disagree_are_refused(data_root, tmp_path, capsys):
    rc = main(["train", "--model", "unet", "--data", str(data_root), "--epochs", "2",
               "--set", "epochs=3", "--results", str(tmp_path), "--quiet"])  # fmt: skip
    assert rc == exitcodes.USAGE
    assert "--epochs 2 and --set epochs=3 disagree" in capsys.readouterr().err
    rc = main(["train", "--model", "unet", "--data", str(data_root), "--set", "lr=1e38",
               "--results", str(tmp_path), "--quiet"])  # fmt: skip
    assert rc == exitcodes.USAGE
    assert "lr=1e+38: must be finite and <= 1" in capsys.readouterr().err


def test_fault_resume_with_other_threads_warns(data_root, tmp_path, monkeypatch):
    results = tmp_path / "res"
    _stop_in_epoch_2(monkeypatch)
    with pytest.raises(TrainingStopped):
        run_training(_cfg(data_root), results, quiet=True)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="saved with 1 torch threads, resumed with 2"):
        run_training(_cfg(data_root, threads=2), results, quiet=True)


def test_fault_evaluate_into_a_file_fails_before_scoring(finished, tmp_path, monkeypatch):
    import bench.engine.evaluate as ev

    run = _copy_run(finished, tmp_path / "res")
    target = tmp_path / "taken"
    target.write_text("x")
    monkeypatch.setattr(ev, "evaluate_split", lambda *a, **k: pytest.fail("scored anyway"))
    with pytest.raises(ValueError, match="exists and is not a folder"):
        _evaluate(run, out=target)


def test_fault_non_ascii_names_and_a_bad_data_folder(tmp_path):
    from bench.engine.config import dataset_label

    assert dataset_label(tmp_path / "isic 2017 ü") == "isic-2017-ü"
    assert dataset_label(tmp_path / "ISIC_2017 mini") == "isic-2017-mini"  # ASCII: unchanged
    bad = tmp_path / "nothing here"
    bad.mkdir()
    with pytest.raises(Exception, match="nothing here"):
        run_training(_cfg(bad), tmp_path / "res", quiet=True)
    assert not list((tmp_path / "res").rglob("seed*"))  # no empty run folder left


def test_fault_rows_of_this_module_are_in_the_matrix():
    import re

    text = (Path(__file__).resolve().parents[1] / "DEVELOPING.md").read_text(encoding="utf-8")
    section = text.split("## Fault matrix", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`tests/test_faults_provenance\.py::(test_\w+)`", section)
    here = {n for n in globals() if n.startswith("test_fault_")}
    assert sorted(named) == sorted(here - {"test_fault_rows_of_this_module_are_in_the_matrix"})
