"""segbench paper-gap: each measured cause of a paper-vs-measured difference, by hand on
small inputs, then end to end on a tiny trained run (no ../shared needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from run_fixtures import tiny_unet_config

from bench.analysis.paper_gap import (
    leak_bound,
    paired_pooled_difference,
    pooled_dsc,
    random_split_leaks,
    sampling_interval,
    selection_effect,
)
from bench.analysis.report.gap import gap_tables, gap_verdict, load_gaps
from bench.analysis.report.inventory import unknown_files
from bench.analysis.report.load import ReportInputError
from bench.cli import main
from bench.data.synthetic import make_synthetic
from bench.engine.train import run_training


def _counts(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tp = rng.integers(200, 800, n)
    return pd.DataFrame(
        {
            "image_id": [f"I{i:03d}" for i in range(n)],
            "tp": tp,
            "fp": rng.integers(0, 150, n),
            "fn": rng.integers(0, 150, n),
        }
    )


def test_sampling_interval_brackets_the_value_and_narrows_with_more_images():
    small, large = sampling_interval(_counts(40)), sampling_interval(_counts(1000))
    for s in (small, large):
        lo, hi = s["interval_pp"]
        assert lo < 0 < hi
    width = lambda s: s["interval_pp"][1] - s["interval_pp"][0]  # noqa: E731
    assert width(large) < width(small) / 3  # ~ 1/sqrt(25) = 1/5 in expectation
    c = _counts(40)
    assert small["dsc"] == pytest.approx(
        100 * 2 * c.tp.sum() / (2 * c.tp.sum() + c.fp.sum() + c.fn.sum())
    )


def test_paired_difference_of_the_same_scores_is_zero_and_of_a_shift_its_size():
    a = _counts(60)
    same = paired_pooled_difference(a, a.copy())
    assert same["difference_pp"] == 0 and same["interval_pp"] == [0, 0]
    worse = a.assign(fn=a["fn"] + 50)  # every image misses 50 more pixels
    d = paired_pooled_difference(a, worse.iloc[::-1])  # matched by id, not by row order
    want = 100 * (pooled_dsc(a.tp, a.fp, a.fn) - pooled_dsc(worse.tp, worse.fp, worse.fn))
    assert d["difference_pp"] == pytest.approx(want) and want > 0
    assert d["interval_pp"][0] > 0  # a shift in every image: the interval excludes 0
    with pytest.raises(ValueError, match="scored both ways"):
        paired_pooled_difference(a.iloc[:1], a.iloc[1:])
    with pytest.raises(ValueError, match="confusion counts"):
        sampling_interval(a.drop(columns="fp"))


def test_selection_effect_reads_the_selected_and_last_validated_epochs():
    log = pd.DataFrame(
        {"epoch": [1, 2, 3, 4], "test_dsc": [0.80, np.nan, 0.86, 0.84], "loss": [1, 1, 1, 1]}
    )
    sel = selection_effect(log, best_epoch=3)
    assert (sel["selected_epoch"], sel["last_epoch"], sel["best_dsc_epoch"]) == (3, 4, 3)
    assert sel["effect_pp"] == pytest.approx(2.0)
    assert sel["validated_epochs"] == [1, 3, 4]
    with pytest.raises(ValueError, match="epoch 2 was not validated"):
        selection_effect(log, best_epoch=2)
    with pytest.raises(ValueError, match="no epoch / val_dsc"):
        selection_effect(log, best_epoch=3, split="val")


def test_random_split_leaks_match_the_binomial_expectation():
    ids = [f"I{i:04d}" for i in range(1000)]
    pairs = [(ids[2 * k], ids[2 * k + 1]) for k in range(100)]  # 100 pairs of copies
    got = random_split_leaks(ids, [*pairs, ("not-in-pool", ids[500])], draws=400, seed=1)
    # a pair leaks exactly one test image when one copy is drawn into test: 2 p (1 - p)
    assert got["leaked_test_images_mean"] == pytest.approx(100 * 2 * 0.3 * 0.7, rel=0.08)
    assert got["groups"] == 100 and got["images_in_groups"] == 200 and got["n_test"] == 300
    assert random_split_leaks(ids, [], draws=10)["leaked_test_images_mean"] == 0


def test_leak_bound_makes_the_worst_images_with_copies_perfect():
    per = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "tp": [90, 90, 90], "fp": [10, 40, 0], "fn": [0, 20, 5]}
    )
    got = leak_bound(per, ["a", "b"], leaked=0.4)  # one image, the worse of a and b: b
    fixed = pooled_dsc([90, 110, 90], [10, 0, 0], [0, 0, 5])
    assert got["images_made_perfect"] == 1
    assert got["bound_pp"] == pytest.approx(100 * (fixed - pooled_dsc(per.tp, per.fp, per.fn)))
    assert leak_bound(per, [], leaked=3)["bound_pp"] == 0


def _upscaled_copy(src: Path, dst: Path, factor: int = 3) -> Path:
    """The same images at ``factor`` x their size: a "full-resolution" folder."""
    for path in src.rglob("*"):
        if path.is_file():
            out = dst / path.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            im = Image.open(path)
            mask = path.parent.name == "masks"
            big = im.resize(
                (im.width * factor, im.height * factor),
                Image.NEAREST if mask else Image.BICUBIC,
            )
            big.save(out, **({} if mask else {"quality": 95}))
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("gap")
    # named like an ISIC 2017 folder: UNet's registry entry reports a DSC for isic2017
    data = make_synthetic(base / "isic2017-syn", n=30, size=(48, 64), seed=4)
    cfg = tiny_unet_config(data, recipe="paper", epochs=3, val_every=1)  # selects on test
    return run_training(cfg, base / "results", quiet=True), _upscaled_copy(data, base / "full")


def test_an_ablation_run_is_scored_on_the_same_images(trained, tmp_path, capsys):
    run, _ = trained
    data = json.loads((run / "config.json").read_text())["data"]
    cfg = tiny_unet_config(data, recipe="paper-fixed-angle", epochs=3, val_every=1)
    other = run_training(cfg, tmp_path / "abl", quiet=True)
    results = tmp_path / "results"
    assert main(["paper-gap", str(run), "--ablation", str(other), "--results", str(results),
                 "--resamples", "200", "--draws", "5", "--quiet"]) == 0  # fmt: skip
    assert "ablation (rotation per-sample -> fixed)" in capsys.readouterr().out
    (path,) = results.glob("paper-gap/*/*.json")
    abl = json.loads(path.read_text())["causes"]["ablation"]
    assert abl["differs_in"] == {"rotation": ["per-sample", "fixed"]}
    mine = pd.read_csv(run / "per_image.csv")  # written with the counts by this code
    theirs = pd.read_csv(other / "per_image.csv")
    want = 100 * (
        pooled_dsc(theirs.tp, theirs.fp, theirs.fn) - pooled_dsc(mine.tp, mine.fp, mine.fn)
    )
    assert abl["difference_pp"] == pytest.approx(want)
    assert set(abl["dsc_by_epoch"]) == {"run", "ablation"}
    assert list(abl["dsc_by_epoch"]["ablation"]) == ["1", "2", "3"]
    rows = gap_tables(load_gaps(results))["unet"]
    assert "ablation: rotation per-sample → fixed" in set(rows["cause"])
    # the run itself is no ablation; several runs with one ablation are refused
    assert main(["paper-gap", str(run), "--ablation", str(run), "--results", str(results),
                 "--quiet"]) == 1  # fmt: skip
    assert "the run's own configuration" in capsys.readouterr().out
    assert main(["paper-gap", str(run), str(other), "--ablation", str(other), "--quiet"]) == 2
    assert "give one RUN_DIR" in capsys.readouterr().err


def test_paper_gap_end_to_end_on_a_tiny_run(trained, tmp_path, capsys):
    run, full = trained
    results = tmp_path / "results"
    assert main(["paper-gap", str(run), "--full-res", str(full), "--results", str(results),
                 "--resamples", "200", "--draws", "20", "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    files = list(results.glob("paper-gap/*/*.json"))
    assert len(files) == 1 and str(files[0]) in out
    rec = json.loads(files[0].read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    # the re-scored test split gives the run's own DSC back
    assert rec["measured_dsc"] == pytest.approx(100 * metrics["test"]["dsc"], abs=1e-9)
    c = rec["causes"]
    assert c["test_sampling"]["n_images"] == metrics["test"]["n_images"]
    # selection on test: from the run's log, the selected epoch against the last one
    log = pd.read_csv(run / "log.csv").dropna(subset=["test_dsc"]).set_index("epoch")
    want = 100 * (log.loc[metrics["best_epoch"], "test_dsc"] - log["test_dsc"].iloc[-1])
    assert c["selection"]["effect_pp"] == pytest.approx(want)
    # data preparation: exactly the run's test images, found in the upscaled copy
    prep = c["data_preparation"]
    assert prep["n_images"] == metrics["test"]["n_images"]
    assert prep["image_mean_abs_difference"] < 8 and prep["mask_agreement_dsc"] > 80
    assert any("excluded" in n for n in rec["notes"])  # the run's train/val images left out
    assert c["seeds"] == {"seeds": [metrics["seed"]], "std_pp": None}
    assert rec["paper"] == {"dataset": "isic2017", "dsc": 86.99}  # UNet, as reported
    assert rec["difference_pp"] == pytest.approx(rec["measured_dsc"] - 86.99)
    # the report reads it: a table row per cause and one verdict per run
    recs = load_gaps(results)
    table = gap_tables(recs)["unet"]
    assert list(table["cause"]) == ["test sampling", "model selection", "data preparation",
                                    "duplicate leak (authors' split)", "training seed"]  # fmt: skip
    assert "measured" in gap_verdict(recs[0])
    assert unknown_files(results, check_report_folders=False) == []


def test_paper_gap_refuses_a_run_it_cannot_reproduce(trained, tmp_path, capsys):
    run, _ = trained
    bad = tmp_path / "run"
    for f in run.iterdir():
        if f.is_file():
            (bad / f.name).parent.mkdir(parents=True, exist_ok=True)
            (bad / f.name).write_bytes(f.read_bytes())
    metrics = json.loads((bad / "metrics.json").read_text())
    metrics["test"]["dsc"] += 0.05  # a recorded DSC these weights do not give
    (bad / "metrics.json").write_text(json.dumps(metrics))
    (bad / "checkpoints").mkdir()
    (bad / "checkpoints" / "best.pt").write_bytes((run / "checkpoints" / "best.pt").read_bytes())
    assert main(["paper-gap", str(bad), "--results", str(tmp_path / "r"), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "not the run's" in out and not (tmp_path / "r").exists()
    assert main(["paper-gap", str(tmp_path / "nothing"), "--quiet"]) == 1
    assert "not a finished segbench run" in capsys.readouterr().out
    metrics["test"]["dsc"] -= 0.05
    metrics["dataset"] = "syn"  # no paper figure for this dataset: nothing to measure against
    (bad / "metrics.json").write_text(json.dumps(metrics))
    assert main(["paper-gap", str(bad), "--results", str(tmp_path / "r"), "--quiet"]) == 1
    assert "reports no DSC for syn" in capsys.readouterr().out


def test_a_file_that_is_not_a_gap_record_is_named(tmp_path):
    path = tmp_path / "paper-gap" / "isic2017-256" / "x.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ReportInputError, match="x.json: not a segbench-paper-gap/1 record"):
        load_gaps(tmp_path)


REPO = Path(__file__).resolve().parents[1]


def test_a_committed_record_is_what_the_code_measures(shared_dir):
    """The committed MALUNet paper-gap record, measured again from the committed run, its
    published weights and ../shared: every cause comes out the same."""
    from bench.jobs.paper_gap import measure_gap

    path = REPO / "results" / "paper-gap" / "isic2017-256" / "malunet-fair-e10-s42.json"
    if not path.is_file():
        pytest.skip(f"{path} is not committed")
    rec = json.loads(path.read_text())
    args = rec["command"].split()
    opt = {k: args[args.index(k) + 1] for k in ("--full-res", "--resamples", "--draws")}
    again = measure_gap(
        REPO / rec["run"],
        data=shared_dir / "data" / rec["dataset"],
        full_res=shared_dir / "data" / Path(opt["--full-res"]).name,
        resamples=int(opt["--resamples"]),
        draws=int(opt["--draws"]),
        log=lambda _: None,
    )
    assert again["measured_dsc"] == pytest.approx(rec["measured_dsc"], abs=1e-9)
    for cause, got in again["causes"].items():
        want = rec["causes"][cause]
        for key, value in got.items():
            if key == "folder":
                continue
            assert value == pytest.approx(want[key], abs=1e-9), (cause, key)
