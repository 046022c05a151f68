"""bench.stats: Holm, paired Wilcoxon / bootstrap, aggregation over seeds, pairwise tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench.analysis import runs as run_index
from bench.analysis import stats
from bench.cli import main

# ------------------------------------------------------------------------------ Holm


def test_holm_matches_hand_computed_values():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])


def test_holm_clips_at_one_and_keeps_nan_out_of_the_family():
    np.testing.assert_allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])
    # m = 2 (the NaN is not a hypothesis): 0.01*2=0.02, 0.04*1=0.04
    adj = stats.holm([0.04, np.nan, 0.01])
    np.testing.assert_allclose(adj, [0.04, np.nan, 0.02])
    assert stats.holm([]).size == 0
    assert stats.holm([0.2])[0] == pytest.approx(0.2)


def test_holm_rejects_invalid_p_values():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([0.1, 1.5])
    with pytest.raises(ValueError, match="1-D"):
        stats.holm([[0.1, 0.2]])


# ------------------------------------------------------------------ paired comparison


def test_wilcoxon_exact_p_value_computed_by_hand():
    # Differences ranked by |d|: 0.05->1, 0.1->2, 0.2->3, 0.3->4, ... 0.7->8. Negative ranks
    # sum to W- = 1 + 4 = 5. Subsets of {1..8} with rank sum <= 5: {}, 5 singletons,
    # {1,2}, {1,3}, {1,4}, {2,3} = 10, so the exact two-sided p = 2 * 10 / 2**8.
    d = np.array([0.1, 0.2, -0.3, 0.4, 0.5, 0.6, -0.05, 0.7])
    b = np.full_like(d, 0.5)
    r = stats.paired_comparison(b + d, b, n_resamples=999)
    assert r["statistic"] == pytest.approx(5.0)
    assert r["p_value"] == pytest.approx(20 / 256)
    assert r["n"] == 8
    assert r["mean_diff"] == pytest.approx(d.mean())
    # All five differences positive: the exact two-sided p is 2 / 2**5.
    r5 = stats.paired_comparison([1.0, 2.0, 3.0, 4.0, 5.5], [0.0] * 5, n_resamples=999)
    assert r5["p_value"] == pytest.approx(2 / 32)


def test_paired_comparison_matches_scipy_on_fixed_arrays():
    rng = np.random.default_rng(123)
    a = rng.uniform(0.6, 0.95, 80)
    b = np.clip(a - rng.normal(0.02, 0.05, 80), 0, 1)
    r = stats.paired_comparison(a, b, n_resamples=4000, seed=7)
    ref_w = sps.wilcoxon(a, b)
    assert r["p_value"] == pytest.approx(ref_w.pvalue)
    assert r["statistic"] == pytest.approx(ref_w.statistic)
    ref_ci = sps.bootstrap(
        (a, b),
        lambda u, v, axis: np.mean(u - v, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=4000,
        method="BCa",
        rng=np.random.default_rng(7),
    ).confidence_interval
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ref_ci.low, ref_ci.high))
    assert r["ci_low"] < r["mean_diff"] < r["ci_high"]
    assert r["mean_a"] == pytest.approx(a.mean()) and r["mean_b"] == pytest.approx(b.mean())


def test_bootstrap_ci_agrees_with_normal_theory_and_is_seeded():
    rng = np.random.default_rng(0)
    d = rng.normal(0.03, 0.1, 400)
    a, b = 0.5 + d, np.full(400, 0.5)
    r = stats.paired_comparison(a, b, n_resamples=3000, seed=1)
    half = 1.959964 * d.std(ddof=1) / np.sqrt(len(d))
    assert (r["ci_high"] - r["ci_low"]) / 2 == pytest.approx(half, rel=0.15)
    assert stats.paired_comparison(a, b, n_resamples=3000, seed=1) == r
    assert stats.paired_comparison(a, b, n_resamples=3000, seed=2)["ci_low"] != r["ci_low"]


def test_degenerate_differences():
    same = stats.paired_comparison([0.5, 0.7, 0.9], [0.5, 0.7, 0.9])
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0
    assert same["ci_low"] == same["ci_high"] == 0.0
    shifted = stats.paired_comparison([0.6, 0.8, 0.9], [0.5, 0.7, 0.8])
    assert shifted["ci_low"] == pytest.approx(0.1) and shifted["ci_high"] == pytest.approx(0.1)


def test_paired_comparison_aligns_on_image_id_and_rejects_different_sets():
    a = pd.Series([0.9, 0.8, 0.7], index=["i1", "i2", "i3"], name="A")
    b = pd.Series([0.6, 0.9, 0.5], index=["i3", "i1", "i2"], name="B")  # shuffled order
    r = stats.paired_comparison(a, b, n_resamples=999)
    assert r["mean_diff"] == pytest.approx(np.mean([0.9 - 0.9, 0.8 - 0.5, 0.7 - 0.6]))
    c = pd.Series([0.6, 0.9, 0.5], index=["i1", "i2", "i9"], name="C")
    with pytest.raises(
        ValueError, match=r"image sets differ.*only in model A: i3.*only in model C: i9"
    ):
        stats.paired_comparison(a, c)


def test_non_finite_pairs_are_dropped():
    r = stats.paired_comparison([1.0, np.inf, 3.0, 4.0], [0.5, 1.0, np.nan, 2.0], n_resamples=999)
    assert r["n"] == 2
    assert r["mean_diff"] == pytest.approx((0.5 + 2.0) / 2)


# ------------------------------------------------------------------------ fixture runs


def _write_run(
    root: Path,
    dataset: str,
    model: str,
    seed: int,
    dice: np.ndarray,
    ids: list[str],
    status: str = "finished",
    dsc: float | None = None,
    epochs: int = 3,
) -> Path:
    run = root / "runs" / dataset / model / f"fair-e{epochs}" / f"seed{seed}"
    run.mkdir(parents=True)
    test = {
        "acc": 0.9,
        "sen": 0.8,
        "spe": 0.95,
        "dsc": float(dice.mean() if dsc is None else dsc),
        "miou": float(dice.mean() * 0.8),
        "dice_mean": float(dice.mean()),
        "dice_std": float(dice.std()),
        "iou_mean": float(dice.mean() * 0.8),
        "iou_std": 0.1,
        "hd95_mean": float(10 + seed),
        "hd95_median": 9.0,
        "isic_jaccard": 0.7,
        "n_images": len(ids),
    }
    metrics = {
        "model": model,
        "dataset": dataset,
        "seed": seed,
        "recipe": "fair",
        "epochs": epochs,
        "config_hash": f"h{model}{seed}",
        "status": status,
        "best_epoch": 2,
        "test": test,
        "train_images_per_s": 50.0 + seed,
        "epoch_time_s": 2.0,
        "environment": {"device_name": "Test CPU", "versions": {"torch": "2.14.1"}},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame(
        {"image_id": ids, "dice": dice, "iou": dice * 0.8, "hd95": 5.0, "jaccard_thresholded": dice}
    ).to_csv(run / "per_image.csv", index=False)
    return run


@pytest.fixture
def results(tmp_path: Path) -> dict:
    """Three models x 2 seeds on 40 images; 'good' is clearly better than 'base'."""
    rng = np.random.default_rng(42)
    ids = [f"ISIC_{i:07d}" for i in range(40)]
    base = rng.uniform(0.5, 0.9, 40)
    dice = {
        ("base", 0): base + rng.normal(0, 0.01, 40),
        ("base", 1): base + rng.normal(0, 0.01, 40),
        ("good", 0): base + 0.08 + rng.normal(0, 0.01, 40),
        ("good", 1): base + 0.07 + rng.normal(0, 0.01, 40),
        ("same", 0): base + rng.normal(0, 0.02, 40),
        ("same", 1): base + rng.normal(0, 0.02, 40),
    }
    dsc = {k: float(0.7 + 0.01 * i) for i, k in enumerate(dice)}
    for (model, seed), values in dice.items():
        _write_run(tmp_path, "syn", model, seed, values, ids, dsc=dsc[(model, seed)])
    # An unfinished run and a run on another dataset must not leak into 'syn'.
    _write_run(tmp_path, "syn", "base", 2, base, ids, status="running")
    _write_run(tmp_path, "other", "base", 0, base[:10], ids[:10])
    return {"root": tmp_path, "dice": dice, "dsc": dsc, "ids": ids}


def test_find_runs_reads_finished_runs_only(results):
    runs = run_index.find_runs(results["root"])
    assert len(runs) == 7
    assert set(runs.loc[runs["dataset"] == "syn", "seed"]) == {0, 1}
    assert run_index.find_runs(results["root"], dataset="syn", model="good")["seed"].tolist() == [
        0,
        1,
    ]


def test_aggregate_runs_mean_std_n_over_seeds(results):
    agg = run_index.aggregate_runs(results["root"])
    assert len(agg) == 4  # 3 models on syn, 1 on other
    row = agg[(agg["dataset"] == "syn") & (agg["model"] == "good")].iloc[0]
    vals = [results["dsc"][("good", 0)], results["dsc"][("good", 1)]]
    assert row["n"] == 2 and row["seeds"] == "0,1"
    assert row["dsc_mean"] == pytest.approx(np.mean(vals))
    assert row["dsc_std"] == pytest.approx(np.std(vals, ddof=1))
    assert row["dice_mean_mean"] == pytest.approx(
        np.mean([results["dice"][("good", s)].mean() for s in (0, 1)])
    )
    assert row["hd95_mean_mean"] == pytest.approx(10.5)
    assert row["devices"] == "Test CPU" and row["torch_versions"] == "2.14.1"
    single = agg[agg["dataset"] == "other"].iloc[0]
    assert single["n"] == 1 and np.isnan(single["dsc_std"])


def test_aggregate_runs_empty_results(tmp_path):
    agg = run_index.aggregate_runs(tmp_path)
    assert agg.empty and "dsc_mean" in agg.columns


def test_write_summary_files(results):
    paths = run_index.write_summary(results["root"], command="segbench test")
    csv, md, js = paths
    assert pd.read_csv(csv)["n"].tolist() == run_index.aggregate_runs(results["root"])["n"].tolist()
    text = md.read_text()
    good = np.mean([results["dsc"][("good", s)] for s in (0, 1)]) * 100
    assert f"{good:.2f} ± " in text and "segbench test" in text
    meta = json.loads(js.read_text())
    assert meta["command"] == "segbench test" and "versions" in meta["environment"]


def test_load_per_image_averages_seeds(results):
    s = stats.load_per_image(results["root"], "syn", "good")
    expected = (results["dice"][("good", 0)] + results["dice"][("good", 1)]) / 2
    np.testing.assert_allclose(s.loc[results["ids"]].to_numpy(), expected)
    assert s.attrs["seeds"] == [0, 1]
    one = stats.load_per_image(results["root"], "syn", "good", seed=1)
    np.testing.assert_allclose(one.loc[results["ids"]].to_numpy(), results["dice"][("good", 1)])
    with pytest.raises(
        FileNotFoundError, match="'nope'.*models with finished runs there: base, good, same"
    ):
        stats.load_per_image(results["root"], "syn", "nope")


def test_load_per_image_refuses_seeds_with_different_images(results):
    path = results["root"] / "runs/syn/good/fair-e3/seed1/per_image.csv"
    df = pd.read_csv(path)
    df.loc[0, "image_id"] = "ISIC_9999999"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"image sets differ.*ISIC_0000000.*ISIC_9999999"):
        stats.load_per_image(results["root"], "syn", "good")


def test_pairwise_comparisons_table(results):
    # two seeds per model: a per-image test, shown with its p-values but never significant
    df = stats.pairwise_comparisons(results["root"], "syn", n_resamples=2000)
    assert list(df.columns[: len(stats.PAIRWISE_COLUMNS)]) == stats.PAIRWISE_COLUMNS
    assert [tuple(r) for r in df[["model_a", "model_b"]].to_numpy()] == [
        ("base", "good"),
        ("base", "same"),
        ("good", "same"),
    ]
    # per-image rows are never claimed: not in the Holm family, unadjusted p kept
    assert df["p_holm"].isna().all() and (df["holm_family"] == 0).all()
    assert set(df["level"]) == {stats.FEW_SEEDS} and not df["significant"].any()
    assert set(df["claim"]) == {f"none: {stats.FEW_SEEDS}"}
    bg = df.iloc[0]
    assert bg["n"] == 40 and bg["mean_diff"] < -0.05 and bg["ci_high"] < 0
    assert bg["p_value"] < 1e-6  # a clear per-image difference, still not a claim
    # Each row's p-value is scipy's on the seed-averaged per-image Dice.
    a = stats.load_per_image(results["root"], "syn", "base")
    b = stats.load_per_image(results["root"], "syn", "good")
    assert bg["p_value"] == pytest.approx(sps.wilcoxon(a, b.loc[a.index]).pvalue)
    written = pd.read_csv(results["root"] / "stats/syn_fair-e3_pairwise.csv")
    assert len(written) == 3 and written["significant"].tolist() == df["significant"].tolist()
    assert set(written["recipe"]) == {"fair"} and set(written["epochs"]) == {3}
    assert set(written["precision_a"]) == {"unknown"}  # the fixture runs record no amp
    meta = json.loads((results["root"] / "stats/syn_fair-e3_pairwise.json").read_text())
    assert meta["parameters"]["n_resamples"] == 2000 and "environment" in meta
    assert meta["rule"] == stats.STATS_RULE  # a file written under another rule is stale


def test_pairwise_comparisons_errors(results):
    with pytest.raises(ValueError, match="at least two models"):
        stats.pairwise_comparisons(results["root"], "other", write=False)
    with pytest.raises(ValueError, match="give a dataset: finished runs exist for other, syn"):
        stats.pairwise_comparisons(results["root"], None, write=False)
    with pytest.raises(ValueError, match="alpha"):
        stats.pairwise_comparisons(results["root"], "syn", alpha=2, write=False)


def test_cli_compare(results, capsys):
    root = str(results["root"])
    assert main(["compare", "base", "good", "--results", root, "--resamples", "999"]) == 0
    out = capsys.readouterr().out
    assert "syn, recipe fair, 3 epochs: per-image dice" in out and "base" in out and "good" in out
    assert not (results["root"] / "stats").exists()  # a single comparison writes nothing
    assert (
        main(["compare", "--all", "--dataset", "syn", "--results", root, "--resamples", "999"]) == 0
    )
    assert (results["root"] / "stats/syn_fair-e3_pairwise.csv").is_file()
    assert main(["compare", "base", "--results", root]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["compare", "base", "good", "--results", str(results["root"] / "nowhere")]) == 2
    assert "no runs/ folder" in capsys.readouterr().err


def test_compare_stays_within_one_experiment(results, capsys):
    root = results["root"]
    ids, dice = results["ids"], results["dice"]
    # 'good' and 'base' also have a 10-epoch experiment, where base beats good;
    # 'same' has only the 3-epoch one; 'lone' only a 20-epoch one.
    _write_run(root, "syn", "good", 0, dice[("base", 0)], ids, epochs=10)
    _write_run(root, "syn", "base", 0, dice[("good", 0)], ids, epochs=10)
    _write_run(root, "syn", "lone", 0, dice[("good", 0)], ids, epochs=20)
    runs = run_index.find_runs(root, dataset="syn")
    assert set(runs["experiment"]) == {"fair-e3", "fair-e10", "fair-e20"}
    # default: the most epochs both models have
    assert run_index.choose_experiment(runs, "syn", ["base", "good"]) == ("fair", 10)
    assert run_index.choose_experiment(runs, "syn", ["base", "same"]) == ("fair", 3)
    assert run_index.choose_experiment(runs, "syn", ["good", "base"], epochs=3) == ("fair", 3)
    df = stats.pairwise_comparisons(root, "syn", ["base", "good"], write=False, n_resamples=999)
    assert df.loc[0, "epochs"] == 10 and df.loc[0, "mean_diff"] > 0.05  # not mixed with e3
    assert df.loc[0, "seeds_a"] == "0"
    df3 = stats.pairwise_comparisons(
        root, "syn", ["base", "good"], epochs=3, write=False, n_resamples=999
    )
    assert df3.loc[0, "mean_diff"] < -0.05 and df3.loc[0, "seeds_a"] == "0,1"
    # --all: every model of the chosen experiment (here e10: base and good only)
    assert stats.pairwise_comparisons(root, "syn", write=False, n_resamples=99)[
        ["model_a", "model_b"]
    ].values.tolist() == [["base", "good"]]
    # mixing experiments of one model is refused without a choice
    with pytest.raises(ValueError, match="several experiments.*fair-e10, fair-e3"):
        stats.load_per_image(root, "syn", "base")
    with pytest.raises(ValueError, match="share no experiment.*lone: fair-e20"):
        stats.pairwise_comparisons(root, "syn", ["base", "lone"], write=False)
    assert main(["compare", "same", "lone", "--results", str(root)]) == 2
    assert "share no experiment" in capsys.readouterr().err
    args = ["compare", "base", "good", "--epochs", "3", "--results", str(root)]
    assert main([*args, "--resamples", "99"]) == 0
    assert "recipe fair, 3 epochs" in capsys.readouterr().out
    assert main([*args, "--recipe", "paper"]) == 2
    assert "recipe paper and epochs 3" in capsys.readouterr().err
