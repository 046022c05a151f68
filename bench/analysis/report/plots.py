"""Plot primitives: Pareto fronts and scatter plots with non-overlapping labels, saved as PNG and SVG."""

from __future__ import annotations

import math
import os
import textwrap
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.analysis.pareto import pareto_order


@dataclass
class Point:
    model: str
    x: float
    y: float
    kind: str  # "measured" or "reported"
    yerr: float = math.nan
    label: str | None = None  # text beside the point (default: the model name)


def _model_colours(models: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if len(models) > 10 else "tab10"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(sorted(models))}


def _overlap(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _place_labels(
    ax: Any, renderer: Any, items: list[tuple[float, float, str, bool]], obstacles: list[Any]
) -> None:
    """Put each label next to its point where it overlaps nothing placed so far.

    adjustText is not available; this greedy search over 8 directions x 4 distances
    is enough for a dozen points. Each label's size is measured once and candidate
    boxes are computed arithmetically. Labels that find no free spot go to the least
    crowded candidate, with a thin leader line when it is not next to its point.
    """
    from matplotlib.transforms import Bbox

    axes_box = ax.get_window_extent(renderer)
    placed = list(obstacles)
    px_per_pt = ax.figure.dpi / 72
    for x, y, text, bold in items:
        probe = _annotate(ax, x, y, text, 0, 0, bold, leader=False)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        w, h = ext.width + 2, ext.height + 2
        px, py = ax.transData.transform((x, y))
        best: tuple[float, float, float, Any] | None = None
        for dist in (6, 12, 22, 34):
            for ang in (0, 180, 45, -45, 135, -135, 90, -90):
                dx, dy = dist * math.cos(math.radians(ang)), dist * math.sin(math.radians(ang))
                ax_, ay_ = px + dx * px_per_pt, py + dy * px_per_pt
                x0 = ax_ - (w if dx < -1 else w / 2 if abs(dx) <= 1 else 0)
                y0 = ay_ - (h if dy < -1 else h / 2 if abs(dy) <= 1 else 0)
                bb = Bbox.from_bounds(x0, y0, w, h)
                inside = Bbox.intersection(bb, axes_box)
                outside = w * h - (inside.width * inside.height if inside is not None else 0.0)
                cost = sum(_overlap(bb, o) for o in placed) + 10 * outside
                if best is None or cost < best[0]:
                    best = (cost, dx, dy, bb)
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None
        _, dx, dy, bb = best
        _annotate(ax, x, y, text, dx, dy, bold, leader=math.hypot(dx, dy) > 12)
        placed.append(bb)


def _annotate(
    ax: Any, x: float, y: float, text: str, dx: float, dy: float, bold: bool, leader: bool
) -> Any:
    ha = "left" if dx > 1 else "right" if dx < -1 else "center"
    va = "bottom" if dy > 1 else "top" if dy < -1 else "center"
    return ax.annotate(
        text,
        (x, y),
        xytext=(dx, dy),
        textcoords="offset points",
        ha=ha,
        va=va,
        fontsize=8,
        fontweight="bold" if bold else "normal",
        zorder=5,
        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
        arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.4", "shrinkA": 0, "shrinkB": 3}
        if leader
        else None,
    )


def _new_figure(width: float = 8.0, height: float = 5.6) -> tuple[Any, Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    return fig, ax, canvas


def _save(fig: Any, stem: Path) -> list[Path]:
    import matplotlib

    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context({"svg.hashsalt": "segbench"}):  # stable SVG ids
        for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
            path = stem.with_suffix(f".{ext}")
            # unique per process: two reports writing one folder never share a temp file
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            fig.savefig(tmp, format=ext, metadata=meta)
            tmp.replace(path)  # atomic, like bench.core.io
            paths.append(path)
    return paths


def _freeze_limits(ax: Any) -> None:
    """Fix the data limits (with room for labels) so later lines and labels cannot move them."""
    if ax.get_autoscalex_on() or ax.get_autoscaley_on():
        ax.margins(x=0.12, y=0.12)
        ax.autoscale_view()
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
        _plain_log_ticks(ax)


def _plain_log_ticks(ax: Any) -> None:
    """Log-axis ticks as plain numbers (0.1, 1, 10, 20, 50) instead of 2x10^1."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    def major(v: float, _: Any) -> str:
        return f"{v:g}"

    def minor(v: float, _: Any) -> str:  # only 2 and 5 of each decade, to avoid crowding
        lead = round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0
        return f"{v:g}" if lead in (2, 5) else ""

    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log" or min(lim) <= 0:
            continue
        axis.set_major_formatter(FuncFormatter(major))
        decades = math.log10(max(lim) / min(lim))
        axis.set_minor_formatter(FuncFormatter(minor) if decades < 2.5 else NullFormatter())


def _finish_axes(
    fig: Any,
    ax: Any,
    canvas: Any,
    labels: list[tuple[float, float, str, bool]],
    markers: Sequence[tuple[float, float]] = (),
    legend_loc: str = "best",
    handles: list[Any] | None = None,
    segments: Sequence[tuple[tuple[float, float], tuple[float, float]]] = (),
) -> None:
    """Freeze limits, lay out, then place labels around the legend, markers and the
    axis-aligned line ``segments`` (front steps, connectors) given in data coordinates."""
    _freeze_limits(ax)
    kw = {"handles": handles} if handles is not None else {}
    ax.legend(loc=legend_loc, fontsize=8, framealpha=0.9, **kw)
    fig.tight_layout()
    _label_axes(ax, canvas, labels, markers, segments)


def _label_axes(
    ax: Any,
    canvas: Any,
    labels: list[tuple[float, float, str, bool]],
    markers: Sequence[tuple[float, float]] = (),
    segments: Sequence[tuple[tuple[float, float], tuple[float, float]]] = (),
) -> None:
    """Place ``labels`` on a laid-out axis, avoiding its legend, markers and segments."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = canvas.get_renderer()  # no full draw needed: extents come from the renderer
    leg = ax.get_legend()
    obstacles = [leg.get_window_extent(renderer)] if leg else []
    r = 5 * fig.dpi / 72  # marker radius in pixels
    for x, y in [(lab[0], lab[1]) for lab in labels] + list(markers):
        px, py = ax.transData.transform((x, y))
        obstacles.append(Bbox.from_extents(px - r, py - r, px + r, py + r))
    for a, b in segments:
        (x0, y0), (x1, y1) = ax.transData.transform(a), ax.transData.transform(b)
        obstacles.append(
            Bbox.from_extents(min(x0, x1) - 2, min(y0, y1) - 2, max(x0, x1) + 2, max(y0, y1) + 2)
        )
    _place_labels(ax, renderer, labels, obstacles)


@dataclass
class Line:
    """A horizontal reference line (a trivial baseline) on the measured panel."""

    y: float
    label: str


def _draw_front(
    ax: Any, group: list[Point], label: str, style: dict[str, Any]
) -> tuple[list[str], list[tuple[tuple[float, float], tuple[float, float]]]]:
    """Staircase of the Pareto front of ``group``: (front names, its segments)."""
    xs = np.array([p.x for p in group])
    ys = np.array([p.y for p in group])
    order = pareto_order(xs, ys)
    if len(order) == 0:
        return [], []
    names = list(dict.fromkeys(group[i].label or group[i].model for i in order))
    # The best accuracy reachable at each cost, held to the right edge.
    fx = np.append(xs[order], ax.get_xlim()[1])
    fy = np.append(ys[order], ys[order][-1])
    text = "\n".join(textwrap.wrap(f"{label}: " + " → ".join(names), 90))  # a legend line
    ax.step(fx, fy, where="post", lw=1.3, zorder=1, alpha=0.8, label=text, **style)
    segments = []
    for i in range(len(fx) - 1):
        segments += [
            ((fx[i], fy[i]), (fx[i + 1], fy[i])),
            ((fx[i + 1], fy[i]), (fx[i + 1], fy[i + 1])),
        ]
    return [group[i].model for i in order], segments


def plot_pareto(
    measured: list[Point],
    reported: list[Point],
    xlabel: str,
    ylabel_measured: str,
    ylabel_reported: str,
    title_measured: str,
    title_reported: str,
    suptitle: str,
    stem: Path,
    colours: dict[str, Any],
    baselines: Sequence[Line] = (),
    reported_front_label: str = "Pareto front (reported)",
    logx: bool = True,
) -> list[Path]:
    """Accuracy vs cost, measured and reported in separate panels with their own y axes.

    Measured points (filled, bars = std over seeds where given) with their Pareto front
    and the trivial baselines as horizontal lines on the left; the papers' figures
    (hollow) with their own front on the right. No line joins the panels: the papers'
    numbers come from other splits and protocols and are not on the measured scale.
    A panel without points is left out.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    panels = [k for k, pts in (("measured", measured), ("reported", reported)) if pts]
    if not panels:
        raise ValueError("plot_pareto: no points to plot")
    fig = Figure(figsize=(7.0 * len(panels) + 1.0, 6.0), dpi=150)
    canvas = FigureCanvasAgg(fig)
    # One cost axis for both panels, so a model sits at the same x on each side.
    axes = fig.subplots(1, len(panels), squeeze=False, sharex=True)[0]
    for ax, kind in zip(axes, panels):
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
        if logx:
            ax.set_xscale("log")
        if kind == "measured":
            for p in measured:
                ax.errorbar(p.x, p.y, yerr=None if math.isnan(p.yerr) else p.yerr, fmt="o",
                            ms=7, color=colours[p.model], mec="black", mew=0.6, zorder=3,
                            capsize=2)  # fmt: skip
            if baselines:  # inside the limits: a floor the reader must see
                ax.update_datalim([(measured[0].x, line.y) for line in baselines])
        else:
            for p in reported:
                ax.scatter(p.x, p.y, s=60, facecolors="none", edgecolors=colours[p.model],
                           linewidths=1.6, zorder=3)  # fmt: skip
    for ax in axes:
        _freeze_limits(ax)
    todo = []
    for ax, kind in zip(axes, panels):
        handles: list[Any] = []
        if kind == "measured":
            pts = measured
            for j, line in enumerate(baselines):
                ax.axhline(line.y, ls=(0, (4, 2 + j)), lw=1.0, color="0.35", zorder=1,
                           label=line.label)  # fmt: skip
            front, segments = _draw_front(
                ax, pts, "Pareto front (measured)", {"color": "black", "ls": "-"}
            )
            handles = list(ax.get_legend_handles_labels()[0])
            handles.append(Line2D([], [], marker="o", ls="", color="0.5", mec="black",
                                  label="measured (bar = std over seeds)"))  # fmt: skip
        else:
            pts = reported
            front, segments = _draw_front(
                ax, pts, reported_front_label, {"color": "0.45", "ls": "--"}
            )
            handles = list(ax.get_legend_handles_labels()[0])
            handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec="0.3",
                                  label="reported by the paper"))  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.tick_params(labelbottom=True)
        ax.set_ylabel(ylabel_measured if kind == "measured" else ylabel_reported)
        ax.set_title(title_measured if kind == "measured" else title_reported, fontsize=9)
        # below the panel: inside, a legend naming a long front hid points and labels
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.11),
                  fontsize=7, framealpha=0.9)  # fmt: skip
        labels = [(p.x, p.y, p.label or p.model, p.model in front) for p in pts]
        todo.append((ax, labels, segments))
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    for ax, labels, segments in todo:
        _label_axes(ax, canvas, labels, segments=segments)
    return _save(fig, stem)


def plot_scatter(
    xs: Sequence[float],
    ys: Sequence[float],
    names: Sequence[str],
    xlabel: str,
    ylabel: str,
    title: str,
    stem: Path,
    colours: dict[str, Any],
    hollow: Sequence[tuple[float, float, str]] = (),
    hollow_label: str = "",
    ref_rate: float | None = None,
    ref_label: str = "",
) -> list[Path]:
    """Cost vs cost on log-log axes, one labelled point per model."""
    fig, ax, canvas = _new_figure()
    ax.set_xscale("log")
    ax.set_yscale("log")
    for x, y, n in zip(xs, ys, names):
        ax.scatter(x, y, s=50, color=colours[n], edgecolors="black", linewidths=0.6, zorder=3)
    if hollow:
        # larger rings drawn above the filled markers: where a paper's figure equals the
        # measured one the ring shows around the point instead of hiding under it
        for x, y, n in hollow:
            ax.scatter(
                x,
                y,
                s=170,
                facecolors="none",
                edgecolors=colours.get(n, "0.4"),
                linewidths=1.6,
                zorder=4,
            )
        ax.scatter([], [], s=170, facecolors="none", edgecolors="0.3", label=hollow_label)
    ax.scatter([], [], s=50, color="0.5", edgecolors="black", label="measured (segbench)")
    _freeze_limits(ax)
    if ref_rate:
        lo, hi = ax.get_xlim()
        ax.plot(
            [lo, hi],
            [lo * ref_rate, hi * ref_rate],
            ls="--",
            lw=0.9,
            color="0.5",
            label=ref_label,
            zorder=1,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 72)), fontsize=10)  # never clipped
    # Numbered points and a key beside the axes: ten long names next to crowded points
    # were placed beside the wrong marker (issue 24 item 16).
    from matplotlib.lines import Line2D

    labels = [(x, y, str(i + 1), False) for i, (x, y) in enumerate(zip(xs, ys))]
    _freeze_limits(ax)
    handles, _ = ax.get_legend_handles_labels()
    key = [
        Line2D([], [], marker="o", ls="", color=colours[n], mec="black", label=f"{i + 1}  {n}")
        for i, n in enumerate(names)
    ]
    fig.set_size_inches(10.5, 5.6)
    ax.legend(handles=handles + key, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5,
              framealpha=0.9, borderaxespad=0.0)  # fmt: skip
    fig.tight_layout()
    _label_axes(ax, canvas, labels, markers=[(x, y) for x, y, _ in hollow])
    return _save(fig, stem)
