"""The report's README.md: tables, plots, provenance of every input."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from bench.analysis.report.claims import OVERHEAD_FRACTION
from bench.analysis.report.deployment import best_variant_lines
from bench.analysis.report.external import source_lines
from bench.analysis.report.figures import speed_input_label
from bench.analysis.report.load import ReportOutput, Results
from bench.analysis.report.protocols import SEED_MODELS, is_smoke, protocol_lines
from bench.analysis.report.provenance import env_lines, provenance_line, provenance_section
from bench.analysis.report.significance import ALPHA, report_comparisons
from bench.analysis.runinfo import with_run_info
from bench.analysis.runs import EXPERIMENT_KEY, experiment_differences
from bench.analysis.stats import MIN_SEEDS, MIN_SEEDS_BOOTSTRAP

_EFFICIENCY_NOTE = (
    "MACs: segbench's dispatch-level count (multiply-accumulates of conv, linear, "
    "matmul, attention). 'GFLOPs papers' convention' is thop's MAC count, which the "
    "papers print as GFLOPs. Latency: median of timed runs at batch 1, inference, "
    "fp32, marked noisy where bench.speed flags it (IQR above 10% of the median, or "
    "stopped at its time cap); "
    "throughput: best over the batch sizes measured; train step: forward, "
    "backward and AdamW step (models the time budget left out have none). Peak "
    "memory: CUDA max allocated on a GPU; on a CPU the model's own increase of the "
    "process's peak RSS (RSS delta) where the speed file records it, else the whole "
    "process's RSS, which includes the interpreter and libraries (labelled so). Roofline: achieved fraction of the "
    "device's roofline bound at batch 1; 'limiter' names what limits eager PyTorch at "
    "batch 1 from the numbers: compute- or memory-bound when the model reaches at least "
    f"{100 * OVERHEAD_FRACTION:.0f}% of that bound, overhead-bound (per-operator dispatch "
    "and small kernels) when it stays below that share of both bounds. A train-step value "
    "marked 'time-capped' stopped at the speed run's time cap after fewer iterations than "
    "asked, 'noisy' had a wide spread: read them as approximate. Where thop saw fewer "
    "parameters than the model has (modules it has no rule for), the papers'-convention "
    "column says how many it counted: its MACs miss their work. Every configuration is in "
    "the speed tables below."
)

_EXPERIMENTS_NOTE = (
    "Each model's main experiment (A, the one in the plots) against each of its other "
    "experiments on the same dataset (B: another precision, loss, lr, ...; 'B differs "
    "in' lists every setting that changes), on per-image Dice of the same test images. "
    f"Tested like the model comparisons: with >= {MIN_SEEDS} seeds on both sides over "
    "seeds (Welch t-test and Welch t interval on per-seed means), claimed only "
    "when the Holm-adjusted p (across the rows of this table tested over seeds) is below "
    f"{ALPHA:g} and the interval excludes 0; with fewer seeds a per-image test that is never "
    "claimed and not adjusted. Differences are A − B. 'not significant' means the difference is within what the seeds and "
    "images allow to resolve, not that it is zero."
)

_EXTERNAL_NOTE = (
    "The derived sets (`segbench data derive --shift`: the same test images with a "
    "photometric change) measure robustness to colour and contrast change, not "
    "generalisation to another dataset: on a held-out real external dermoscopy set, an "
    "earlier session measured drops several times larger than these sets predicted "
    "(issue 23; those evaluation files are not under results/, so no number of theirs "
    "is printed here). "
    "Rows: models trained on one dataset (the experiment, n seeds); columns: another "
    "dataset (and split) they were scored on with `segbench evaluate --run`. Each cell: "
    "pooled DSC (%) mean ± std over the seeds scored there, and in parentheses the drop "
    "from in-domain (that seed's DSC there minus its own test DSC, percentage points), "
    "mean ± std over seeds; n is given where fewer seeds were scored than trained. "
    "Sets built with `segbench data derive --shift`: a shift that is affine and the "
    "same for every channel (`dim`: x0.7 + 20) is undone by the per-image min-max "
    "input scaling (`minmax255`), so its drop is near 0 by construction; nonlinear "
    "(`gamma`, `blur`) and per-channel (`colour-cast`) shifts are not undone."
)

_DEPLOYMENT_NOTE = (
    "Each model exported to ONNX and run in reduced precision beside eager PyTorch "
    "fp32, with the same weights (`segbench export --run RUN --int8 dynamic,static "
    "--bf16 --data DATA`; the CSV holds each row's command and commit). Latency: "
    "median at batch 1 on the CPU named in the CSV, with the 1-minute load average "
    "when it was measured. Output agreement on test images against eager fp32 "
    "(largest logit difference relative to the logit range; share of thresholded mask "
    "pixels that differ), and the pooled test DSC of each variant with its change "
    "from eager fp32 in percentage points (trained weights only). int8: onnxruntime "
    "quantization, dynamic and static (calibrated on training images). bf16 rows "
    "on a CPU without native bf16 are emulated and say so by their latency; a "
    "skipped row gives the reason."
)


def _section(report: ReportOutput, title: str, name: str, note: str = "") -> list[str]:
    """A table's README section (title, note, the Markdown table, its CSV), if written."""
    if name not in report.markdown:
        return []
    lines = [f"## {title}", ""]
    if note:
        lines.extend([note, ""])
    lines.extend([report.markdown[name], "", f"CSV: [`tables/{name}.csv`](tables/{name}.csv)", ""])
    return lines


