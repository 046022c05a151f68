"""Claims the report derives from numbers: limiter, flags, fingerprint pooling, protocols,
paper vs measured, files no command writes, the README's generated block."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from run_fixtures import image_ids, write_run

from bench.analysis import stats
from bench.analysis.report import claims, headline, inventory, protocols
from bench.analysis.report.accuracy import accuracy_summary
from bench.analysis.runinfo import UNRECORDED, lr_end_fraction, with_run_info
from bench.analysis.runs import find_runs
from bench.cli import main

# ----------------------------------------------------------------- derived words


def test_limiter_is_named_from_both_bounds() -> None:
    # MALUNet eager on the AVX-512 host: 9.99 GFLOP/s, peak 229.6 GFLOP/s, 35.4 GB/s x 3.07
    row = {
        "achieved_gflops": 9.99,
        "peak_tflops": 0.2296,
        "peak_gbps": 35.43,
        "intensity_flop_per_byte": 3.069,
    }
    text = claims.limiter_text(row)
    assert text.startswith("overhead-bound") and "9% of memory bound" in text
    assert "memory-bound" not in text
    # UNet: 166.9 of 229.6 GFLOP/s, intensity 59.6: compute is the tight bound
    unet = {**row, "achieved_gflops": 166.9, "intensity_flop_per_byte": 59.55}
    assert claims.limiter_text(unet) == "compute-bound (73% of its bound)"
    # onnxruntime MALUNet: 27% of the memory bound
    assert claims.limiter_text({**row, "achieved_gflops": 29.1}).startswith("memory-bound (27%")
    assert claims.limiter_text({"achieved_gflops": 5.0}) == ""


def test_time_capped_and_noisy_train_steps_are_marked() -> None:
    capped = {"reason": "max time 3 s reached after 3 of 5 iterations", "noisy": True}
    note = claims.train_step_note(capped)
    assert "time-capped" in note and "3 of 5" in note and "noisy" in note
    assert claims.train_step_note({"reason": float("nan"), "noisy": False}) == ""


def test_thop_missing_parameters_are_flagged() -> None:
    note = claims.thop_note(5_839_309, 2_283_377)  # EfficientNet-B0-UNet
    assert "2,283,377 of 5,839,309" in note
    assert claims.thop_note(7_765_985, 7_765_985) == ""
    assert claims.thop_note(float("nan"), 1) == ""


def test_lr_at_the_end_of_a_cosine_schedule() -> None:
    cfg = {"lr": 1e-3, "eta_min": 1e-5, "t_max": 50}
    # 20 of 50 epochs: (1e-5 + 0.99e-3 * (1 + cos(0.4 pi)) / 2) / 1e-3
    expect = (1e-5 + 0.99e-3 * (1 + math.cos(0.4 * math.pi)) / 2) / 1e-3
    assert lr_end_fraction(cfg, 20) == pytest.approx(expect)
    assert round(lr_end_fraction(cfg, 20), 2) == 0.66
    # T_max = the budget (recorded effective T_max wins over the config's)
    assert lr_end_fraction(cfg, 20, t_max=20) == pytest.approx(0.01)
    assert math.isnan(lr_end_fraction({}, 20))


# ------------------------------------------------------------ runs: fixtures


def _edit_metrics(run: Path, **fields: Any) -> None:
    path = run / "metrics.json"
    m = json.loads(path.read_text())
    m.update(fields)
    path.write_text(json.dumps(m))


def _runs(root: Path, model: str, dataset: str, seeds: dict[int, dict[str, Any]], **kw: Any):
    rng = np.random.default_rng(abs(hash((model, dataset))) % 2**32)
    ids = image_ids(20)
    for seed, fields in seeds.items():
        dice = np.clip(rng.uniform(0.7, 0.95, 20), 0, 1)
        commit = fields.pop("commit", "0123456789abcdef")
        run = write_run(root, model, seed, dice, ids, dataset=dataset, commit=commit, **kw)
        _edit_metrics(run, **fields)


def test_seeds_pool_only_within_one_fingerprint(tmp_path: Path) -> None:
    _runs(tmp_path, "malunet", "isic2017-256", {
        1: {"code_fingerprint": "aaaa", "best_epoch": 3, "train_time_total_s": 3600,
            "time_to_99pct_best_s": 1800},
        2: {"code_fingerprint": "aaaa", "best_epoch": 2, "train_time_total_s": 7200,
            "time_to_99pct_best_s": 3600},
        3: {"code_fingerprint": "bbbb", "best_epoch": 3},
    })  # fmt: skip
    # runs older than the fingerprint, from two commits: pooled, and the row says so
    _runs(tmp_path, "egeunet", "isic2017-256", {
        1: {"commit": "1111111aaaa"}, 2: {"commit": "2222222bbbb"},
    })  # fmt: skip
    acc = accuracy_summary(find_runs(tmp_path)).set_index(["model", "fingerprint"])
    assert acc.loc[("malunet", "aaaa"), "n_seeds"] == 2
    assert acc.loc[("malunet", "bbbb"), "n_seeds"] == 1
    assert acc.loc[("malunet", "aaaa"), "code"] == "fingerprint aaaa"
    assert acc.loc[("malunet", "aaaa"), "last_epoch_picked_text"] == "1 of 2"
    # training time across resumes, from metrics.json; time to 99% of the best beside it
    assert acc.loc[("malunet", "aaaa"), "train_time_text"] == (
        "1.50 h/seed ± 0.71, 99% of best after 0.75 h"
    )
    ege = acc.loc[("egeunet", UNRECORDED)]
    assert ege["n_seeds"] == 2 and "mixed" in ege["code"]
    assert "1111111" in ege["code"] and "2222222" in ege["code"]
    # the papers' five metrics and the share of poor images are there
    for col in ("dsc_mean", "miou_mean", "acc_mean", "sen_mean", "spe_mean"):
        assert math.isfinite(ege[col])
    runs = with_run_info(find_runs(tmp_path))
    poor = runs.loc[runs["model"] == "egeunet", "dice_below_08"]
    per_image = [
        (pd.read_csv(Path(d) / "per_image.csv")["dice"] < 0.8).mean()
        for d in runs.loc[runs["model"] == "egeunet", "run_dir"]
    ]
    assert poor.tolist() == pytest.approx(per_image)
    assert ege["dice_below_08_mean"] == pytest.approx(100 * np.mean(per_image))


def test_compare_refuses_to_pool_fingerprints(tmp_path: Path) -> None:
    _runs(
        tmp_path,
        "malunet",
        "syn",
        {1: {"code_fingerprint": "aaaa"}, 2: {"code_fingerprint": "bbbb"}},
    )
    _runs(tmp_path, "unet", "syn", {1: {}, 2: {}})
    with pytest.raises(ValueError, match="code fingerprints"):
        stats.pairwise_comparisons(tmp_path, "syn", write=False, n_resamples=99)


def test_schedule_note_says_under_trained(tmp_path: Path) -> None:
    _runs(
        tmp_path, "malunet", "isic2017-mini", {1: {"best_epoch": 3}, 2: {"best_epoch": 1}}, t_max=50
    )
    runs = with_run_info(find_runs(tmp_path))
    note = protocols.schedule_note(runs)
    assert note.startswith("under-trained") and "1 of 2 selected their last epoch" in note
    assert f"{runs['lr_end_fraction'].iloc[0]:.2f}x its peak" in note


# ------------------------------------------------------------ protocols, paper


def test_protocols_and_paper_vs_measured(tmp_path: Path) -> None:
    _runs(tmp_path, "malunet", "isic2017-256", {1: {}, 2: {}}, image_size=256)
    _runs(tmp_path, "malunet", "isic2017-mini", {1: {}})
    for man in (tmp_path / "runs" / "isic2017-256").rglob("manifest.json"):
        m = json.loads(man.read_text())
        m["dataset"].update(duplicate_leaks=[], split_counts={"test": 20, "train": 40})
        man.write_text(json.dumps(m))
    runs = with_run_info(find_runs(tmp_path))
    (line,) = protocols.protocol_lines(runs, smoke=False)
    assert line.startswith("- `isic2017-256`: train 40 / test 20; 2 finished run(s)")
    assert "no duplicate-image group crosses their splits" in line
    acc = accuracy_summary(runs)
    head, smoke = protocols.split_protocols(acc)
    assert set(head["dataset"]) == {"isic2017-256"} and set(smoke["dataset"]) == {"isic2017-mini"}
    tables = protocols.paper_vs_measured(acc, runs)
    mal = tables["malunet"].set_index("metric")
    assert list(mal.index) == ["mIoU", "DSC", "Acc", "Spe", "Sen"]
    assert set(mal["dataset"]) == {"isic2017-256"}  # never the smoke protocol
    assert mal.loc["DSC", "paper"] == 88.13
    row = acc[acc["dataset"] == "isic2017-256"].iloc[0]
    assert mal.loc["DSC", "difference"] == pytest.approx(row["dsc_mean"] - 88.13)
    assert mal.loc["DSC", "difference_text"] == f"{row['dsc_mean'] - 88.13:+.2f}"
    assert "recompressed" in mal.loc["DSC", "note"]  # the dataset's own caveat
    assert mal.loc["Sen", "measured_mean"] == pytest.approx(80.0)  # fixture sen 0.8
    assert "val split" in mal.loc["DSC", "note"]  # selection differs from the authors'
    assert "rotation angle" not in mal.loc["DSC", "note"]
    # an ablation with the authors' one rotation angle per run says so
    for cfg_path in (tmp_path / "runs" / "isic2017-256").rglob("config.json"):
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "rotation": "fixed"}))
    runs = with_run_info(find_runs(tmp_path))
    note = protocols.paper_vs_measured(accuracy_summary(runs), runs)["malunet"]["note"].iloc[0]
    assert "one rotation angle per run" in note
    # EGE-UNet has no run: the paper's figures with "not measured yet"
    ege = tables["egeunet"]
    assert set(ege["note"]) == {"not measured yet on the headline protocol"}


# ------------------------------------------------------------ files, README block


def test_unknown_and_stale_result_files_are_listed(tmp_path: Path) -> None:
    _runs(tmp_path, "malunet", "syn", {1: {}})
    (tmp_path / "stats").mkdir()
    old = tmp_path / "stats" / "syn_fair-e20_pairwise"
    old.with_suffix(".csv").write_text("model_a,significant\nx,True\n")
    old.with_suffix(".json").write_text(json.dumps({"command": "old"}))
    (tmp_path / "notes.txt").write_text("hand-made")
    found = inventory.unknown_files(tmp_path)
    assert any(f.startswith("notes.txt: no segbench command") for f in found)
    assert any(
        f.startswith("stats/syn_fair-e20_pairwise.csv: written under an older") for f in found
    )
    assert not any(f.startswith("runs/") for f in found)
    # a stats file written under the current rule is known
    old.with_suffix(".json").write_text(json.dumps({"rule": stats.STATS_RULE}))
    assert not any(f.startswith("stats/") for f in inventory.unknown_files(tmp_path))


def test_update_readme_rewrites_only_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{headline.BEGIN}\nold 1.23\n{headline.END}\noutro\n")
    block = f"{headline.BEGIN}\nnew\n{headline.END}"
    assert headline.update_readme(readme, block) == readme
    assert readme.read_text() == f"intro\n{block}\noutro\n"
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers")
    assert headline.update_readme(plain, block) is None and plain.read_text() == "no markers"
    plain.write_text(f"{headline.END}\n{headline.BEGIN}")
    with pytest.raises(ValueError, match="both markers"):
        headline.update_readme(plain, block)


def test_comparison_lines_name_the_order() -> None:
    cmp = pd.DataFrame([{
        "model_a": "egeunet", "model_b": "malunet", "dataset": "d", "level": "over seeds",
        "mean_diff": -0.0057, "ci_low": -0.0177, "ci_high": 0.0062, "p_value": 0.247,
        "p_holm": 1.0, "significant": False, "claim": "not significant",
    }])  # fmt: skip
    text = "\n".join(headline._comparison_lines(cmp))
    assert "egeunet − malunet (A − B" in text and "-0.57 pp" in text
    assert "[-1.77, +0.62]" in text and "p 0.247, Holm p 1" in text


def test_report_keeps_protocols_apart_and_fails_strict_on_unknown_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    res = tmp_path / "results"
    _runs(res, "malunet", "isic2017-256", {1: {"code_fingerprint": "f00d"}})
    _runs(res, "unet", "isic2017-256", {1: {"code_fingerprint": "f00d"}})
    _runs(res, "egeunet", "isic2017-256", {1: {"commit": "1111111a"}, 2: {"commit": "2222222b"}})
    _runs(res, "malunet", "isic2017-mini", {1: {}}, t_max=50)
    (tmp_path / "README.md").write_text(f"# x\n{headline.BEGIN}\n{headline.END}\n")
    (res / "stray.csv").write_text("a\n1\n")
    args = ["report", "--results", str(res), "--quiet"]
    assert main([*args, "--strict"]) == 1
    err = capsys.readouterr().err
    assert "WARNING" in err and "stray.csv" in err
    (res / "stray.csv").unlink()
    assert main(args) == 0
    head = pd.read_csv(res / "tables" / "accuracy.csv").dropna(subset=["dataset"])
    smoke = pd.read_csv(res / "tables" / "accuracy-smoke.csv").dropna(subset=["dataset"])
    assert set(head["dataset"]) == {"isic2017-256"} and set(smoke["dataset"]) == {"isic2017-mini"}
    assert not any(c.startswith("paper") for c in smoke.columns)  # no paper beside smoke
    codes = head.set_index("model")["code"]
    assert codes["malunet"] == codes["unet"] == "fingerprint f00d"
    assert codes["egeunet"].startswith("unrecorded (mixed")
    for col in ("Acc pooled (%)", "Sen pooled (%)", "Spe pooled (%)", "images Dice < 0.8 (%)"):
        assert col in head.columns
    cmp = pd.read_csv(res / "tables" / "comparisons.csv").set_index(["model A", "model B"])
    assert (
        "egeunet's seeds ran different commits or hosts" in cmp.loc[("egeunet", "malunet"), "note"]
    )
    text = (res / "README.md").read_text()
    assert "## Accuracy: headline protocol" in text and "## Paper vs measured: malunet" in text
    assert "robustness to colour and contrast change" in text or "external" not in text
    block = (tmp_path / "README.md").read_text()
    assert "**Smoke protocol** (`isic2017-mini`" in block and "under-trained" in block


def test_paper_figures_stand_beside_the_headline_protocol_only(tmp_path: Path) -> None:
    """Issue 27: the smoke protocol's Pareto figures and number tables printed "paper 88.13"
    beside isic2017-mini scores; the papers' figures belong beside isic2017-256 only."""
    from bench.analysis.report.write import write_report

    both = tmp_path / "both"
    seeds = {1: {}, 2: {}, 3: {}}
    _runs(both, "malunet", "isic2017-256", {k: dict(v) for k, v in seeds.items()})
    _runs(both, "malunet", "isic2017-mini", {k: dict(v) for k, v in seeds.items()}, t_max=50)
    out = write_report(both, progress=False)
    svg = {p.name: p.read_text() for p in out.plots if p.name.startswith("pareto-") and p.suffix == ".svg"}  # fmt: skip
    head = [t for n, t in svg.items() if n.endswith("-isic2017-256.svg")]
    smoke = [t for n, t in svg.items() if n.endswith("-isic2017-mini.svg")]
    assert head and smoke
    # matplotlib writes each text as a comment beside its glyphs: the table's cells are readable
    assert all("paper 88.13" in t and "Reported by the papers" in t for t in head)
    assert not any("paper 88.13" in t or "Reported by the papers" in t for t in smoke)
    smoke_caps = [c for g, _, c in out.figures if g == "accuracy" and "isic2017-mini" in c]
    assert smoke_caps and not any("Reported by the papers" in c for c in smoke_caps)

    # only the smoke protocol measured: its scores head the summary, without paper columns
    only = tmp_path / "only-smoke"
    _runs(only, "malunet", "isic2017-mini", {k: dict(v) for k, v in seeds.items()}, t_max=50)
    write_report(only, progress=False)
    summary = (only / "tables" / "summary.md").read_text()
    assert "isic2017-mini DSC pooled (%)" in summary and "paper DSC" not in summary


