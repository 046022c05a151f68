"""Report: Pareto front, table assembly from fixture result files, plots and README."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.analysis.pareto import pareto_front, pareto_order
from bench.analysis.report import accuracy, load, summaries, tables, write

FIXTURES = Path(__file__).parent / "data" / "report_fixtures"


# --------------------------------------------------------------------------- Pareto front


def test_pareto_front_basic() -> None:
    cost = [1.0, 2.0, 3.0, 4.0, 2.5]
    acc = [0.70, 0.80, 0.75, 0.90, 0.85]
    # 3.0/0.75 is dominated by 2.0/0.80; the rest improve accuracy as cost grows.
    assert pareto_front(cost, acc).tolist() == [True, True, False, True, True]
    assert pareto_order(cost, acc).tolist() == [0, 1, 4, 3]


def test_pareto_front_ties() -> None:
    # Same cost: only the more accurate one. Same accuracy: only the cheaper one.
    assert pareto_front([1, 1, 2], [0.5, 0.6, 0.7]).tolist() == [False, True, True]
    assert pareto_front([1, 2, 3], [0.8, 0.8, 0.9]).tolist() == [True, False, True]


def test_pareto_front_duplicates() -> None:
    # Exact duplicates do not dominate each other: both on the front, or both off it.
    assert pareto_front([1, 1, 2], [0.9, 0.9, 0.95]).tolist() == [True, True, True]
    assert pareto_front([2, 2, 1], [0.5, 0.5, 0.9]).tolist() == [False, False, True]


def test_pareto_front_nan_and_inf_excluded() -> None:
    cost = [1.0, math.nan, 3.0, 0.5, math.inf]
    acc = [0.7, 0.99, 0.8, math.nan, 0.99]
    front = pareto_front(cost, acc)
    assert front.tolist() == [True, False, True, False, False]
    # A NaN point must not dominate anything either: 1.0/0.7 stays on the front.
    assert pareto_front([math.nan], [math.nan]).tolist() == [False]
    assert pareto_front([], []).tolist() == []


def test_pareto_front_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="equal length"):
        pareto_front([1, 2], [0.5])


def test_pareto_front_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    cost = rng.integers(0, 6, 60).astype(float)  # small ranges: many ties and duplicates
    acc = rng.integers(0, 6, 60).astype(float)
    expect = [
        not any(
            (cost[j] <= cost[i] and acc[j] >= acc[i]) and (cost[j] < cost[i] or acc[j] > acc[i])
            for j in range(60)
        )
        for i in range(60)
    ]
    assert pareto_front(cost, acc).tolist() == expect


# --------------------------------------------------------------------------- tables


@pytest.fixture(scope="module")
def fixture_results() -> load.Results:
    return load.load_results(FIXTURES)


def test_load_results_reads_every_kind(fixture_results: load.Results) -> None:
    res = fixture_results
    assert set(res.complexity["model"]) == {"egeunet", "malunet", "transfuse_s", "unet"}
    assert res.devices == ["cuda-fixture-gpu", "cpu-fixture-cpu"]  # accelerator first
    assert res.primary_device == "cuda-fixture-gpu"
    # the unfinished egeunet run is ignored
    assert sorted(res.runs["model"]) == ["malunet", "malunet", "unet"]
    assert sorted(res.baselines["kind"]) == ["disc", "mean-mask"]
    assert set(res.baselines["dataset"]) == {"isic2017-mini"}
    # evaluations of trained runs on other data, keyed by the training run
    ext = res.external.sort_values("seed")
    assert ext["eval_dataset"].tolist() == ["ph2", "ph2"] and set(ext["eval_split"]) == {"all"}
    assert ext["eval_dsc"].tolist() == [0.70, 0.78] and ext["in_domain_dsc"].tolist() == [0.8, 0.84]


def test_speed_summary_picks_baseline_variant(fixture_results: load.Results) -> None:
    sp = summaries.speed_summary(fixture_results.speed["cpu-fixture-cpu"]).set_index("model")
    # fp32 contiguous batch 1, not the faster channels_last row or the skipped bf16 one
    assert sp.loc["malunet", "latency_ms"] == 15.0
    assert sp.loc["malunet", "throughput_img_s"] == 100.0
    assert sp.loc["malunet", "best_batch"] == 8
    # no CUDA peak and no RSS delta in this file: the process RSS, under its own name
    assert sp.loc["malunet", "process_rss_mb"] == 310.0
    assert math.isnan(sp.loc["malunet", "peak_mem_mb"])
    assert "bf16" in sp.loc["malunet", "speed_notes"]
    assert sp.loc["egeunet", "train_img_s"] == 20.0
    assert math.isnan(sp.loc["unet", "train_img_s"])


def test_accuracy_summary_over_seeds(fixture_results: load.Results) -> None:
    acc = accuracy.accuracy_summary(fixture_results.runs).set_index("model")
    assert acc.loc["malunet", "n_seeds"] == 2
    assert acc.loc["malunet", "dsc_mean"] == pytest.approx(82.0)
    assert acc.loc["malunet", "dsc_std"] == pytest.approx(np.std([80.0, 84.0], ddof=1))
    assert acc.loc["malunet", "dice_mean"] == pytest.approx(79.0)
    assert acc.loc["malunet", "hd95_mean"] == pytest.approx(18.0)
    assert math.isnan(acc.loc["unet", "dsc_std"])  # one seed: no spread


def test_summary_table_one_row_per_model(fixture_results: load.Results) -> None:
    s = summaries.summary_table(fixture_results, device="cpu-fixture-cpu").set_index("model")
    assert list(s.index) == ["egeunet", "malunet", "transfuse_s", "unet"]
    assert s.loc["malunet", "params_total"] == 177943
    assert s.loc["malunet", "params_unique"] == 146711
    assert s.loc["unet", "thop_macs"] == 13_760_000_000
    assert s.loc["unet", "latency_ms"] == 150.0
    assert s.loc["malunet", "isic2017-mini:dsc_mean"] == pytest.approx(82.0)
    assert pd.isna(s.loc["egeunet", "isic2017-mini:dsc_mean"])
    # paper figures come from the registry, in their own columns
    assert s.loc["malunet", "paper_isic2017_dsc"] == 88.13
    assert s.loc["unet", "paper_isic2018_miou"] == 77.86
    # one or two seeds per model: no difference is claimed
    assert "significant_over_seeds" not in s.columns


def test_render_markdown_and_csv(fixture_results: load.Results) -> None:
    s = summaries.summary_table(fixture_results, device="cpu-fixture-cpu")
    cols = tables._accuracy_cols(["isic2017-mini"], ["isic2017"])
    csv, md = tables.render(s, cols)
    assert "paper DSC ISIC2017 (%)" in csv.columns
    assert "isic2017-mini DSC pooled (%) std" in csv.columns
    assert "82.00 ± 2.83" in md  # mean ± std over the two malunet seeds
    assert "isic2017-mini experiment" in csv.columns and "fair-e2" in md
    # every accuracy row states its epochs and code (fixture runs predate the fingerprint)
    assert set(csv["isic2017-mini epochs"].dropna()) == {2}
    assert "unrecorded: commit" in md
    assert "| 88.13" in md
    _, eff = tables.render(s, tables._efficiency_cols("Fixture CPU"))
    malunet = next(line for line in eff.splitlines() if line.startswith("| malunet"))
    unet = next(line for line in eff.splitlines() if line.startswith("| unet "))
    assert "15.0 (noisy)" in malunet and "(noisy)" not in unet  # bench.speed's flag shown


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(load.ReportInputError, match="does not exist"):
        load.load_results(tmp_path / "nope")
    (tmp_path / "speed").mkdir()
    bad = tmp_path / "speed" / "speed-cpu-x.csv"
    bad.write_text("model,mode\nmalunet,inference\n")
    with pytest.raises(load.ReportInputError, match=r"speed-cpu-x\.csv.*median_ms"):
        load.load_results(tmp_path)
    bad.unlink()
    run = tmp_path / "runs" / "d" / "m" / "fair-e1" / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(load.ReportInputError, match=r"metrics\.json: not valid JSON"):
        load.load_results(tmp_path)
    (run / "metrics.json").write_text('{"status": "finished", "model": "m", "test": {}}')
    with pytest.raises(load.ReportInputError, match=r"seed0/metrics\.json: .*no test\.dsc"):
        load.load_results(tmp_path)


def test_empty_results_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(load.ReportInputError, match="no result files"):
        write.write_report(tmp_path, progress=False)


def test_paper_dataset_mapping() -> None:
    assert summaries.paper_dataset("isic2017-mini") == "isic2017"
    assert summaries.paper_dataset("ISIC_2018") == "isic2018"
    assert summaries.paper_dataset("synthetic") is None


# --------------------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, load.ReportOutput]:
    root = tmp_path_factory.mktemp("results")
    shutil.copytree(FIXTURES, root, dirs_exist_ok=True)
    out = write.write_report(root, command="segbench benchmark --fixture", progress=False)
    return root, out


def test_write_report_tables(written: tuple[Path, load.ReportOutput]) -> None:
    root, _ = written
    for name in (
        "summary",
        "efficiency",
        "accuracy",
        "speed-cpu-fixture-cpu",
        "speed-cuda-fixture-gpu",
    ):
        assert (root / "tables" / f"{name}.csv").stat().st_size > 0
        assert (root / "tables" / f"{name}.md").read_text().count("\n") > 2
    eff = pd.read_csv(root / "tables" / "efficiency.csv")
    assert len(eff) == 4
    assert "GFLOPs papers' convention (thop MACs, G)" in eff.columns


def test_write_report_plots(written: tuple[Path, load.ReportOutput]) -> None:
    root, out = written
    pngs = sorted(p.name for p in out.plots if p.suffix == ".png")
    assert "efficiency-params-vs-macs.png" in pngs
    assert "pareto-dsc-vs-params-isic2017-mini.png" in pngs
    assert "pareto-dsc-vs-latency-cpu-fixture-cpu-isic2017-mini.png" in pngs
    # a dataset with nothing measured gets no figure (issue 24 item 16)
    assert not [p for p in pngs if p.endswith("-isic2018.png")]
    for p in out.plots:
        data = p.read_bytes()
        assert len(data) > 5000, p
        assert data.startswith(b"\x89PNG") if p.suffix == ".png" else b"<svg" in data[:2000]


def test_readme_states_machine_and_command(written: tuple[Path, load.ReportOutput]) -> None:
    root, out = written
    text = (root / "README.md").read_text()
    assert "`segbench benchmark --fixture`" in text
    assert "Fixture GPU" in text  # the machine that timed the primary device
    assert "torch" in text and "versions:" in text
    assert "segbench speed --device cpu" in text  # the input file's own command
    assert "![" in text and "plots/efficiency-params-vs-macs.png" in text
    for png in (p for p in out.plots if p.suffix == ".png"):
        assert f"plots/{png.name}" in text
    assert "paper DSC ISIC2017 (%)" in text


def test_deployment_section_from_precision_file(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path, dirs_exist_ok=True)
    (tmp_path / "deploy").mkdir()
    rows = pd.DataFrame(
        {
            "model": ["malunet"] * 3,
            "weights": ["run runs/isic2017-mini/malunet/fair-e20/seed1 (best.pt, config x)"] * 3,
            "variant": ["torch fp32", "onnxruntime int8-static", "openvino bf16"],
            "status": ["ok", "ok", "skipped"],
            "latency_ms": [40.0, 16.0, None],
            "dsc": [0.92, 0.9075, None],
            "dsc_change_pts": [0.0, -1.25, None],
            "out_mask_diff": [0.0, 0.012, None],
            "reason": ["", "", "this CPU has no native bf16"],
        }
    )
    rows.to_csv(tmp_path / "deploy" / "precision.csv", index=False)
    write.write_report(tmp_path, progress=False)
    table = pd.read_csv(tmp_path / "tables" / "deployment.csv")
    assert table["DSC change, variant − eager fp32 (pts)"].tolist()[:2] == [0.0, -1.25]
    text = (tmp_path / "README.md").read_text()
    section = text.split("## Deployment precision: int8 and bf16", 1)[1].split("\n## ", 1)[0]
    assert "| 90.75 " in section and "| 1.20 " in section  # DSC and mask pixels in %
    assert "no native bf16" in section
    # without the file there is no section (the fixture report above has none)
    (tmp_path / "deploy" / "precision.csv").unlink()
    write.write_report(tmp_path, progress=False)
    assert "Deployment precision" not in (tmp_path / "README.md").read_text()
    assert not (tmp_path / "tables" / "deployment.csv").exists()  # stale output removed


def test_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    shutil.copytree(FIXTURES / "complexity", tmp_path / "complexity")
    assert (
        main(["report", "--results", str(tmp_path), "--report-dir", str(tmp_path / "o"), "--quiet"])
        == 0
    )
    assert (tmp_path / "o" / "README.md").exists()
    assert main(["report", "--results", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _add_run(
    root: Path, model: str, epochs: int, seed: int, dsc: float, recipe: str = "fair"
) -> None:
    """A finished run of experiment (recipe, epochs) in the engine's folder layout."""
    import json

    run = root / "runs" / "isic2017-mini" / model / f"{recipe}-e{epochs}" / f"seed{seed}"
    run.mkdir(parents=True)
    test = {"dsc": dsc, "miou": dsc - 0.1, "dice_mean": dsc, "hd95_mean": 10.0, "n_images": 4}
    metrics = {"model": model, "dataset": "isic2017-mini", "seed": seed, "recipe": recipe}
    metrics.update(epochs=epochs, status="finished", test=test)
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_experiments_are_kept_apart(tmp_path: Path) -> None:
    # malunet has a 2-epoch and a 20-epoch experiment; unet only the 2-epoch one.
    shutil.copytree(FIXTURES / "complexity", tmp_path / "complexity")
    _add_run(tmp_path, "malunet", 2, 0, 0.70)
    _add_run(tmp_path, "malunet", 20, 0, 0.90)
    _add_run(tmp_path, "unet", 2, 0, 0.60)
    res = load.load_results(tmp_path)
    acc = accuracy.accuracy_summary(res.runs)
    rows = {(r.model, r.epochs): r.dsc_mean for r in acc.itertuples()}
    # one row per experiment; the 2- and 20-epoch malunet runs are not averaged
    assert rows == {("malunet", 2): pytest.approx(70.0), ("malunet", 20): pytest.approx(90.0),
                    ("unet", 2): pytest.approx(60.0)}  # fmt: skip
    main = accuracy.main_experiments(acc).set_index("model")
    assert main.loc["malunet", "epochs"] == 20 and main.loc["unet", "epochs"] == 2
    # a longer paper-recipe run (selected on test) never becomes the shown experiment
    _add_run(tmp_path, "unet", 300, 0, 0.99, recipe="paper")
    _add_run(tmp_path, "malunet", 300, 0, 0.99, recipe="paper-fixed-angle")
    acc2 = accuracy.accuracy_summary(load.load_results(tmp_path).runs)
    assert len(acc2) == 5  # the accuracy table keeps them
    main2 = accuracy.main_experiments(acc2).set_index("model")
    assert main2.loc["malunet", "epochs"] == 20 and main2.loc["unet", "epochs"] == 2
    from bench.analysis.runs import choose_experiment, find_runs

    both = find_runs(tmp_path)
    assert choose_experiment(both, "isic2017-mini") == ("fair", 2)
    assert choose_experiment(both, "isic2017-mini", ["unet"], recipe="paper") == ("paper", 300)
    for sub in ("unet/paper-e300", "malunet/paper-fixed-angle-e300"):
        shutil.rmtree(tmp_path / "runs" / "isic2017-mini" / sub)
    s = summaries.summary_table(res).set_index("model")
    assert s.loc["malunet", "isic2017-mini:dsc_mean"] == pytest.approx(90.0)
    assert s.loc["malunet", "isic2017-mini:experiment"] == "fair-e20"

    out = write.write_report(tmp_path, command="segbench report", progress=False)
    # isic2017-mini is a smoke protocol: its rows have their own table
    head = pd.read_csv(tmp_path / "tables" / "accuracy.csv")  # only models not measured yet
    assert "dataset" not in head or head["dataset"].isna().all()
    table = pd.read_csv(tmp_path / "tables" / "accuracy-smoke.csv").dropna(subset=["dataset"])
    got = sorted(zip(table["model"], table["epochs"], table["DSC pooled (%)"].round(1)))
    assert got == [("malunet", 2, 70.0), ("malunet", 20, 90.0), ("unet", 2, 60.0)]
    assert set(table["recipe"]) == {"fair"}
    text = (tmp_path / "README.md").read_text()
    assert "malunet: recipe fair, 20 epochs" in text and "unet: recipe fair, 2 epochs" in text
    assert "`runs/isic2017-mini/malunet/fair-e20/`" in text
    # the plots name the epochs, since they differ between the models
    captions = [c for g, _, c in out.figures if g == "accuracy" and "isic2017-mini" in c]
    assert captions and all("protocols differ" in c and "fair-e20" in c for c in captions)


