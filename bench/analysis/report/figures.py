"""The report's figures: accuracy-vs-cost Pareto plots and efficiency plots."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis.report.accuracy import accuracy_summary, main_experiments
from bench.analysis.report.load import ReportOutput, Results
from bench.analysis.report.plots import Line, Point, plot_scatter
from bench.analysis.report.protocols import is_smoke
from bench.analysis.report.summaries import (
    backend_latencies,
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


def _protocol(rows: pd.DataFrame) -> str:
    """How the measured points were made, from the runs behind them (never a default)."""
    keys = ["recipe", "epochs", "image_size", "precision"]
    distinct = rows[keys].astype(str).drop_duplicates()
    if len(distinct) == 1:
        r = rows.iloc[0]
        sz = str(r["image_size"])
        size = f"input {sz}x{sz}" if sz else "input size not recorded"
        return f"recipe {r['recipe']}, {r['epochs']} epochs, {size}, {r['precision']}"
    # one clause per protocol, naming its models (ten models stay readable)
    parts = [
        f"{exp} at {size or '?'}px in {prec} ({', '.join(grp['model'].astype(str))})"
        for (exp, size, prec), grp in rows.astype({"image_size": str}).groupby(
            ["experiment", "image_size", "precision"], sort=False
        )
    ]
    return "protocols differ: " + "; ".join(parts)


def _point_label(r: pd.Series, rows: pd.DataFrame) -> str | None:
    """The model name, plus what differs between the panel's points (epochs, precision,
    input size, number of seeds)."""
    extra = []
    if rows["epochs"].nunique() > 1 or rows["recipe"].nunique() > 1:
        extra.append(f"{r['recipe']} {r['epochs']} ep")
    if rows["precision"].nunique() > 1:
        extra.append(str(r["precision"]))
    if rows["image_size"].astype(str).nunique() > 1:
        extra.append(f"{r['image_size']} px")
    if rows["n_seeds"].nunique() > 1:
        extra.append(f"n={r['n_seeds']}")
    return f"{r['model']} ({', '.join(extra)})" if extra else None


def speed_input_label(res: Results, dev: str) -> str:
    """The input size of the batch-1 latency rows of device ``dev`` (from the speed file)."""
    sp = speed_summary(res.speed[dev])
    if "input_size" in sp and sp["input_size"].notna().any():
        sizes = sorted({int(v) for v in pd.to_numeric(sp["input_size"], errors="coerce").dropna()})
        return ", ".join(f"{v}x{v}" for v in sizes)
    return "not recorded"


def baseline_lines(res: Results, dataset: str | None) -> list[Line]:
    """The trivial baselines of ``dataset`` as horizontal lines (pooled DSC, %)."""
    b = res.baselines
    if dataset is None or b.empty or "dsc" not in b:
        return []
    rows = b[(b["dataset"] == dataset) & b["dsc"].notna()].sort_values("kind")
    return [
        Line(float(r["dsc"]) * 100, f"trivial baseline, {r['kind']}: {float(r['dsc']) * 100:.1f}")
        for _, r in rows.iterrows()
    ]


_Axis = tuple[str, str, str, "str | None"]  # (file tag, x label, cost key, device slug)


def _cost_axes(res: Results, backend_of: dict[str, str]) -> list[_Axis]:
    """The x axes of the Pareto figures: parameters, MACs, latency per device and, where
    a runtime beats eager somewhere, the fastest backend's latency on the primary device."""
    axes: list[_Axis] = [
        ("params", "Parameters (M, log scale)", "params", None),
        ("macs", "MACs per image (G, segbench count, log scale)", "macs", None),
    ]
    for dev in res.devices:
        label = "Latency at batch 1 (ms, log scale)"  # the device is in the title
        axes.append((f"latency-{dev}", label, "latency", dev))
    if res.primary_device and any(b != "torch" for b in backend_of.values()):
        dev = res.primary_device
        label = "Latency at batch 1, fastest fp32 backend (ms, log scale)"
        axes.append((f"best-latency-{dev}", label, "best_latency", dev))
    return axes


def _point_sources(dataset: str, rows: pd.DataFrame) -> list[str]:
    """One line per measured point: which experiment (recipe, epochs, precision, seeds)."""
    return [
        f"{r['model']}: recipe {r['recipe']}, {r['epochs']} epochs, {r['precision']}, "
        + (
            f"input {r['image_size']}x{r['image_size']}"
            if r["image_size"]
            else "input size not recorded"
        )
        + f", {r['n_seeds']} seed(s) ({r['seeds']})"
        + (f", {r['setting']}" if r.get("setting") else "")
        + f", `runs/{dataset}/{r['model']}/{r['experiment']}/`"
        for _, r in rows.iterrows()
    ]


def _device_costs(res: Results, dev: str | None, costs: dict[str, dict[str, float]]) -> dict:
    """Cost points for one axis: the primary device's summary, or another device's latency."""
    if dev is None or dev == res.primary_device:
        return costs
    sp = speed_summary(res.speed[dev])
    if "latency_ms" not in sp:
        return {}
    return {m: {"latency": v} for m, v in sp.set_index("model")["latency_ms"].items()}


