"""The roofline figure (issue 24 item 18): achieved GFLOP/s against arithmetic intensity.

One figure per speed file (one host, one measuring run: one peak). Each point is one model
on one backend (colour = model, shape = backend): fp32 inference at batch 1, from the
speed rows' ``achieved_gflops`` and ``intensity_flop_per_byte`` (FLOPs and traffic from
:mod:`bench.cost.roofline`). The machine's two bounds are drawn from the file's peak: the
compute roof (peak GFLOP/s) and the memory slope (intensity x peak GB/s), and a dashed
curve at 25 % of the bound: a point below it is far from both limits, i.e. limited by
per-operator overhead rather than by compute or memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Marker shape per backend.
BACKEND_MARKERS = {"torch": "o", "onnxruntime": "s", "openvino": "^"}

#: A point under this share of its bound is called overhead-bound on the figure.
OVERHEAD_SHARE = 0.25


def roofline_points(df: pd.DataFrame) -> pd.DataFrame:
    """fp32 batch-1 inference rows with a roofline: model, backend, intensity, achieved
    GFLOP/s, the peak (GFLOP/s, GB/s) and the fraction of the bound."""
    need = {"model", "mode", "batch_size", "achieved_gflops", "intensity_flop_per_byte",
            "peak_tflops", "peak_gbps"}  # fmt: skip
    if not need <= set(df.columns):
        return pd.DataFrame()
    d = df[(df["mode"].astype(str) == "inference")
           & (pd.to_numeric(df["batch_size"], errors="coerce") == 1)].copy()  # fmt: skip
    for col, want in (("dtype", "fp32"), ("status", "ok"), ("layout", "contiguous")):
        if col in d:
            d = d[d[col].astype(str) == want]
    if "compile" in d:
        d = d[~d["compile"].astype(str).str.lower().isin(["true", "1"])]
    d["backend"] = d["backend"].fillna("torch").astype(str) if "backend" in d else "torch"
    for col in ("achieved_gflops", "intensity_flop_per_byte", "peak_tflops", "peak_gbps"):
        d[col] = pd.to_numeric(d[col], errors="coerce")
    d = d.dropna(subset=["achieved_gflops", "intensity_flop_per_byte", "peak_tflops"])
    d["peak_gflops"] = d["peak_tflops"] * 1e3
    d["bound_gflops"] = np.minimum(d["peak_gflops"], d["intensity_flop_per_byte"] * d["peak_gbps"])
    d["fraction"] = d["achieved_gflops"] / d["bound_gflops"]
    cols = ["model", "backend", "intensity_flop_per_byte", "achieved_gflops", "peak_gflops",
            "peak_gbps", "bound_gflops", "fraction"]  # fmt: skip
    return d[cols].drop_duplicates(["model", "backend"], keep="last").reset_index(drop=True)


def plot_roofline(
    df: pd.DataFrame, device_name: str, stem: Path, colours: dict[str, Any]
) -> list[Path] | None:
    """Draw the roofline of one speed file; None when it has no roofline rows."""
    from matplotlib.lines import Line2D

    from bench.analysis.report.pareto_plot import _wrap
    from bench.analysis.report.plots import _label_axes, _new_figure, _save

    pts = roofline_points(df)
    if pts.empty:
        return None
    peaks = pts[["peak_gflops", "peak_gbps"]].drop_duplicates()
    if len(peaks) > 1:  # the report refuses such files; never draw two machines as one
        raise ValueError(f"{stem.name}: rows with {len(peaks)} different peaks")
    peak, bw = float(peaks.iloc[0, 0]), float(peaks.iloc[0, 1])
    fig, ax, canvas = _new_figure(8.4, 6.0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo = min(pts["intensity_flop_per_byte"].min() / 2, peak / bw / 4)
    hi = max(pts["intensity_flop_per_byte"].max() * 2, peak / bw * 4)
    xs = np.geomspace(lo, hi, 200)
    bound = np.minimum(peak, xs * bw)
    ax.plot(xs, bound, color="black", lw=1.4, zorder=1)
    ax.plot(xs, OVERHEAD_SHARE * bound, color="0.5", lw=0.9, ls="--", zorder=1)
    ridge = peak / bw
    labels = []
    for _, r in pts.iterrows():
        ax.scatter(r["intensity_flop_per_byte"], r["achieved_gflops"], s=55,
                   marker=BACKEND_MARKERS.get(r["backend"], "P"),
                   color=colours.get(r["model"], "0.4"), edgecolors="black", linewidths=0.6,
                   zorder=3)  # fmt: skip
        labels.append((r["intensity_flop_per_byte"], r["achieved_gflops"],
                       f"{r['model']} {r['fraction']:.0%}", False))  # fmt: skip
    ax.set_ylim(min(pts["achieved_gflops"].min() / 2, OVERHEAD_SHARE * peak / 20), peak * 2)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("Arithmetic intensity (FLOP per byte of estimated traffic, log scale)")
    ax.set_ylabel("Achieved GFLOP/s (log scale)")
    title = (
        f"Roofline, {device_name}: fp32 inference at batch 1, one marker per model and backend; "
        f"label = share of the bound"
    )
    ax.set_title(_wrap(title, 7.6, 10), fontsize=10)
    handles = [Line2D([], [], marker=m, ls="", color="0.5", mec="black", label=b)
               for b, m in BACKEND_MARKERS.items() if b in set(pts["backend"])]  # fmt: skip
    handles += [
        Line2D([], [], color="black", lw=1.4,
               label=f"bound: min({peak:.0f} GFLOP/s, intensity x {bw:.1f} GB/s)"),
        Line2D([], [], color="0.5", lw=0.9, ls="--",
               label=f"{OVERHEAD_SHARE:.0%} of the bound (below: overhead-bound)"),
    ]  # fmt: skip
    ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.9)
    fig.tight_layout()
    roofs = [((ridge, peak), (hi, peak)),
             ((ridge, OVERHEAD_SHARE * peak), (hi, OVERHEAD_SHARE * peak))]  # fmt: skip
    _label_axes(ax, canvas, labels, segments=roofs)
    return _save(fig, stem)


def roofline_caption(df: pd.DataFrame, device_name: str) -> str:
    pts = roofline_points(df)
    if pts.empty:
        return ""
    under = pts[pts["fraction"] < OVERHEAD_SHARE]
    return (
        f"Roofline on {device_name} (fp32 inference, batch 1): {len(pts)} model/backend "
        f"points; {len(under)} below {OVERHEAD_SHARE:.0%} of their bound"
        + (
            f" ({', '.join(f'{m} {b}' for m, b in zip(under['model'], under['backend']))})"
            if len(under)
            else ""
        )  # fmt: skip
    )
