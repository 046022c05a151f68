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
    backend_latencies,
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
        c["best_latency"] = r.get("best_latency_ms", math.nan)
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
    backend_of = (
        summary.set_index("model")["best_backend"].dropna().to_dict()
        if "best_backend" in summary
        else {}
    )
    if res.primary_device and any(b != "torch" for b in backend_of.values()):
        dev = res.primary_device
        axes.append(
            (
                f"best-latency-{dev}",
                f"Latency at batch 1, fastest fp32 backend (ms, log scale), {res.device_name(dev)}",
                "best_latency",
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
                    label = f"{r['model']} ({r['epochs']} ep)" if mixed else None
                    if key == "best_latency":  # say which backend each latency is from
                        label = f"{label or r['model']} [{backend_of.get(r['model'], '?')}]"
                    pts.append(
                        Point(
                            r["model"],
                            x,
                            r["dsc_mean"],
                            "measured",
                            r.get("dsc_std", math.nan),
                            label=label,
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
            if key == "best_latency":
                what = "fastest-backend latency [backend]"
            head = f"Pooled DSC vs {what}, input {input_label}"
            if key in ("latency", "best_latency"):
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
        if "macs" not in s:
            continue
        lat = backend_latencies(res.speed[dev])
        for backend, g in lat.groupby("backend", sort=False):
            m = s[["model", "macs"]].merge(g[["model", "latency_ms"]], on="model").dropna()
            if m.empty:
                continue
            gmacs = m["macs"] / 1e9
            # Reference line at the median achieved rate: points above it run slower than
            # their MAC count suggests (memory- or overhead-bound).
            rate = float(np.median(m["latency_ms"] / gmacs))
            engine = "eager PyTorch" if backend == "torch" else str(backend)
            title = (
                f"Compute vs latency, {engine}, {res.device_name(dev)}, fp32, input {input_label}"
            )
            # eager keeps the file name it had before runtime backends existed
            suffix = "" if backend == "torch" else f"-{backend}"
            paths = plot_scatter(
                list(gmacs),
                list(m["latency_ms"]),
                list(m["model"]),
                "MACs per image (G, segbench count, log scale)",
                f"Latency at batch 1, {engine} (ms, median, log scale)",
                title,
                out / "plots" / f"efficiency-macs-vs-latency-{dev}{suffix}",
                colours,
                ref_rate=rate,
                ref_label=f"median rate: {1e3 / rate:.1f} GMAC/s "
                "(above the line = slower than MACs predict)",
            )
            report.add_figure("efficiency", paths, title)
        _eager_vs_runtime(res, dev, lat, out, colours, input_label, report)


def _eager_vs_runtime(
    res: Results,
    dev: str,
    lat: pd.DataFrame,
    out: Path,
    colours: dict[str, Any],
    input_label: str,
    report: ReportOutput,
) -> None:
    """Eager PyTorch latency vs the fastest deployment runtime's, per model (same run file)."""
    eager = lat[lat["backend"] == "torch"].set_index("model")["latency_ms"]
    rt = lat[lat["backend"] != "torch"]
    if rt.empty or eager.empty:
        return
    best = rt.loc[rt.groupby("model")["latency_ms"].idxmin()].set_index("model")
    both = [m for m in best.index if m in eager.index]
    if not both:
        return
    names = [f"{m} ({best.loc[m, 'backend']})" for m in both]
    pal = {n: colours[m] for n, m in zip(names, both)}
    title = (
        f"Eager PyTorch vs the fastest runtime, {res.device_name(dev)}, fp32, batch 1, "
        f"input {input_label}"
    )
    paths = plot_scatter(
        [float(eager[m]) for m in both],
        [float(best.loc[m, "latency_ms"]) for m in both],
        names,
        "Eager PyTorch latency (ms, median, log scale)",
        "Fastest runtime latency (ms, median, log scale)",
        title,
        out / "plots" / f"efficiency-eager-vs-runtime-{dev}",
        pal,
        ref_rate=1.0,
        ref_label="equal latency (below the line = the runtime is faster)",
    )
    report.add_figure("efficiency", paths, title)