def _points(
    rows: pd.DataFrame,
    paper: pd.DataFrame,
    pkey: str | None,
    dev_costs: dict,
    key: str,
    backend_of: dict[str, str],
) -> tuple[list[Point], list[Point]]:
    """(measured points, reported points) of one figure."""
    measured: list[Point] = []
    for _, r in rows.iterrows():
        x = dev_costs.get(r["model"], {}).get(key, math.nan)
        if math.isfinite(x):
            label = _point_label(r, rows)
            if key == "best_latency":  # say which backend each latency is from
                label = f"{label or r['model']} [{backend_of.get(r['model'], '?')}]"
            measured.append(
                Point(r["model"], x, r["dsc_mean"], "measured",
                      r.get("dsc_std", math.nan), label=label)
            )  # fmt: skip
    reported: list[Point] = []
    if pkey is not None and f"paper_{pkey}_dsc" in paper:
        for _, r in paper.iterrows():
            x = dev_costs.get(r["model"], {}).get(key, math.nan)
            y = r[f"paper_{pkey}_dsc"]
            if math.isfinite(x) and pd.notna(y):
                reported.append(Point(r["model"], x, float(y), "reported"))
    return measured, reported


def _suptitle(res: Results, key: str, dev: str | None, input_label: str) -> str:
    """The figure's title: what is plotted against what, on which machine and input."""
    what = {"params": "parameters", "macs": "MACs"}.get(key, "latency")
    if key == "params":
        cost = "parameter count"
    elif key == "macs":
        cost = f"MACs per image at input {input_label}"
    elif key == "best_latency":
        what = "latency of each model's fastest fp32 backend (named in the table)"
        cost = (
            f"{res.device_name(dev)}, batch 1, "  # type: ignore[arg-type]
            f"input {speed_input_label(res, dev)}"  # type: ignore[arg-type]
        )
    else:
        cost = (
            f"latency on {res.device_name(dev)}, batch 1, fp32, "  # type: ignore[arg-type]
            f"input {speed_input_label(res, dev)}"  # type: ignore[arg-type]
        )
    return f"Pooled DSC vs {what} ({cost})"


def _panel_titles(dataset: str | None, rows: pd.DataFrame, pkey: str | None) -> tuple[str, str]:
    """(measured panel title, reported panel title); empty where the panel has no data."""
    t_measured = ""
    if dataset and not rows.empty:
        t_measured = "\n".join(
            textwrap.wrap(
                f"Measured by segbench on {dataset} (test split): {_protocol(rows)}; "
                "mean ± std over seeds",
                80,
            )
        )
    t_reported = ""
    if pkey:
        t_reported = (
            f"Reported by the papers on their own {pkey.upper()} test splits\n"
            "(not measured here; not comparable with measured DSC)"
        )
    return t_measured, t_reported


#: What each accuracy protocol is for (issue 23, section 5): the 7:3 split of the 2,150 real
#: ISIC 2017 pairs is the headline; the 456-image subset is a smoke test, never on its axes.
PROTOCOL_ROLE = {
    "isic2017-256": "headline protocol: ISIC 2017, all 2,150 pairs, seeded 7:3 split",
    "isic2017-mini": "smoke protocol: 456-image subset, under-trained; not the papers' scale "
    "and not comparable with isic2017-256",
}


def _latency_spread(res: Results, dev: str | None) -> dict[tuple[str, str], float]:
    """Half the batch-1 fp32 inference latency IQR per (model, backend) on ``dev``."""
    if dev is None or dev not in res.speed:
        return {}
    df = res.speed[dev]
    need = {"model", "mode", "batch_size", "iqr_ms"}
    if not need <= set(df.columns):
        return {}
    d = df[(df["mode"].astype(str) == "inference")
           & (pd.to_numeric(df["batch_size"], errors="coerce") == 1)]  # fmt: skip
    if "dtype" in d:
        d = d[d["dtype"].astype(str) == "fp32"]
    if "status" in d:
        d = d[d["status"].astype(str) == "ok"]
    backend = d["backend"].fillna("torch").astype(str) if "backend" in d else "torch"
    iqr = pd.to_numeric(d["iqr_ms"], errors="coerce") / 2
    return dict(zip(zip(d["model"].astype(str), backend), iqr))