def _header(
    res: Results, command: str, input_label: str, env: dict[str, Any], env_source: str
) -> list[str]:
    """Title, the command, the inputs' shapes and the machine."""
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        "# segbench results",
        "",
        "Generated by segbench's report module from the result files in this folder; "
        "every number below was produced by a command of this repository. "
        "Regenerate with the command shown.",
        "",
        "## How these numbers were made",
        "",
        f"- command: `{command}`",
        f"- report written: {when}",
        f"- input of the complexity counts: {input_label}",
        *(
            f"- input of the speed measurements on {res.device_name(d)}: {speed_input_label(res, d)}"
            for d in res.devices
        ),
        f"- machine ({env_source}):",
        *("  " + line for line in env_lines(env)),
        "",
    ]


def _benchmark_stages(bench: dict[str, Any]) -> list[str]:
    """The last ``segbench benchmark`` run's stages, if ``benchmark.json`` is there."""
    lines: list[str] = []
    if bench.get("stages"):
        lines += [
            f"Last `segbench benchmark` run: `{bench.get('command', '?')}` "
            f"(profile {bench.get('profile', '?')}, device {bench.get('device', '?')}).",
            "",
            "| stage | status | time (s) | detail |",
            "|:--|:--|--:|:--|",
        ]
        for st in bench["stages"]:
            detail = str(st.get("detail", "")).replace("|", "\\|")
            lines.append(
                f"| {st.get('name')} | {st.get('status')} | "
                f"{float(st.get('seconds', 0)):.1f} | {detail} |"
            )
        lines.append("")
    return lines


def _inputs(res: Results) -> list[str]:
    """Which result files the report read, with their provenance."""
    lines = ["Inputs:", ""]
    if res.complexity_meta or not res.complexity.empty:
        lines.append(f"- `complexity/complexity.csv`: {provenance_line(res.complexity_meta)}")
    lines += source_lines(res)  # where each external model comes from
    for slug in res.devices:
        lines.append(
            f"- `speed/speed-{slug}.csv` ({res.device_name(slug)}): "
            f"{provenance_line(res.speed_meta.get(slug, {}))}"
        )
    if not res.runs.empty:
        n = len(res.runs)
        n_exp = len(res.runs.drop_duplicates(EXPERIMENT_KEY))
        lines.append(
            f"- `runs/`: {n} finished training run(s), {n_exp} experiment(s) (one "
            "configuration except the seed, one precision), "
            f"{res.runs['dataset'].nunique()} dataset(s); each row's command, commit, machine "
            "and versions are listed under 'Provenance of the accuracy rows'"
        )
    if not res.external.empty:
        lines.append(
            f"- `runs/*/*/*/seed*/eval/`: {len(res.external)} evaluation(s) of trained runs on "
            "other data (`segbench evaluate --run`)"
        )
    if not res.baselines.empty:
        lines.append(
            f"- `baselines/`: {len(res.baselines)} trivial predictor(s) scored on the runs' "
            "test split: "
            + "; ".join(sorted({f"`{c}`" for c in res.baselines["command"] if c}) or {"?"})
        )
    lines.append("")
    return lines