# --------------------------------------------------------------------------- runtime backends
@pytest.fixture(scope="module")
def with_runtimes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, load.ReportOutput]:
    """The fixtures with onnxruntime rows beside the CPU's eager rows (CPU only)."""
    root = tmp_path_factory.mktemp("rt")
    shutil.copytree(FIXTURES, root, dirs_exist_ok=True)
    for f in (root / "speed").glob("speed-cuda-*"):
        f.unlink()
    (root / "speed" / "speed-cpu-fixture-cpu.json").unlink()
    csv = root / "speed" / "speed-cpu-fixture-cpu.csv"
    df = pd.read_csv(csv)
    eager = df[(df["mode"] == "inference") & (df["batch_size"] == 1)
               & (df["dtype"] == "fp32") & (df["layout"] == "contiguous")]  # fmt: skip
    rt = eager.copy()
    rt["backend"] = "onnxruntime"
    rt["median_ms"] = rt["model"].map({"malunet": 5.0, "unet": 60.0, "egeunet": 40.0})
    rt = rt[rt["model"].isin(["malunet", "unet", "egeunet"])]
    slow_bf16 = rt[rt["model"] == "malunet"].assign(dtype="bf16", median_ms=1.0)  # not fp32
    df = pd.concat([df.assign(backend="torch"), rt, slow_bf16], ignore_index=True)
    df.to_csv(csv, index=False)
    out = write.write_report(root, command="segbench benchmark --fixture", progress=False)
    return root, out


