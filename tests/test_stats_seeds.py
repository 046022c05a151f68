"""Experiments by configuration hash, precision, and significance claimed only over seeds."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from run_fixtures import image_ids, write_run
from scipy import stats as sps

from bench.analysis import runs as run_index
from bench.analysis import stats
from bench.cli import main
from bench.engine.config import TrainConfig, experiment_hash_of

# ------------------------------------------------------------------ experiment identity


def test_experiment_hash_ignores_only_the_seed_and_runtime_fields() -> None:
    a = TrainConfig.from_recipe("fair", data="/d/isic", seed=1)
    assert a.experiment_hash == a.replace(seed=2).experiment_hash
    assert a.experiment_hash == a.replace(threads=4, device="cpu", data="/e/isic").experiment_hash
    assert a.config_hash != a.replace(seed=2).config_hash
    for change in ({"lr": 5e-4}, {"amp": "bf16"}, {"epochs": 7}, {"image_size": 64}):
        assert a.replace(**change).experiment_hash != a.experiment_hash, change


def test_experiment_hash_of_a_stored_config_matches_the_engine() -> None:
    cfg = TrainConfig.from_recipe("fair", data="/d/isic2017-mini", seed=3, lr=5e-4)
    stored = json.loads(json.dumps({**cfg.to_dict(), "dataset": cfg.dataset_name,
                                    "config_hash": cfg.config_hash}))  # fmt: skip
    assert experiment_hash_of(stored) == cfg.experiment_hash
    # a field the run predates takes today's default: same experiment as a new run
    older = {k: v for k, v in stored.items() if k != "eta_min"}
    assert experiment_hash_of(older) == cfg.experiment_hash
    # a key TrainConfig does not know keeps experiments apart instead of merging them
    assert experiment_hash_of({**stored, "mystery": 1}) != cfg.experiment_hash
    with pytest.raises(ValueError, match="run7/config.json: lr=-1.0"):
        experiment_hash_of({**stored, "lr": -1.0}, source="run7/config.json")


def _dice(rng: np.random.Generator, base: np.ndarray, shift: float, noise: float) -> np.ndarray:
    return np.clip(base + shift + rng.normal(0, noise, base.shape), 0, 1)


def test_two_runs_differing_in_lr_are_two_experiments(tmp_path: Path) -> None:
    """Seeds 0, 1 at lr 1e-3 and seed 2 at lr 5e-4 in the same folder (as after
    `train --force` of one seed with --set lr=5e-4): never one mean ± std row."""
    rng = np.random.default_rng(0)
    ids = image_ids(20)
    base = rng.uniform(0.6, 0.9, 20)
    for seed in (0, 1):
        write_run(tmp_path, "malunet", seed, _dice(rng, base, 0, 0.01), ids)
    write_run(tmp_path, "malunet", 2, _dice(rng, base, -0.2, 0.01), ids, lr=5e-4,
              folder="fair-e3")  # fmt: skip
    runs = run_index.find_runs(tmp_path)
    assert runs["experiment"].tolist() == ["fair-e3"] * 3  # one folder ...
    assert runs["experiment_hash"].nunique() == 2  # ... two experiments
    agg = run_index.aggregate_runs(tmp_path)
    assert sorted(agg["n"]) == [1, 2]
    assert sorted(agg["setting"]) == ["lr=0.0005", "lr=0.001"]
    (line,) = run_index.experiment_differences(runs)
    head, _, tail = line.partition(": ")
    assert head == "syn malunet fair-e3"
    assert sorted(tail.split(" vs ")) == ["lr=0.0005 (fp32)", "lr=0.001 (fp32)"]
    # the per-image loader refuses to pick one silently, and says what differs
    with pytest.raises(ValueError, match="several experiments.*lr=0.00.* vs lr=0.00"):
        stats.load_per_image(tmp_path, "syn", "malunet")


def test_precision_is_part_of_the_experiment(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = image_ids(10)
    base = rng.uniform(0.6, 0.9, 10)
    write_run(tmp_path, "malunet", 0, base, ids)
    write_run(tmp_path, "malunet", 0, base + 0.01, ids, amp="bf16")
    # a bf16 request whose probe crashed: trained in fp32, and says so
    write_run(tmp_path, "unet", 0, base, ids, amp="bf16", amp_used=None)
    runs = run_index.find_runs(tmp_path).set_index(["model", "experiment"])
    assert runs.loc[("malunet", "fair-e3"), "precision"] == "fp32"
    assert runs.loc[("malunet", "fair-e3-bf16"), "precision"] == "bf16"
    assert runs.loc[("unet", "fair-e3-bf16"), "precision"] == "fp32"
    assert runs.loc[("unet", "fair-e3-bf16"), "amp_requested"] == "bf16"
    agg = run_index.aggregate_runs(tmp_path)
    assert len(agg[agg["model"] == "malunet"]) == 2  # fp32 and bf16 never averaged
    # where a model has both, comparisons take fp32 unless told otherwise
    assert stats.select_runs(run_index.find_runs(tmp_path), "syn", "malunet")[
        "precision"
    ].tolist() == ["fp32"]
    bf = stats.select_runs(run_index.find_runs(tmp_path), "syn", "malunet", precision="bf16")
    assert bf["experiment"].tolist() == ["fair-e3-bf16"]


def test_hd95_undefined_count_from_metrics_or_per_image(tmp_path: Path) -> None:
    ids = image_ids(6)
    hd = np.array([3.0, np.nan, 4.0, np.nan, np.nan, 2.0])
    run = write_run(tmp_path, "malunet", 0, np.full(6, 0.8), ids, hd95=hd)
    assert run_index.find_runs(tmp_path)["hd95_n_undefined"].tolist() == [3]
    # an older run without the count: the empty cells of per_image.csv
    m = json.loads((run / "metrics.json").read_text())
    del m["test"]["hd95_n_undefined"]
    (run / "metrics.json").write_text(json.dumps(m))
    assert run_index.find_runs(tmp_path)["hd95_n_undefined"].tolist() == [3]


# ------------------------------------------------------------ crossed bootstrap


def test_crossed_bootstrap_matches_the_exact_seed_distribution() -> None:
    """Images identical within each seed: only the seed draw matters, and its
    distribution can be enumerated (3 seeds each: 27 x 27 equally likely draws)."""
    a = np.repeat([[0.80], [0.84], [0.90]], 30, axis=1)
    b = np.repeat([[0.70], [0.75], [0.71]], 30, axis=1)
    ma = [np.mean(d) for d in itertools.product(a[:, 0], repeat=3)]
    mb = [np.mean(d) for d in itertools.product(b[:, 0], repeat=3)]
    exact = np.sort(np.subtract.outer(ma, mb).ravel())
    lo, hi = stats.crossed_bootstrap_ci(a, b, n_resamples=40000, seed=3)
    assert lo == pytest.approx(np.quantile(exact, 0.025), abs=0.004)
    assert hi == pytest.approx(np.quantile(exact, 0.975), abs=0.004)
    # seeded: the same numbers again
    assert stats.crossed_bootstrap_ci(a, b, n_resamples=40000, seed=3) == (lo, hi)


def test_crossed_bootstrap_degenerate_and_image_level() -> None:
    # every seed alike: only the images vary, and A = B + 0.05 on every image
    rng = np.random.default_rng(5)
    img = rng.uniform(0.5, 0.9, 40)
    a, b = np.tile(img + 0.05, (3, 1)), np.tile(img, (3, 1))
    assert stats.crossed_bootstrap_ci(a, b, n_resamples=500) == pytest.approx((0.05, 0.05))
    with pytest.raises(ValueError, match="same images"):
        stats.crossed_bootstrap_ci(a, b[:, :10])


# ----------------------------------------------------------------------- claims


def _three_seed_results(root: Path, gap: float, seeds: int = 3) -> list[str]:
    rng = np.random.default_rng(42)
    ids = image_ids(40)
    base = rng.uniform(0.5, 0.9, 40)
    for s in range(seeds):
        write_run(root, "base", s, _dice(rng, base, rng.normal(0, 0.004), 0.02), ids)
        write_run(root, "good", s, _dice(rng, base, gap + rng.normal(0, 0.004), 0.02), ids)
    return ids


def test_three_seeds_with_a_clear_difference_are_significant(tmp_path: Path) -> None:
    _three_seed_results(tmp_path, gap=0.08)
    df = stats.pairwise_comparisons(tmp_path, "syn", n_resamples=2000, write=False)
    r = df.iloc[0]
    assert (r["model_a"], r["model_b"], r["level"]) == ("base", "good", stats.LEVEL_SEEDS)
    assert r["n_seeds_a"] == r["n_seeds_b"] == 3
    assert r["ci_high"] < 0 and r["p_holm"] < 0.05
    assert bool(r["significant"]) and r["claim"] == "significant"
    # the test is scipy's Welch t-test on the per-seed mean Dice
    runs = run_index.find_runs(tmp_path)
    per_seed = {m: g.sort_values("seed")["dice_mean"].to_numpy() for m, g in runs.groupby("model")}
    expect = sps.ttest_ind(per_seed["base"], per_seed["good"], equal_var=False).pvalue
    assert r["p_value"] == pytest.approx(expect)


def test_three_seeds_without_a_difference_are_not(tmp_path: Path) -> None:
    _three_seed_results(tmp_path, gap=0.0)
    r = stats.pairwise_comparisons(tmp_path, "syn", n_resamples=2000, write=False).iloc[0]
    assert r["level"] == stats.LEVEL_SEEDS
    assert not r["significant"] and r["claim"] == "not significant"


def test_one_seed_is_a_per_image_test_and_never_significant(tmp_path: Path) -> None:
    _three_seed_results(tmp_path, gap=0.08, seeds=1)
    r = stats.pairwise_comparisons(tmp_path, "syn", n_resamples=2000, write=False).iloc[0]
    assert r["p_value"] < 1e-6 and r["ci_high"] < 0  # a clear difference between two runs
    assert r["level"] == stats.ONE_RUN == "one training run, per-image test"
    assert not r["significant"] and "significant" not in r["claim"]


def test_disagreeing_test_and_ci_show_both_and_claim_nothing() -> None:
    df = pd.DataFrame(
        {
            "level": [stats.LEVEL_SEEDS, stats.LEVEL_SEEDS, stats.ONE_RUN],
            "p_value": [0.001, 0.20, 1e-9],
            "ci_low": [-0.01, 0.01, 0.02],
            "ci_high": [0.02, 0.03, 0.04],
        }
    )
    out = stats.finalize_comparisons(df, alpha=0.05)
    # Holm over the two tests over seeds only; the per-image row is not adjusted
    assert out["p_holm"].tolist()[:2] == pytest.approx([0.002, 0.2])
    assert math.isnan(out.loc[2, "p_holm"]) and out["holm_family"].tolist() == [2, 2, 0]
    assert out["significant"].tolist() == [False, False, False]
    assert "test and CI disagree" in out.loc[0, "note"] and "includes 0" in out.loc[0, "note"]
    assert "excludes 0" in out.loc[1, "note"]
    assert "p 0.2, Holm p 0.2 (over 2 tests) >= 0.05" in out.loc[1, "note"]
    # the CI in the note is in the report's units (pp of Dice), as in its CI column
    assert "CI [-1.00, +2.00] pp includes 0" in out.loc[0, "note"]
    assert "CI [+1.00, +3.00] pp excludes 0" in out.loc[1, "note"]
    assert out.loc[2, "claim"] == "none: one training run, per-image test"


def test_holm_family_is_the_claimed_tests_only() -> None:
    """30 never-claimed per-image rows must not inflate the over-seed tests' Holm p."""
    lv = [stats.LEVEL_SEEDS] * 2 + [stats.FEW_SEEDS] * 30
    df = pd.DataFrame(
        {"level": lv, "p_value": [0.01, 0.02] + [0.5] * 30, "ci_low": 0.01, "ci_high": 0.02}
    )
    out = stats.finalize_comparisons(df)
    assert out["p_holm"].tolist()[:2] == pytest.approx([0.02, 0.02])
    assert out["significant"].tolist()[:2] == [True, True]
    assert out["p_value"].tolist()[:2] == [0.01, 0.02]  # the unadjusted p stays beside it