def _accuracy_note(res: Results, smoke: bool = False) -> str:
    runs = with_run_info(res.runs)
    lines = protocol_lines(runs, smoke)
    if smoke:
        head = (
            "**Smoke protocol**: a small subset that checks training end to end. Its "
            "numbers are not comparable with the papers' tables or with the headline "
            "protocol, and never share a table or a plot axis with them.\n\n"
        )
    else:
        head = (
            "**Headline protocol**: the full data the papers used (for ISIC 2017 the "
            "Part 1 train + validation pool the papers split 7:3).\n\n"
        )
    note = (
        head
        + ("\n".join(lines) + "\n\n" if lines else "")
        + (
            "One row per experiment: the same configuration except the training seed, trained "
            "in the same precision (the precision a run really used; a CPU bf16 run that fell "
            "back to fp32 says so). Runs that differ in anything else (lr, epochs, recipe, "
            "input size, precision) are never averaged together; 'differs in' names what "
            "tells experiments of one model, recipe and epoch count apart. "
            "Measured: mean ± std over seeds (std shown from 2 seeds on; 'seeds' is n); DSC and "
            "mIoU pooled over all test pixels (the papers' convention), Dice per image averaged "
            "over images, HD95 in pixels at the evaluation resolution, averaged over the images "
            "where it is defined, with the number of images where it is undefined (empty "
            "prediction or empty mask) summed over seeds. 'baseline' rows are trivial "
            "predictors scored on the same test split (`segbench baselines`): the floor. "
            "'paper' columns are the papers' printed figures on their own (full) test splits, "
            "not measured here. The significance column lists only differences tested over "
            "seeds (see 'Model comparisons'). Also per row: pooled accuracy, sensitivity and "
            "specificity (the papers' other metrics); the share of test images with per-image "
            "Dice below 0.8; training time per seed (training + validation summed over every "
            "epoch, across resumes; from log.csv for runs older than that record); T_max and "
            "the learning rate after the last epoch as a multiple of its peak; how many seeds "
            "selected their last epoch; and 'code': the training-code fingerprint the seeds "
            "share (seeds of different fingerprints are separate rows) or, for runs older than "
            "the fingerprint, 'unrecorded' with the commits and hosts they came from."
        )
    )
    mine = res.runs[res.runs["dataset"].map(is_smoke) == smoke] if not res.runs.empty else res.runs
    diffs = experiment_differences(mine) if not mine.empty else []
    if diffs:
        note += "\n\nExperiments that differ:\n\n" + "\n".join(f"- {d}" for d in diffs)
    return note


def _comparisons_note(res: Results) -> str:
    _, skipped = report_comparisons(res)
    note = (
        "Each model's main experiment (the one in the plots) against every other model's "
        "on the same dataset, recipe and epochs, on per-image Dice of the test images. "
        "Every difference is A − B (positive: A scores higher). "
        f"With >= {MIN_SEEDS} seeds per model the difference is tested over seeds, the "
        "seed being the unit of replication: a Welch t-test on the per-seed means and the "
        "95% Welch t interval of the difference of seed means, which is wide at 3 seeds, "
        "as 3 seeds allow. A crossed bootstrap (images shared by every seed and model, "
        "seeds resampled per model) is in the CSV only: with fewer than "
        f"{MIN_SEEDS_BOOTSTRAP} seeds it resamples too few seed sets and gives intervals "
        "that are too narrow. A difference is claimed only when the Holm-adjusted p "
        "(Holm over the rows tested over seeds, the only ones that can be claimed) is "
        f"below {ALPHA:g} and the interval excludes 0; the unadjusted p stands beside it, "
        "and where the two disagree the note shows both. With fewer seeds the row is a "
        "per-image test (Wilcoxon signed-rank, paired bootstrap CI over images) of one "
        "training run per model: it says how the runs differ on these images, not that "
        "the models do; it is never claimed and not adjusted. Each side pools only seeds "
        "of one code fingerprint ('code' in the accuracy tables); runs older than the "
        "fingerprint are pooled as 'unrecorded', and the note says when their seeds ran "
        "different commits or hosts, which then adds to their spread."
    )
    if skipped:
        note += "\n\nNot compared (no usable per-image scores):\n\n" + "\n".join(
            f"- {s}" for s in skipped
        )
    return note


def _no_headline(res: Results) -> list[str]:
    """The headline section when no headline-protocol run is committed yet: say so."""
    if res.runs.empty:
        return []
    return [
        "## Accuracy: headline protocol",
        "",
        "No finished run on the headline protocol (e.g. `isic2017-256`: the ISIC 2017 "
        "Part 1 pool the papers split 7:3) is under runs/ yet; the accuracy measured so far is the "
        "smoke protocol's below, which is not comparable with the papers.",
        "",
    ]


def _paper_sections(report: ReportOutput) -> list[str]:
    """One "paper vs measured" table per seed model (protocols.paper_vs_measured), each
    followed by its measured causes (report.gap) when `segbench paper-gap` has run; then
    the causes of other models measured against their papers."""
    lines: list[str] = []
    others = sorted(m for m in report.gap_verdicts if m not in SEED_MODELS)
    for model in (*SEED_MODELS, *others):
        name = f"paper-vs-measured-{model}"
        lines += _section(
            report,
            f"Paper vs measured: {model}",
            name,
            "The paper's five metrics as printed (`model_info(name).reported`) beside the "
            "same metrics measured here on the headline protocol, pooled over all test "
            "pixels as the authors compute them; mean ± std over seeds. The caveats "
            "column names what still separates the two (data preparation, split, model "
            "selection).",
        )
        gap = _section(
            report,
            f"What separates {model}'s measured DSC from its paper's",
            f"paper-gap-{model}",
            "Each cause measured by `segbench paper-gap RUN --full-res "
            "../shared/data/isic2017-mini` (one record per run under `paper-gap/`), in "
            "percentage points of the pooled test DSC; each row says what it compares and "
            "in which direction. Causes not listed (the authors' code defects, other "
            "library versions) are not measured.",
        )
        verdicts = [f"- {v}" for v in report.gap_verdicts.get(model, [])]
        if gap and verdicts:  # after the title and the note, before the table
            gap[4:4] = [*verdicts, ""]
        lines += gap
    return lines