def test_readme_keeps_a_test_selected_paper_run_out_of_the_fair_table(tmp_path: Path) -> None:
    """One table per protocol: a paper-recipe run, selected on test, is printed in a table
    of its own after the fair budget's, never ranked among the fair rows."""
    res = tmp_path / "results"
    _runs(res, "malunet", "isic2017-256", {42: {}}, epochs=4)
    _runs(res, "egeunet", "isic2017-256", {42: {}}, epochs=4)
    paper = {42: {"recipe": "paper"}}
    _runs(res, "malunet", "isic2017-256", paper, epochs=6, recipe="paper", select_split="test")
    (tmp_path / "README.md").write_text(f"# x\n{headline.BEGIN}\n{headline.END}\n")
    assert main(["report", "--results", str(res), "--quiet"]) == 0
    block = (tmp_path / "README.md").read_text()
    fair_at = block.index("`fair`, 4 epochs, checkpoint selected on the val split:")
    paper_at = block.index("`paper`, 6 epochs, checkpoint selected on the test split as the")
    assert fair_at < paper_at
    fair_table = block[fair_at:paper_at]
    assert "| malunet | isic2017-256 | fair | 4 |" in fair_table
    assert "| egeunet | isic2017-256 | fair | 4 |" in fair_table
    assert "| paper |" not in fair_table
    assert "| malunet | isic2017-256 | paper | 6 |" in block[paper_at:]
