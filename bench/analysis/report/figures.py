"""The report's figures: accuracy-vs-cost Pareto plots and efficiency plots."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis.report.load import ReportOutput, Results
from bench.analysis.report.plots import Point, plot_pareto, plot_scatter
from bench.analysis.report.summaries import (
    _paper_datasets,
    accuracy_summary,
    main_experiments,
    paper_dataset,
    paper_summary,
    speed_summary,
)


def _cost_points(summary: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per model: params (M), MACs (G), latency (ms), measured where possible else paper."""
    out: dict[str, dict[str, float]] = {}
    for _, r in summary.iterrows():
        c: dict[str, float] = {}
        params = r.get("params_total")
        c["params"] = params / 1e6 if pd.notna(params) else r.get("paper_params_m", math.nan)
        macs = r.get("macs")
        c["macs"] = macs / 1e9 if pd.notna(macs) else r.get("paper_gflops", math.nan)
        c["latency"] = r.get("latency_ms", math.nan)
        out[r["model"]] = {k: float(v) if pd.notna(v) else math.nan for k, v in c.items()}
    return out


def _accuracy_plots(
    res: Results,
    summary: pd.DataFrame,
    out: Path,
    colours: dict[str, Any],
    input_label: str,
    report: ReportOutput,
) -> None:
    acc = main_experiments(accuracy_summary(res.runs))
    paper = paper_summary(summary["model"])
    paper_keys = _paper_datasets(paper)
    measured_sets = sorted(acc["dataset"].unique()) if not acc.empty else []
    # (measured dataset or None, paper key or None) pairs, one figure set each.
    pairs: list[tuple[str | None, str | None]] = [(d, paper_dataset(d)) for d in measured_sets]
    covered = {p for _, p in pairs}
    pairs += [(None, k) for k in paper_keys if k not in covered]
    costs = _cost_points(summary)
    axes = [
        ("params", "Parameters (M, log scale)", "params", None),
        ("macs", "MACs per image (G, segbench count, log scale)", "macs", None),
    ]
    for dev in res.devices:
        axes.append(
            (
                f"latency-{dev}",
                f"Latency at batch 1 (ms, log scale), {res.device_name(dev)}",
                "latency",
                dev,
            )
        )
    for dataset, pkey in pairs:
        rows = acc[acc["dataset"] == dataset] if dataset else acc.iloc[0:0]
        # Models trained for different epochs are not like for like: say so on the plot.
        mixed = rows["epochs"].nunique() > 1 or rows["recipe"].nunique() > 1
        if dataset and not rows.empty:
            report.point_sources[dataset] = [
                f"{r['model']}: recipe {r['recipe']}, {r['epochs']} epochs, "
                f"{r['n_seeds']} seed(s) ({r['seeds']}), "
                f"`runs/{dataset}/{r['model']}/{r['experiment']}/`"
                for _, r in rows.iterrows()
            ]
        for name, xlabel, key, dev in axes:
            if dev is not None and dev != res.primary_device:
                dev_costs = (
                    {
                        m: {"latency": v}
                        for m, v in speed_summary(res.speed[dev])
                        .set_index("model")["latency_ms"]
                        .items()
                    }
                    if "latency_ms" in speed_summary(res.speed[dev])
                    else {}
                )
            else:
                dev_costs = costs
            pts: list[Point] = []
            for _, r in rows.iterrows():
                x = dev_costs.get(r["model"], {}).get(key, math.nan)
                if math.isfinite(x):
                    pts.append(
                        Point(
                            r["model"],
                            x,
                            r["dsc_mean"],
                            "measured",
                            r.get("dsc_std", math.nan),
                            label=f"{r['model']} ({r['epochs']} ep)" if mixed else None,
                        )
                    )
            if pkey is not None and f"paper_{pkey}_dsc" in paper:
                for _, r in paper.iterrows():
                    x = dev_costs.get(r["model"], {}).get(key, math.nan)
                    y = r[f"paper_{pkey}_dsc"]
                    if math.isfinite(x) and pd.notna(y):
                        pts.append(Point(r["model"], x, float(y), "reported"))
            if not pts:
                continue
            what = {"params": "parameters", "macs": "MACs"}.get(key, "latency")
            head = f"Pooled DSC vs {what}, input {input_label}"
            if key == "latency":
                head += f", {res.device_name(dev)} (batch 1, fp32)"  # type: ignore[arg-type]
            where = []
            if dataset and not rows.empty and mixed:
                eps = ", ".join(f"{r['model']} {r['experiment']}" for _, r in rows.iterrows())
                where.append(f"measured on {dataset}, epochs differ: {eps}")
            elif dataset and not rows.empty:
                r0 = rows.iloc[0]
                where.append(f"measured on {dataset} ({r0['recipe']}, {r0['epochs']} epochs)")
            if pkey:
                where.append(f"reported: papers' {pkey.upper()} test split")
            # One line per clause: a long list of experiments would run off the figure.
            title = "\n".join([head, *(textwrap.fill(w, 100) for w in where)])
            tag = dataset or pkey
            paths = plot_pareto(
                pts,
                xlabel,
                "DSC, pooled over test pixels (%)",
                title,
                out / "plots" / f"pareto-dsc-vs-{name}-{tag}",
                colours,
                logx=True,
            )
            report.add_figure("accuracy", paths, title)


def _efficiency_plots(
    res: Results,
    summary: pd.DataFrame,
    out: Path,
    colours: dict[str, Any],
    input_label: str,
    report: ReportOutput,
) -> None:
    s = summary
    if {"params_total", "macs"} <= set(s.columns):
        ok = s[s["params_total"].notna() & s["macs"].notna()]
        hollow = []
        if "paper_params_m" in s:
            hollow = [
                (r["paper_params_m"], r["paper_gflops"], r["model"])
                for _, r in s.iterrows()
                if pd.notna(r.get("paper_params_m")) and pd.notna(r.get("paper_gflops"))
            ]
        if not ok.empty:
            title = f"Model size vs compute, input {input_label}"
            paths = plot_scatter(
                list(ok["params_total"] / 1e6),
                list(ok["macs"] / 1e9),
                list(ok["model"]),
                "Parameters (M, log scale)",
                "MACs per image (G, segbench count, log scale)",
                title,
                out / "plots" / "efficiency-params-vs-macs",
                colours,
                hollow=hollow,
                hollow_label="reported (paper: params, GFLOPs = thop MACs)",
            )
            report.add_figure("efficiency", paths, title)
    for dev in res.devices:
        sp = speed_summary(res.speed[dev])
        if "latency_ms" not in sp or "macs" not in s:
            continue
        m = s[["model", "macs"]].merge(sp[["model", "latency_ms"]], on="model").dropna()
        if m.empty:
            continue
        gmacs = m["macs"] / 1e9
        # Reference line at the median achieved rate: points above it run slower than
        # their MAC count suggests (memory- or overhead-bound).
        rate = float(np.median(m["latency_ms"] / gmacs))
        title = f"Compute vs latency, {res.device_name(dev)}, fp32, input {input_label}"
        paths = plot_scatter(
            list(gmacs),
            list(m["latency_ms"]),
            list(m["model"]),
            "MACs per image (G, segbench count, log scale)",
            "Latency at batch 1 (ms, median, log scale)",
            title,
            out / "plots" / f"efficiency-macs-vs-latency-{dev}",
            colours,
            ref_rate=rate,
            ref_label=f"median rate: {1e3 / rate:.1f} GMAC/s "
            "(above the line = slower than MACs predict)",
        )
        report.add_figure("efficiency", paths, title)