def _unknown_section(report: ReportOutput) -> list[str]:
    """Files under results/ that no command writes, or stale ones: listed, not hidden."""
    if not report.unknown:
        return []
    return [
        "## Files no command writes",
        "",
        "**Warning**: these files under the results folder are not written by any "
        "segbench command, or were written under an older rule; nothing here read them. "
        "Delete or regenerate them.",
        "",
        *(f"- `{u.split(': ', 1)[0]}`: {u.split(': ', 1)[1]}" for u in report.unknown),
        "",
    ]


def _plots(report: ReportOutput, out: Path) -> list[str]:
    """The plots section: how to read the panels, which experiment each point shows."""

    def rel(p: Path) -> str:
        return p.relative_to(out).as_posix()

    lines: list[str] = []
    if report.figures:
        lines.extend(
            [
                "## Plots",
                "",
                "Left panel: measured by segbench (filled markers, bars = std over seeds; "
                "the Pareto front drawn from every measured model; dashed lines = trivial "
                "baselines). Right panel, on its own axis: the papers' reported accuracy "
                "on their own test splits (hollow markers; cost measured here where "
                "segbench has the model, else as printed); its front combines those "
                "reported accuracies with these costs and is labelled so. No line joins "
                "a measured point to a reported one: they are not on one scale. Step "
                "lines: Pareto fronts (lower cost, higher accuracy), front models in "
                "bold. An SVG version lies beside each PNG.",
                "",
            ]
        )
        if report.point_sources:
            lines.extend(
                [
                    "Each model's measured point shows its experiment with the most epochs "
                    "(ties: more seeds, then fp32), never a paper-recipe run (it selects its "
                    "checkpoint on the test split); the accuracy table lists every experiment.",
                    "",
                ]
            )
            for dataset, sources in sorted(report.point_sources.items()):
                lines.append(f"Measured points on {dataset}:")
                lines.extend(f"- {src}" for src in sources)
                lines.append("")
        for group, heading in (
            ("efficiency", "Cost vs cost"),
            ("accuracy", "Accuracy vs cost (Pareto fronts)"),
        ):
            figs = [f for f in report.figures if f[0] == group]
            if figs:
                lines.extend([f"### {heading}", ""])
            for _, png, caption in figs:
                lines.extend([f"**{caption}**", "", f"![{caption}]({rel(png)})", ""])
    return lines


def _readme(
    res: Results,
    out: Path,
    report: ReportOutput,
    command: str,
    input_label: str,
    env: dict[str, Any],
    env_source: str = "the machine running this report",
) -> str:
    lines = [
        *_header(res, command, input_label, env, env_source),
        *_benchmark_stages(res.benchmark),
        *_inputs(res),
        *_section(report, "Efficiency", "efficiency", _EFFICIENCY_NOTE),
        *(
            _section(report, "Accuracy: headline protocol", "accuracy", _accuracy_note(res))
            or _no_headline(res)
        ),
        *_paper_sections(report),
        *_section(
            report,
            "Accuracy: smoke protocol (not comparable with the papers)",
            "accuracy-smoke",
            _accuracy_note(res, smoke=True),
        ),
        *_section(report, "Model comparisons", "comparisons", _comparisons_note(res)),
        *_section(
            report,
            "Experiment comparisons: one model trained two ways",
            "experiments",
            _EXPERIMENTS_NOTE,
        ),  # fmt: skip
        *_section(
            report,
            "Evaluation on other data (derived sets: robustness to colour and contrast change)",
            "external",
            _EXTERNAL_NOTE,
        ),
        *_section(report, "Deployment precision: int8 and bf16", "deployment", _DEPLOYMENT_NOTE),
        *best_variant_lines(res, "deployment" in report.markdown),
        *provenance_section(res),
        *_unknown_section(report),
        *_plots(report, out),
    ]
    for slug in res.devices:
        lines += _section(
            report,
            f"Speed on {res.device_name(slug)}",
            f"speed-{slug}",
            "Every configuration measured (one row each); skipped ones give a reason.",
        )
    return "\n".join(lines).rstrip() + "\n"
