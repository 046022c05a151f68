"""``segbench report``: argument parsing for :func:`bench.analysis.report.write.write_report`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from bench.analysis.report.load import RESULTS_DIR, ReportInputError
from bench.analysis.report.write import write_report


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        cmd = ["segbench", "report"]
        if Path(args.results) != RESULTS_DIR:
            cmd += ["--results", str(args.results)]
        if args.report_dir is not None:
            cmd += ["--report-dir", str(args.report_dir)]
        readme = args.readme
        if readme is None:  # the project README beside the results folder, if it has markers
            readme = Path(args.results).resolve().parent / "README.md"
        rep = write_report(
            args.results,
            args.report_dir,
            command=shlex.join(cmd),
            progress=not args.quiet,
            project_readme=readme,
        )
    except ReportInputError as err:
        print(f"segbench report: {err}", file=sys.stderr)
        return 2
    if rep.unknown:
        print(
            f"segbench report: WARNING: {len(rep.unknown)} file(s) under {args.results} that no "
            "segbench command writes or that are stale (listed in README.md, 'Files no "
            "command writes'); delete or regenerate them:\n"
            + "\n".join(f"  {u}" for u in rep.unknown),
            file=sys.stderr,
        )
        if args.strict:
            return 1
    if not args.quiet:
        print(rep.markdown.get("efficiency", ""))
        print(
            f"\nwrote {len(rep.tables)} table files, {len(rep.plots)} plot files and {rep.readme}"
            + (
                f"; updated the generated block of {rep.project_readme}"
                if rep.project_readme
                else ""
            )
        )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="tables, Pareto plots and results/README.md from results/",
        description="Read every result file under --results (complexity, speed per device, "
        "finished training runs, their evaluations on other data, trivial baselines) and "
        "write Markdown + CSV tables (accuracy per experiment, comparisons tested over seeds, "
        "external validation; tables/), Pareto and efficiency plots as PNG + SVG (plots/) and README.md into --results (or --report-dir).",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help="results folder to read (default: %(default)s)",
    )
    p.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="write tables/, plots/ and README.md there instead of into --results",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or table print-out")
    p.add_argument(
        "--readme",
        type=Path,
        default=None,
        metavar="FILE",
        help="project README whose generated block (between the segbench report markers) "
        "is rewritten (default: README.md beside --results; left alone without markers)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a file under --results is one no segbench command writes, or is "
        "stale (e.g. a stats file written under an older comparison rule); default: warn",
    )
    p.set_defaults(func=_cmd_report)
