"""``segbench paper-gap``: argument parsing for :mod:`bench.jobs.paper_gap`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_paper_gap(args: argparse.Namespace) -> int:
    from bench.jobs.paper_gap import measure_gap, write_gap

    if args.ablation is not None and len(args.runs) != 1:
        raise ValueError("--ablation compares with one run: give one RUN_DIR")
    failed = 0
    for run in args.runs:
        cmd = ["segbench", "paper-gap", str(run), "--results", str(args.results)]
        if args.data:
            cmd += ["--data", str(args.data)]
        if args.full_res:
            cmd += ["--full-res", str(args.full_res)]
        if args.ablation:
            cmd += ["--ablation", str(args.ablation)]
        cmd += ["--resamples", str(args.resamples), "--draws", str(args.draws)]
        try:
            rec = measure_gap(
                run, data=args.data, full_res=args.full_res, ablation=args.ablation,
                resamples=args.resamples,
                draws=args.draws, progress=not args.quiet, command=" ".join(cmd),
            )  # fmt: skip
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {run}: {err}")
            failed += 1
            continue
        path = write_gap(args.results, rec)
        for note in rec["notes"]:
            print(f"note: {note}")
        _print(rec)
        print(f"wrote {path}")
    return 1 if failed else 0


def _print(rec: dict[str, Any]) -> None:
    """The record as a few readable lines."""
    c = rec["causes"]
    paper = rec.get("paper")
    head = f"{rec['model']} {rec['experiment']} seed {rec['seed']}: measured DSC {rec['measured_dsc']:.2f}"
    if paper:
        head += f", paper {paper['dsc']:.2f} ({paper['dataset']}): measured - paper {rec['difference_pp']:+.2f} pp"
    print(head)
    s = c["test_sampling"]
    lo, hi = s["interval_pp"]
    print(
        f"  test sampling ({s['n_images']} images): {100 * s['confidence']:g}% interval {lo:+.2f} to {hi:+.2f} pp"
    )
    for key, label in (("selection", "selection"), ("data_preparation", "data preparation")):
        v = c[key]
        if "skipped" in v:
            print(f"  {label}: not measured ({v['skipped']})")
        elif key == "selection":
            print(
                f"  selection on test: epoch {v['selected_epoch']} vs last epoch {v['last_epoch']}: {v['effect_pp']:+.2f} pp"
            )
        else:
            lo, hi = v["interval_pp"]
            print(
                f"  data preparation ({v['n_images']} images): {v['difference_pp']:+.2f} pp [{lo:+.2f}, {hi:+.2f}]"
            )
    if "ablation" in c:
        a = c["ablation"]
        lo, hi = a["interval_pp"]
        what = ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in a["differs_in"].items())
        print(f"  ablation ({what}): {a['difference_pp']:+.2f} pp [{lo:+.2f}, {hi:+.2f}]")
    d = c["duplicates"]
    print(
        f"  duplicate leaks of a random split: {d['leaked_test_images_mean']:.1f} test images on average, at most {d['bound_pp']:+.2f} pp"
    )
    sd = c["seeds"]["std_pp"]
    spread = f"std {sd:.2f} pp" if sd is not None else "one seed, spread not measured"
    print(f"  training seeds ({len(c['seeds']['seeds'])}): {spread}")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "paper-gap",
        help="measure what separates runs' test DSC from their papers' figures",
        description="For each finished run: re-score its test split (it must reproduce the "
        "run's DSC), then measure, in pp of pooled test DSC, the causes that need no new "
        "training: another draw of the test images (bootstrap), selecting the checkpoint on "
        "the test split as the authors did (from the run's log), the data preparation (the "
        "same test images from a full-resolution folder, --full-res), duplicate images a "
        "plain random split leaks, and the spread over training seeds. Writes "
        "RESULTS/paper-gap/<dataset>/<model>-<experiment>-s<seed>.json; `segbench report` "
        "shows it. Weights: the run's checkpoints/best.pt, else the committed weights it "
        "published.",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="finished run folders")
    p.add_argument("--data", type=Path, default=None,
                   help="the run's dataset folder (default: the path its config records)")  # fmt: skip
    p.add_argument(
        "--full-res", type=Path, default=None, metavar="DIR",
        help="a folder holding some of the run's test images at full resolution (e.g. "
        "../shared/data/isic2017-mini): measures the data-preparation effect",
    )  # fmt: skip
    p.add_argument(
        "--ablation", type=Path, default=None, metavar="RUN_DIR",
        help="a finished run of the same model, seed and split that keeps one of the "
        "authors' habits (e.g. recipe paper-fixed-angle): its test DSC minus the run's, on "
        "the same images (one RUN_DIR only)",
    )  # fmt: skip
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="results folder (default: results)")  # fmt: skip
    p.add_argument("--resamples", type=int, default=2000,
                   help="bootstrap resamples (default: 2000)")  # fmt: skip
    p.add_argument("--draws", type=int, default=1000,
                   help="random 7:3 draws for the duplicate-leak count (default: 1000)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_paper_gap)