def _accuracy_plots(
    res: Results,
    summary: pd.DataFrame,
    out: Path,
    colours: dict[str, Any],
    input_label: str,
    report: ReportOutput,
) -> None:
    """Pareto figures: DSC against each cost axis, one set per measured dataset (its own
    protocol, never two on one axis), measured and reported in separate panels. A paper
    dataset with nothing measured gets no figure (five near-identical isic2018 plots said
    nothing about this suite)."""
    from bench.analysis.report.pareto_plot import Panel, ParetoPoint, plot_pareto_panels

    acc = main_experiments(accuracy_summary(res.runs))
    paper = paper_summary(summary["model"])
    measured_sets = sorted(acc["dataset"].unique()) if not acc.empty else []
    costs = _cost_points(summary)
    backend_of = (
        summary.set_index("model")["best_backend"].dropna().to_dict()
        if "best_backend" in summary
        else {}
    )
    number = {m: i + 1 for i, m in enumerate(sorted(res.models))}
    axes = _cost_axes(res, backend_of)
    for dataset in measured_sets:
        # the papers' figures stand beside the headline protocol only: a smoke protocol's
        # subset and schedule are not the papers', so no reported panel and no "paper" column
        pkey = None if is_smoke(dataset) else paper_dataset(dataset)
        rows = acc[acc["dataset"] == dataset]
        report.point_sources[dataset] = _point_sources(dataset, rows)
        lines = baseline_lines(res, dataset)
        t_measured, t_reported = _panel_titles(dataset, rows, pkey)
        role = PROTOCOL_ROLE.get(dataset, "")
        if role:
            t_measured = f"{dataset}: {role}.\n" + t_measured.replace("\n", " ")
        note = (
            "Trivial baselines on this test split (off this axis): "
            + ", ".join(line.label.removeprefix("trivial baseline, ") for line in lines)
            if lines
            else ""
        )
        for name, xlabel, key, dev in axes:
            dev_costs = _device_costs(res, dev, costs)
            spread = _latency_spread(res, dev) if key in ("latency", "best_latency") else {}
            mpts = []
            for _, r in rows.iterrows():
                x = dev_costs.get(r["model"], {}).get(key, math.nan)
                if not math.isfinite(x):
                    continue
                backend = backend_of.get(r["model"], "torch") if key == "best_latency" else "torch"
                detail = []
                if rows["epochs"].nunique() > 1 or rows["recipe"].nunique() > 1:
                    detail.append(f"{r['recipe']} {r['epochs']} ep")
                if key == "best_latency":
                    detail.append(backend)
                mpts.append(ParetoPoint(
                    number[r["model"]], r["model"], x, float(r["dsc_mean"]),
                    yerr=float(r.get("dsc_std", math.nan)),
                    xerr=float(spread.get((r["model"], backend), math.nan)),
                    n=int(r["n_seeds"]), precision=str(r["precision"]), detail=", ".join(detail),
                ))  # fmt: skip
            rpts = []
            if pkey is not None and f"paper_{pkey}_dsc" in paper:
                for _, r in paper.iterrows():
                    x = dev_costs.get(r["model"], {}).get(key, math.nan)
                    y = r[f"paper_{pkey}_dsc"]
                    if math.isfinite(x) and pd.notna(y):
                        rpts.append(ParetoPoint(number[r["model"]], r["model"], x, float(y)))
            if not mpts:
                continue
            suptitle = _suptitle(res, key, dev, input_label)
            paths = plot_pareto_panels(
                Panel(mpts, t_measured, f"DSC pooled over {dataset} test pixels (%)",
                      "Pareto front (points with >= 3 seeds)", note),
                Panel(rpts, t_reported, "DSC reported by the papers (%)",
                      "Pareto front (reported DSC, cost measured by segbench)") if rpts else None,
                xlabel, suptitle, out / "plots" / f"pareto-dsc-vs-{name}-{dataset}", colours,
                cost_header={"params": "params (M)", "macs": "GMACs"}.get(
                    key, "latency ms (± IQR/2)"),
            )  # fmt: skip
            parts = (suptitle, t_measured, t_reported if rpts else "")
            caption = ". ".join(x.replace("\n", " ") for x in parts if x)
            report.add_figure("accuracy", paths, caption)


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
                "MACs per image (G, log scale)\nfilled: segbench count; rings: papers' GFLOPs",
                title,
                out / "plots" / "efficiency-params-vs-macs",
                colours,
                hollow=hollow,
                hollow_label="ring: the paper's params and 'GFLOPs' (thop MACs)",
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
            sp_in = speed_input_label(res, dev)
            same = (
                sp_in.split(", ") == [input_label.split("x", 2)[-1]]
                if "x" in input_label
                else False
            )
            title = (
                f"Compute vs latency, {engine}, {res.device_name(dev)}, fp32, input {input_label}"
                if same
                else f"Compute vs latency, {engine}, {res.device_name(dev)}, fp32, MACs at input "
                f"{input_label}, latency at input {sp_in}"
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
        _roofline(res, dev, out, colours, report)


def _roofline(
    res: Results, dev: str, out: Path, colours: dict[str, Any], report: ReportOutput
) -> None:
    """The device's roofline figure (achieved GFLOP/s vs intensity, both bounds)."""
    from bench.analysis.report.roofline_plot import plot_roofline, roofline_caption

    name = res.device_name(dev)
    paths = plot_roofline(res.speed[dev], name, out / "plots" / f"roofline-{dev}", colours)
    if paths:
        report.add_figure("efficiency", paths, roofline_caption(res.speed[dev], name))


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
