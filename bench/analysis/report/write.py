"""write_report: read results/, write tables/, plots/ and README.md."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench.analysis.report.accuracy import accuracy_summary
from bench.analysis.report.experiments import experiment_comparisons, experiment_table
from bench.analysis.report.figures import _accuracy_plots, _efficiency_plots
from bench.analysis.report.gap import gap_tables, gap_verdict, load_gaps
from bench.analysis.report.headline import headline_block, update_readme
from bench.analysis.report.hosts import check_hosts, deploy_host
from bench.analysis.report.inventory import unknown_files
from bench.analysis.report.load import (
    RESULTS_DIR,
    ReportInputError,
    ReportOutput,
    Results,
    load_results,
)
from bench.analysis.report.plots import _model_colours
from bench.analysis.report.protocols import is_smoke, paper_vs_measured, split_protocols
from bench.analysis.report.provenance import meta_runs
from bench.analysis.report.readme import _readme
from bench.analysis.report.significance import comparison_table, report_comparisons
from bench.analysis.report.summaries import (
    _paper_datasets,
    accuracy_table,
    baseline_rows,
    external_table,
    summary_table,
)
from bench.analysis.report.tables import (
    Col,
    _accuracy_cols,
    _comparison_cols,
    _deployment_cols,
    _efficiency_cols,
    _experiment_cmp_cols,
    _experiment_cols,
    _external_cols,
    _paper_gap_cols,
    _paper_vs_measured_cols,
    _speed_cols,
    render,
)
from bench.analysis.runinfo import with_run_info
from bench.analysis.runs import RUN_METRICS_GLOB
from bench.core.io import write_csv, write_text
from bench.core.progress import progress_bar


def _input_label(res: Results) -> str:
    comp = res.complexity
    for col in ("input_shape", "input_size"):
        if col in comp and comp[col].notna().any():
            val = str(comp[col].dropna().iloc[0])
            nums = re.findall(r"\d+", val)
            return "x".join(nums) if nums else val
    shape = res.complexity_meta.get("input_shape")
    if isinstance(shape, (list, tuple)):
        return "x".join(str(s) for s in shape)
    return "not recorded"  # never a default: a title must describe the data behind it


def _write_table(
    out: Path,
    name: str,
    df: pd.DataFrame,
    cols: Sequence[Col],
    report: ReportOutput,
    note: str = "",
) -> None:
    csv, md = render(df, cols)
    report.tables.append(write_csv(out / "tables" / f"{name}.csv", csv))
    report.tables.append(
        write_text(out / "tables" / f"{name}.md", (note + "\n\n" if note else "") + md + "\n")
    )
    report.markdown[name] = md


def write_report(
    results_dir: str | Path = RESULTS_DIR,
    out_dir: str | Path | None = None,
    command: str | None = None,
    progress: bool = True,
    project_readme: str | Path | None = None,
) -> ReportOutput:
    """Read ``results_dir`` and write tables, plots and README.md under ``out_dir``; with
    ``project_readme``, also the generated block of that README (between the markers of
    :mod:`bench.analysis.report.headline`; a README without them is left alone)."""

    from bench.core.env import environment

    res = load_results(results_dir)
    check_hosts(res)  # one host and one measuring run per speed or deployment table
    out = Path(out_dir) if out_dir is not None else Path(results_dir)
    command = command or "bench.analysis.report.write.write_report(" + repr(str(results_dir)) + ")"
    report = ReportOutput()
    if not res.models:
        raise ReportInputError(
            f"{results_dir}: no result files found (expected complexity/complexity.csv, "
            f"speed/speed-*.csv or {RUN_METRICS_GLOB}); run `segbench benchmark` first"
        )
    steps = progress_bar(total=4, desc="report", enabled=progress, leave=False)
    summary = summary_table(res)
    input_label = _input_label(res)
    dev_label = res.device_name(res.primary_device) if res.primary_device else None

    steps.set_postfix_str("tables")
    _write_table(
        out,
        "summary",
        summary,
        _efficiency_cols(dev_label) + _accuracy_cols(*_summary_datasets(summary))[1:],
        report,
    )
    _write_table(out, "efficiency", summary, _efficiency_cols(dev_label), report)
    datasets, paper_keys = _datasets(summary)
    if datasets or paper_keys:
        # the headline protocol and the smoke protocol never share a table
        headline, smoke = split_protocols(accuracy_table(res, summary, baseline_rows(res)))
        if not headline.empty:
            _write_table(out, "accuracy", headline, _experiment_cols(paper_keys), report)
        if not smoke.empty:
            # no paper columns beside smoke numbers: they are not comparable
            _write_table(out, "accuracy-smoke", smoke, _experiment_cols([]), report)
    acc_rows = accuracy_summary(res.runs)
    for model, pvm in paper_vs_measured(acc_rows, with_run_info(res.runs)).items():
        _write_table(out, f"paper-vs-measured-{model}", pvm, _paper_vs_measured_cols(), report)
    gaps = load_gaps(results_dir)
    for model, rows in gap_tables(gaps).items():
        _write_table(out, f"paper-gap-{model}", rows, _paper_gap_cols(), report)
    for rec in gaps:
        report.gap_verdicts.setdefault(rec["model"], []).append(gap_verdict(rec))
    comparisons, _ = report_comparisons(res)
    if not comparisons.empty:
        _write_table(out, "comparisons", comparison_table(comparisons), _comparison_cols(), report)
    exps = experiment_comparisons(res)
    if not exps.empty:
        _write_table(out, "experiments", experiment_table(exps), _experiment_cmp_cols(), report)
    ext, targets = external_table(res)
    if not ext.empty:
        _write_table(out, "external", ext, _external_cols(targets), report)
    if not res.deploy.empty:
        _write_table(
            out,
            "deployment",
            res.deploy,
            _deployment_cols(),
            report,
            note=f"Deployment variants measured on {deploy_host(res) or 'a host not recorded'}.",
        )
    for slug in res.devices:
        sort = [c for c in ("model", "backend", "mode", "batch_size") if c in res.speed[slug]]
        rows = res.speed[slug].sort_values(sort, kind="stable")
        _write_table(
            out,
            f"speed-{slug}",
            rows,
            _speed_cols(),
            report,
            note=f"Speed on {res.device_name(slug)} ({slug}).",
        )
    steps.update()

    colours = _model_colours(res.models)
    steps.set_postfix_str("efficiency plots")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight_layout chatter on small axes
        _efficiency_plots(res, summary, out, colours, input_label, report)
        steps.update()
        steps.set_postfix_str("pareto plots")
        _accuracy_plots(res, summary, out, colours, input_label, report)
    steps.update()

    _remove_stale(out, report)
    report.unknown = unknown_files(
        results_dir,
        [*report.tables, *report.plots],
        check_report_folders=out.resolve() == Path(results_dir).resolve(),
    )
    env_dev = "cuda" if (res.primary_device or "").startswith("cuda") else "cpu"
    try:
        env = environment(env_dev)
    except (RuntimeError, AssertionError):  # CUDA results read on a machine without CUDA
        env = environment("cpu")
    speed_runs = meta_runs(res.speed_meta.get(res.primary_device or "", {}))
    speed_env = speed_runs[-1].get("environment") if speed_runs else None
    env_source = "the machine running this report"
    if isinstance(speed_env, dict):  # the machine that timed the models, not the reader
        env = {**env, **{k: v for k, v in speed_env.items() if v is not None}}
        env_source = f"the machine that produced speed/speed-{res.primary_device}.csv"
    text = _readme(res, out, report, command, input_label, env, env_source)
    if res.problems:  # named in the report, not only on stderr (issue 28, items 1, 6, 11)
        text += (
            "\n## Inputs left out or damaged\n\n" + "\n".join(f"- {p}" for p in res.problems) + "\n"
        )
    report.readme = write_text(out / "README.md", text)
    if project_readme is not None:
        acc_rows = accuracy_table(res, summary, baseline_rows(res))
        block = headline_block(res, summary, acc_rows, comparisons)
        try:
            report.project_readme = update_readme(project_readme, block)
        except ValueError as err:
            raise ReportInputError(str(err)) from err
    steps.update()
    steps.close()
    return report


# The report's own output names; files of these names not written by this run are stale
# (a dataset or device that is gone) and removed. Other files in tables/ stay.
_OWN_OUTPUTS = {
    "plots": (
        "pareto-*.png",
        "pareto-*.svg",
        "efficiency-*.png",
        "efficiency-*.svg",
        "roofline-*.png",
        "roofline-*.svg",
    ),
    "tables": (
        "summary.*",
        "efficiency.*",
        "accuracy.*",
        "accuracy-smoke.*",
        "paper-vs-measured-*",
        "paper-gap-*",
        "comparisons.*",
        "external.*",
        "experiments.*",
        "deployment.*",
        "speed-*.csv",
        "speed-*.md",
    ),
}


def _remove_stale(out: Path, report: ReportOutput) -> None:
    written = {p.resolve() for p in report.tables + report.plots}
    for folder, patterns in _OWN_OUTPUTS.items():
        for pattern in patterns:
            for path in (out / folder).glob(pattern):
                if path.resolve() not in written:
                    path.unlink()


def _summary_datasets(summary: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The per-model summary's (measured datasets, paper dataset keys): the headline
    protocol's with the papers' figures, or, when nothing else is measured, the smoke
    protocol's without them (never both protocols in one table, and no paper figure
    beside a smoke score: its subset and schedule are not the papers')."""
    measured, paper = _datasets(summary)
    headline = [d for d in measured if not is_smoke(d)]
    if headline or not measured:
        return headline, paper
    return measured, []


def _datasets(summary: pd.DataFrame) -> tuple[list[str], list[str]]:
    measured = sorted({c.split(":")[0] for c in summary.columns if c.endswith(":dsc_mean")})
    paper = _paper_datasets(summary)
    return measured, paper