def test_welch_interval_is_the_seed_level_ci_and_the_bootstrap_is_shown_beside() -> None:
    """At 3 seeds the crossed bootstrap is narrower than the Welch t interval; the row's
    CI is the Welch one (scipy's), the bootstrap goes to boot_low / boot_high."""
    rng = np.random.default_rng(7)
    img = rng.uniform(0.6, 0.95, 60)
    a = np.stack([img + s + rng.normal(0, 0.01, 60) for s in (0.00, 0.012, -0.008)])
    b = np.stack([img + s + rng.normal(0, 0.01, 60) for s in (0.010, 0.025, 0.020)])
    r = stats.seed_level_comparison(a, b, n_resamples=4000)
    ci = sps.ttest_ind(a.mean(1), b.mean(1), equal_var=False).confidence_interval()
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert r["ci_low"] < r["mean_diff"] < r["ci_high"]
    assert r["boot_high"] - r["boot_low"] < r["ci_high"] - r["ci_low"]
    assert r["mean_diff"] == pytest.approx(a.mean() - b.mean())  # A - B, not B - A


def test_compare_cli_prints_the_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _three_seed_results(tmp_path, gap=0.08, seeds=1)
    assert main(["compare", "base", "good", "--results", str(tmp_path), "--resamples", "99"]) == 0
    out = capsys.readouterr().out
    assert "none: one training run, per-image test" in out
    assert " significant" not in out.replace("never called significant", "")


def test_fields_a_config_predates_are_not_a_difference(tmp_path: Path) -> None:
    """An fp32 run recorded before ``loss`` & co. existed and a newer bf16 run differ in
    precision only: 'differs in' must not list the fields the old config.json lacks."""
    from bench.engine.config import LATER_FIELDS

    ids = image_ids(6)
    cfg_path = write_run(tmp_path, "malunet", 0, np.full(6, 0.8), ids) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({k: v for k, v in cfg.items() if k not in LATER_FIELDS}))
    write_run(tmp_path, "malunet", 0, np.full(6, 0.79), ids, amp="bf16")
    runs = run_index.find_runs(tmp_path)
    assert set(run_index.experiment_settings(runs).values()) == {""}
    (line,) = run_index.experiment_differences(runs)
    assert "loss" not in line and "split_mode" not in line
