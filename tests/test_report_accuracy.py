"""The report's accuracy side: experiments, precision, claims over seeds, HD95 undefined,
trivial baselines, external validation, plots that cannot mislead, provenance."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from run_fixtures import image_ids, write_run

from bench.analysis.report import accuracy, load, plots, summaries, write

FIXTURES = Path(__file__).parent / "data" / "report_fixtures"


def _report(root: Path) -> tuple[load.ReportOutput, str]:
    out = write.write_report(root, command="segbench report", progress=False)
    return out, (root / "README.md").read_text()


def _models(root: Path, seeds: int, gap: float, n_img: int = 30, **kw: Any) -> None:
    """'base' and 'good' (better by ``gap`` Dice) with ``seeds`` seeds each, plus
    complexity so the plots have a cost axis."""
    rng = np.random.default_rng(7)
    ids = image_ids(n_img)
    img = rng.uniform(0.5, 0.9, n_img)
    for s in range(seeds):
        for model, shift in (("base", 0.0), ("good", gap)):
            d = np.clip(img + shift + rng.normal(0, 0.004) + rng.normal(0, 0.02, n_img), 0, 1)
            write_run(root, model, s, d, ids, **kw)
    (root / "complexity").mkdir(exist_ok=True)
    pd.DataFrame(
        {"model": ["base", "good"], "input_shape": ["1x3x64x64"] * 2,
         "params_total": [1e5, 2e6], "macs": [1e8, 2e9]}
    ).to_csv(root / "complexity" / "complexity.csv", index=False)  # fmt: skip


def _summary_texts(root: Path) -> str:
    return "\n".join(
        (root / "tables" / f"{n}.{e}").read_text() for n in ("summary", "accuracy") for e in ("md", "csv")
    )  # fmt: skip


def test_one_seed_comparison_never_prints_significant(tmp_path: Path) -> None:
    _models(tmp_path, seeds=1, gap=0.1)
    _, readme = _report(tmp_path)
    assert "significant" not in _summary_texts(tmp_path).lower()
    cmp = pd.read_csv(tmp_path / "tables" / "comparisons.csv")
    assert cmp["tested"].tolist() == ["one training run, per-image test"]
    assert cmp["p (unadjusted)"].iloc[0] < 1e-4  # the runs differ clearly on these images ...
    assert cmp["claim"].tolist() == ["none: one training run, per-image test"]  # ... no claim
    assert "one training run, per-image test" in readme


def test_three_seeds_with_a_clear_difference_print_significant(tmp_path: Path) -> None:
    _models(tmp_path, seeds=3, gap=0.1)
    _report(tmp_path)
    summary = (tmp_path / "tables" / "summary.md").read_text()
    assert "significant over seeds" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| good"))
    assert "better than base" in row
    acc = pd.read_csv(tmp_path / "tables" / "accuracy.csv").set_index("model")
    assert acc.loc["base", "significant over seeds (Holm, CI excl. 0)"] == "worse than good"
    cmp = pd.read_csv(tmp_path / "tables" / "comparisons.csv")
    assert cmp["tested"].tolist() == ["over seeds"] and cmp["claim"].tolist() == ["significant"]
    assert acc.loc["good", "seeds"] == 3


def test_accuracy_rows_split_by_lr_and_precision(tmp_path: Path) -> None:
    ids = image_ids(12)
    hd = np.array([4.0] * 9 + [np.nan] * 3)
    for s in (0, 1):
        write_run(tmp_path, "malunet", s, np.full(12, 0.80 + s / 100), ids, hd95=hd)
    write_run(tmp_path, "malunet", 2, np.full(12, 0.60), ids, lr=5e-4, folder="fair-e3")
    write_run(tmp_path, "malunet", 0, np.full(12, 0.79), ids, amp="bf16")
    write_run(tmp_path, "unet", 0, np.full(12, 0.70), ids, amp="bf16", amp_used=None)
    shutil.copytree(FIXTURES / "complexity", tmp_path / "complexity")
    _, readme = _report(tmp_path)
    acc = pd.read_csv(tmp_path / "tables" / "accuracy.csv").dropna(subset=["dataset"])
    mal = acc[acc["model"] == "malunet"]
    got = sorted(zip(mal["precision"], mal["differs in"].fillna(""), mal["seeds"]))
    # "differs in": the values in which experiments of this model, recipe and epochs differ
    # (precision has its own column)
    assert got == [("bf16", "lr=0.001", 1), ("fp32", "lr=0.0005", 1), ("fp32", "lr=0.001", 2)]
    fp32 = mal[(mal["differs in"] == "lr=0.001") & (mal["precision"] == "fp32")].iloc[0]
    assert fp32["DSC pooled (%)"] == pytest.approx(80.5)  # seeds 0 and 1 only, never seed 2
    assert fp32["HD95 undefined (images, all seeds)"] == 6
    assert fp32["HD95 scored (images, all seeds)"] == 24
    md = (tmp_path / "tables" / "accuracy.md").read_text()
    assert "4.0 ± 0.0 (6/24 undefined)" in md
    assert "fp32 (bf16 requested; fell back to fp32)" in md  # unet's crash-probe fallback
    assert "lr=0.0005 (fp32) vs lr=0.001 (fp32)" in readme or (
        "lr=0.001 (fp32) vs lr=0.0005 (fp32)" in readme
    )


def test_baselines_and_external_validation_tables(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path, dirs_exist_ok=True)
    _, readme = _report(tmp_path)
    acc = pd.read_csv(tmp_path / "tables" / "accuracy-smoke.csv").set_index("model")
    assert acc.loc["baseline: disc", "DSC pooled (%)"] == pytest.approx(62.0)
    assert acc.loc["baseline: mean-mask", "HD95 undefined (images, all seeds)"] == 3
    assert pd.isna(acc.loc["baseline: disc", "seeds"])  # deterministic: no seeds
    ext = (tmp_path / "tables" / "external.md").read_text()
    # malunet seeds 0/1: 80 -> 70 and 84 -> 78 on PH2 (all images)
    assert "ph2-all: DSC % (ph2-all − in-domain, pp)" in ext
    assert "74.00 ± 5.66 (-8.00 ± 2.83)" in ext
    csv = pd.read_csv(tmp_path / "tables" / "external.csv")
    assert csv["ph2-all drop mean (pp)"].tolist() == pytest.approx([-8.0])
    assert "robustness to colour and contrast change" in readme
    assert (
        "## Evaluation on other data" in readme and "## Provenance of the accuracy rows" in readme
    )
    # the baselines' provenance, with the dirty-tree flag of the disc baseline's commit
    line = next(x for x in readme.splitlines() if x.startswith("- **baseline: disc**"))
    assert "segbench baselines --data" in line and "dirty tree" in line


def test_provenance_names_command_commit_machine_and_dirty_runs(tmp_path: Path) -> None:
    ids = image_ids(5)
    write_run(tmp_path, "malunet", 0, np.full(5, 0.8), ids, commit="abcdef0123456789")
    write_run(tmp_path, "malunet", 1, np.full(5, 0.8), ids, commit="abcdef0123456789-dirty",
              lr=2e-3)  # fmt: skip
    _, readme = _report(tmp_path)
    prov = readme[readme.index("## Provenance of the accuracy rows") :]
    assert "`segbench train --model malunet --seed 0`" in prov  # the recorded command
    assert "--set lr=0.002" in prov  # the equivalent command names the changed field
    assert "`abcdef012345`" in prov and "`abcdef012345 (dirty tree)`" in prov
    assert "Test CPU (cpu)" in prov and "torch 2.14.1" in prov
    assert "**dirty tree**: seed(s) 1 ran with uncommitted changes" in prov


def test_titles_come_from_the_data_not_defaults(tmp_path: Path) -> None:
    """A report of 64-px runs, complexity and speed never says 256."""
    _models(tmp_path, seeds=2, gap=0.05, image_size=64)
    (tmp_path / "speed").mkdir()
    pd.DataFrame(
        {"model": ["base", "good"], "mode": "inference", "dtype": "fp32", "layout": "contiguous",
         "compile": False, "batch_size": 1, "median_ms": [2.0, 9.0], "input_size": 64,
         "rss_delta_mb": [12.0, 40.0], "rss_mb": [500.0, 530.0], "device_name": "Tiny CPU",
         "status": "ok"}
    ).to_csv(tmp_path / "speed" / "speed-cpu-tiny.csv", index=False)  # fmt: skip
    out, readme = _report(tmp_path)
    captions = [c for _, _, c in out.figures]
    assert captions and not any("256" in c for c in captions)
    acc_caps = [c for g, _, c in out.figures if g == "accuracy"]
    assert all("input 64x64" in c for c in acc_caps)
    assert any("MACs per image at input 1x3x64x64" in c for c in acc_caps)
    assert any("Tiny CPU, batch 1, fp32, input 64x64" in c for c in acc_caps)
    assert re.search(r"\b256\b", readme) is None
    # the CPU memory column is the model's own RSS increase, named so
    eff = (tmp_path / "tables" / "efficiency.md").read_text()
    assert "model's RSS increase" in eff and "incl. interpreter" not in eff


def test_process_rss_is_labelled_when_no_delta_is_recorded(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "speed", tmp_path / "speed")
    (tmp_path / "speed" / "speed-cuda-fixture-gpu.csv").unlink()
    _report(tmp_path)
    eff = (tmp_path / "tables" / "efficiency.md").read_text()
    assert "CPU process RSS bs1, incl. interpreter (MB)" in eff
    assert "| 310 " in eff.replace("310.0", "310")


def test_pareto_panels_keep_measured_and_reported_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    figs: list[Any] = []
    monkeypatch.setattr(plots, "_save", lambda fig, stem: figs.append(fig) or [])
    colours = plots._model_colours(["a", "b", "c"])
    measured = [
        plots.Point("a", 1.0, 90.0, "measured", 0.5),
        plots.Point("b", 3.0, 92.0, "measured"),
    ]
    reported = [plots.Point("a", 1.0, 85.0, "reported"), plots.Point("c", 5.0, 88.0, "reported")]
    plots.plot_pareto(
        measured, reported, "cost", "measured DSC", "reported DSC", "measured on X",
        "reported by papers", "DSC vs cost", Path("unused"), colours,
        baselines=[plots.Line(60.0, "trivial baseline, disc: 60.0")],
        reported_front_label="Pareto front (reported DSC, segbench-measured cost)",
    )  # fmt: skip
    (fig,) = figs
    left, right = fig.axes
    assert left.get_ylabel() == "measured DSC" and right.get_ylabel() == "reported DSC"
    assert left.get_title() == "measured on X" and right.get_title() == "reported by papers"
    left_legend = [t.get_text() for t in left.get_legend().get_texts()]
    right_legend = [t.get_text() for t in right.get_legend().get_texts()]
    assert "trivial baseline, disc: 60.0" in left_legend
    assert any(t.startswith("Pareto front (measured): a → b") for t in left_legend)
    assert any(
        t.startswith("Pareto front (reported DSC, segbench-measured cost)") for t in right_legend
    )
    assert not any("↔" in t for t in left_legend + right_legend)  # no measured<->reported connector
    # the baseline is a horizontal line inside the measured panel's limits
    assert left.get_ylim()[0] < 60.0 < left.get_ylim()[1]
    assert any(list(line.get_ydata()) == [60.0, 60.0] for line in left.get_lines())
    # reported points never land on the measured axis
    ys_left = {round(float(y), 3) for line in left.get_lines() for y in line.get_ydata()}
    assert 85.0 not in ys_left and 88.0 not in ys_left
    assert left.get_xlim() == right.get_xlim()  # one cost axis


def test_accuracy_summary_main_experiment_prefers_fp32_on_ties(tmp_path: Path) -> None:
    ids = image_ids(4)
    write_run(tmp_path, "malunet", 0, np.full(4, 0.8), ids, amp="bf16")
    write_run(tmp_path, "malunet", 0, np.full(4, 0.7), ids)
    res = load.load_results(tmp_path)
    main = accuracy.main_experiments(accuracy.accuracy_summary(res.runs))
    assert main["precision"].tolist() == ["fp32"]


# ------------------------------------------------------------------------- baselines


def test_baselines_command_scores_the_runs_test_split(tmp_path: Path) -> None:
    from bench.cli import main
    from bench.data.synthetic import make_synthetic
    from bench.jobs.baselines import run_baselines

    data = make_synthetic(tmp_path / "lesions", n=20, size=(40, 40), seed=3)
    results = tmp_path / "results"
    args = [
        "baselines",
        "--data",
        str(data),
        "--results",
        str(results),
        "--input-size",
        "32",
        "--quiet",
    ]
    assert main(args) == 0
    disc = json.loads((results / "baselines" / "lesions" / "disc" / "metrics.json").read_text())
    assert disc["split"] == "test" and disc["settings"]["image_size"] == 32
    assert disc["settings_from"] == "the fair recipe (no finished runs)"
    assert disc["command"].startswith("segbench baselines --data")
    n_test = disc["test"]["n_images"]
    assert 0 < n_test < 20 and 0 <= disc["test"]["dsc"] <= 1
    # deterministic: a second run writes the same numbers
    first = (results / "baselines" / "lesions" / "mean-mask" / "per_image.csv").read_text()
    assert main(args) == 0
    assert (results / "baselines" / "lesions" / "mean-mask" / "per_image.csv").read_text() == first
    # a finished run scored on other images: refused, not a floor under the wrong table
    write_run(results, "malunet", 0, np.full(3, 0.8), image_ids(3), dataset="lesions",
              image_size=32)  # fmt: skip
    with pytest.raises(ValueError, match="not the one .*per_image.csv was scored on"):
        run_baselines(data, results, dataset="lesions")
    # the report shows them as rows
    res = load.load_results(results)
    rows = summaries.baseline_rows(res)
    assert sorted(rows["model"]) == ["baseline: disc", "baseline: mean-mask"]
    assert main(["baselines", "--data", str(data), "--results", str(results),
                 "--kinds", "square"]) == 2  # fmt: skip


# ------------------------------------------------------------- experiment comparisons
def test_experiments_of_one_model_are_compared_at_the_level_the_seeds_allow(tmp_path):
    rng = np.random.default_rng(3)
    ids = image_ids(30)
    img = rng.uniform(0.5, 0.9, 30)
    for s in range(3):
        noise = rng.normal(0, 0.01, 30)
        write_run(tmp_path, "malunet", s, np.clip(img + noise, 0, 1), ids)
        write_run(tmp_path, "malunet", s, np.clip(img + noise - 0.05, 0, 1), ids,
                  loss="bce_dice_probs", folder="fair-authors-e3")  # fmt: skip
    write_run(tmp_path, "malunet", 0, np.clip(img - 0.001, 0, 1), ids, amp="bf16")
    write_run(tmp_path, "unet", 0, img, ids)  # one experiment only: no row
    _, text = _report(tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "experiments.csv")
    assert table["model"].tolist() == ["malunet", "malunet"]
    rows = {r["B"].split(" ")[0]: r for _, r in table.iterrows()}
    loss = rows["fair-authors-e3"]
    assert loss["B differs in"] == "loss: bce_dice_logits -> bce_dice_probs"
    assert loss["A (main)"] == "fair-e3 (fp32, 3 seeds)" and loss["tested"] == "over seeds"
    assert loss["claim"] == "significant" and loss["A − B (pp)"] == pytest.approx(5, abs=0.5)
    bf16 = rows["fair-e3-bf16"]
    assert "amp: None -> bf16" in bf16["B differs in"]
    assert bf16["claim"].startswith("none:")  # one bf16 seed: a per-image test, never claimed
    assert "## Experiment comparisons: one model trained two ways" in text


def test_config_difference_names_every_changed_setting():
    from bench.analysis.report.experiments import config_difference

    a = {"lr": 0.001, "seed": 1, "threads": 2, "loss": "x", "amp": None}
    b = {"lr": 0.0005, "seed": 2, "threads": 1, "loss": "x", "amp": "bf16"}
    assert config_difference(a, b) == "amp: None -> bf16; lr: 0.001 -> 0.0005"
    assert config_difference(a, None) == "config not recorded"
    # a config recorded before 'loss' existed trained with its LATER_FIELDS value
    old = {"lr": 0.001}
    assert config_difference(old, {"lr": 0.001, "loss": "bce_dice_logits"}) == (
        "nothing but the recipe name"
    )
    assert config_difference(old, {"lr": 0.001, "loss": "bce_dice_probs"}) == (
        "loss: bce_dice_logits -> bce_dice_probs"
    )


def test_every_model_of_the_report_has_an_accuracy_row(tmp_path: Path) -> None:
    # 'good' has no run: its row says it is not measured instead of being left out
    _models(tmp_path, seeds=1, gap=0.1)
    shutil.rmtree(next((tmp_path / "runs").rglob("good")))
    _report(tmp_path)
    acc = pd.read_csv(tmp_path / "tables" / "accuracy.csv").set_index("model")
    assert acc.loc["base", "seeds"] == 1 and pd.isna(acc.loc["good", "seeds"])
    assert acc.loc["good", "note"] == summaries.UNMEASURED_NOTE
    assert pd.isna(acc.loc["good", "DSC pooled (%)"])


def test_models_trained_in_different_precisions_are_compared_and_say_so(tmp_path: Path) -> None:
    # the heavy models train in bf16 beside fp32 light ones (one recipe, one epoch count):
    # their comparison row carries the note, and an empty note never reads "nan"
    rng = np.random.default_rng(3)
    ids = image_ids(20)
    for s in range(2):
        write_run(tmp_path, "malunet", s, rng.uniform(0.7, 0.9, 20), ids)
    write_run(tmp_path, "unet", 0, rng.uniform(0.7, 0.9, 20), ids, amp="bf16")
    write_run(tmp_path, "egeunet", 0, rng.uniform(0.7, 0.9, 20), ids)
    from bench.analysis.report.significance import report_comparisons

    cmp, skipped = report_comparisons(load.load_results(tmp_path))
    assert not skipped and len(cmp) == 3
    notes = dict(zip(zip(cmp["model_a"], cmp["model_b"]), cmp["note"].fillna(""), strict=True))
    for (a, b), note in notes.items():
        assert ("precisions differ" in note) == ("unet" in (a, b)), (a, b, note)
        assert "nan" not in note.lower()
