"""``segbench compare``: argument parsing for :func:`bench.analysis.stats.pairwise_comparisons`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.analysis.runs import find_runs
from bench.analysis.stats import (
    LEVEL_SEEDS,
    MIN_SEEDS,
    MIN_SEEDS_BOOTSTRAP,
    pairwise_comparisons,
    pairwise_path,
)
from bench.cli.common import add_results


def _cmd_compare(args: argparse.Namespace) -> int:
    results = Path(args.results)
    if not (results / "runs").is_dir():
        print(
            f"error: --results {results}: no runs/ folder (run a sweep or `segbench train` first)",
            file=sys.stderr,
        )
        return 2
    if args.all == bool(args.models):
        print("error: give two or more models, or --all", file=sys.stderr)
        return 2
    if args.models and len(set(args.models)) < 2:
        print("error: compare needs at least two different models", file=sys.stderr)
        return 2
    dataset = args.dataset
    if dataset is None:
        runs = find_runs(results)
        if args.models:
            have = [set(runs.loc[runs["model"] == m, "dataset"]) for m in args.models]
            common = sorted(set.intersection(*have))
        else:
            common = sorted(set(runs["dataset"]))
        if len(common) != 1:
            print(
                "error: --dataset needed; "
                + (
                    f"finished runs of all these models exist for: {', '.join(common)}"
                    if common
                    else "no dataset has finished runs of all these models"
                ),
                file=sys.stderr,
            )
            return 2
        dataset = common[0]
    try:
        df = pairwise_comparisons(
            results,
            dataset,
            args.models or None,
            seed=args.seed,
            recipe=args.recipe,
            epochs=args.epochs,
            precision=args.precision,
            metric=args.metric,
            alpha=args.alpha,
            confidence=args.confidence,
            n_resamples=args.resamples,
            rng_seed=args.rng_seed,
            write=args.all,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seeds = f"seed {args.seed}" if args.seed is not None else "all seeds"
    family = int((df["level"] == LEVEL_SEEDS).sum())
    recipe, epochs = str(df["recipe"].iloc[0]), int(df["epochs"].iloc[0])
    print(
        f"{dataset}, recipe {recipe}, {epochs} epochs: per-image {args.metric}, {seeds}; "
        f"diff = A - B; both models with >= {MIN_SEEDS} seeds: Welch t-test and Welch t "
        "interval over per-seed means (a crossed bootstrap over seeds and images beside it, "
        f"too narrow below {MIN_SEEDS_BOOTSTRAP} seeds), else a Wilcoxon test and a paired "
        f"bootstrap CI over images (never called significant); {100 * args.confidence:g}% CI, "
        f"{args.resamples} resamples, Holm across the {family} test(s) over seeds, "
        f"alpha {args.alpha}"
    )
    shown = df.rename(columns={"mean_diff": "A - B"})
    for col in ("mean_a", "mean_b", "A - B", "ci_low", "ci_high"):
        shown[col] = shown[col].map(lambda v: f"{v:.4f}")
    for col in ("p_value", "p_holm"):
        shown[col] = shown[col].map(lambda v: f"{v:.3g}" if v == v else "–")
    shown = shown[
        ["model_a", "model_b", "precision_a", "precision_b", "seeds_a", "seeds_b", "n"]
        + ["mean_a", "mean_b", "A - B", "ci_low", "ci_high", "p_value", "p_holm", "claim"]
    ]
    print(shown.to_string(index=False))
    for _, r in df[df["note"].astype(str) != ""].iterrows():
        print(f"note {r['model_a']} vs {r['model_b']}: {r['note']}")
    if args.all:
        print(f"wrote {pairwise_path(results, dataset, recipe, epochs)}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare",
        help="paired statistics between models on the same test images",
        description="Compare models on the same test images, at the level the seeds allow: "
        f"with >= {MIN_SEEDS} seeds per model a Welch t-test and Welch t interval over "
        "per-seed means, else a Wilcoxon signed-rank test and a paired "
        "bootstrap CI over images, labelled as a per-image test and never called "
        "significant. Differences are A - B. Holm correction across the tests over seeds. Reads results/runs/; with --all "
        "writes results/stats/<dataset>_<recipe>-e<epochs>_pairwise.{csv,json}. Only runs of "
        "one experiment (recipe, epochs) are compared: by default the one with the most "
        "epochs that all the models have.",
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="two or more models (A B ...)")
    p.add_argument(
        "--all",
        action="store_true",
        help="every model with finished runs on the dataset; writes the table",
    )
    p.add_argument(
        "--dataset", default=None, help="dataset name (default: the only one both models share)"
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="compare runs of this recipe (default: the experiment with the most epochs)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="compare runs of this many epochs (default: the most all the models have)",
    )
    p.add_argument(
        "--precision",
        default=None,
        help="compare runs trained in this precision (fp32, bf16; default: fp32 where a "
        "model has several)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="use this seed only (a per-image test; default: all seeds)",
    )
    p.add_argument(
        "--metric", default="dice", help="per_image.csv column to compare (default: dice)"
    )
    p.add_argument(
        "--alpha", type=float, default=0.05, help="family-wise significance level (default: 0.05)"
    )
    p.add_argument(
        "--confidence", type=float, default=0.95, help="confidence level of the CI (default: 0.95)"
    )
    p.add_argument(
        "--resamples", type=int, default=9999, help="bootstrap resamples (default: 9999)"
    )
    p.add_argument("--rng-seed", type=int, default=0, help="bootstrap random seed (default: 0)")
    add_results(p)
    p.set_defaults(func=_cmd_compare)