def test_summary_names_the_best_backend(with_runtimes: tuple[Path, load.ReportOutput]) -> None:
    root, _ = with_runtimes
    eff = pd.read_csv(root / "tables" / "efficiency.csv").set_index("model")
    lat = [c for c in eff.columns if c.startswith("latency bs1")][0]
    assert eff.loc["malunet", lat] == 15.0  # the eager column stays eager
    assert eff.loc["malunet", "best fp32 backend bs1"] == "onnxruntime"
    best = [c for c in eff.columns if c.startswith("best backend latency")][0]
    assert eff.loc["malunet", best] == 5.0  # fp32: the faster bf16 row does not count
    assert eff.loc["malunet", "speedup over eager"] == pytest.approx(3.0)
    assert eff.loc["unet", "speedup over eager"] == pytest.approx(150.0 / 60.0)
    assert eff.loc["egeunet", "best fp32 backend bs1"] == "torch"  # eager 20 ms < 40 ms
    assert eff.loc["egeunet", "speedup over eager"] == pytest.approx(1.0)
    md = (root / "tables" / "speed-cpu-fixture-cpu.md").read_text()
    assert "| backend" in md and "onnxruntime" in md


def test_runtime_plots(with_runtimes: tuple[Path, load.ReportOutput]) -> None:
    _, out = with_runtimes
    pngs = {p.name for p in out.plots if p.suffix == ".png"}
    assert "efficiency-macs-vs-latency-cpu-fixture-cpu.png" in pngs  # eager, as before
    assert "efficiency-macs-vs-latency-cpu-fixture-cpu-onnxruntime.png" in pngs
    assert "efficiency-eager-vs-runtime-cpu-fixture-cpu.png" in pngs
    assert "pareto-dsc-vs-best-latency-cpu-fixture-cpu-isic2017-mini.png" in pngs
