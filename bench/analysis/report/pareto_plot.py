"""Accuracy-vs-cost Pareto figures that show their uncertainty (issue 24 items 10, 16).

What a reader sees, and why:

* **Numbered markers and a table.** Each model gets a number; the marker carries the
  number (placed by ``adjustText`` where it is installed, else by the report's greedy
  placer) and a table under the axes says what each number is: model, precision, seeds,
  DSC mean ± std and the cost. Ten long model names beside the points hid one another.
* **Shape = precision, fill = seeds.** One marker shape per training precision (fp32
  circle, bf16 square, ...); a filled marker rests on >= 3 seeds, a hollow one on fewer
  (the table says ``n=1``).
* **A front only from what holds.** The staircase is drawn through points with
  >= :data:`MIN_SEEDS_FRONT` seeds only; the others are drawn but cannot be on it. A point
  whose membership flips within its own spread (DSC ± std, latency ± IQR/2) is ringed with
  a dotted circle and marked ``≈`` in the table: the data do not settle whether it is on
  the front.
* **The models' own y range.** Trivial baselines (about 70 % DSC where the models sit at
  90-93 %) are named in a note on the axes instead of stretching the axis until the
  std bars vanish.
* **No clipped titles.** Titles are wrapped to the figure's width.

The papers' figures stay in their own panel (their splits and protocols differ).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.analysis.pareto import pareto_front, pareto_order

#: A point needs this many seeds to be on the drawn front.
MIN_SEEDS_FRONT = 3

#: Marker shape per precision (training precision of the run, or runtime precision).
PRECISION_MARKERS = {"fp32": "o", "bf16": "s", "fp16": "^", "int8": "D"}


@dataclass
class ParetoPoint:
    """One model on one cost axis."""

    number: int  # the marker's number (the same model keeps it on every panel)
    model: str
    x: float
    y: float
    yerr: float = math.nan  # std over seeds
    xerr: float = math.nan  # half the latency IQR (a cost spread), NaN where none
    n: int = 0  # seeds (0: a paper's figure)
    precision: str = "fp32"
    detail: str = ""  # for the table (recipe, epochs, backend...)


def marker_for(precision: str) -> str:
    return PRECISION_MARKERS.get(str(precision), "P")


def front_status(points: Sequence[ParetoPoint]) -> tuple[list[int], list[int]]:
    """(indices on the front, indices whose membership flips within their spread).

    The front is computed over points with >= :data:`MIN_SEEDS_FRONT` seeds (all points
    for a paper panel, ``n == 0``). A point flips when its membership at its optimistic
    corner (cost - xerr, DSC + yerr) differs from that at its pessimistic corner
    (cost + xerr, DSC - yerr), the other points at their centres; a point with fewer seeds
    than the front needs is never on it and is not tested."""
    eligible = [i for i, p in enumerate(points) if p.n == 0 or p.n >= MIN_SEEDS_FRONT]
    if not eligible:
        return [], []
    xs = np.array([points[i].x for i in eligible], dtype=float)
    ys = np.array([points[i].y for i in eligible], dtype=float)
    on = pareto_front(xs, ys)
    flips = []
    for k, i in enumerate(eligible):
        p = points[i]
        dx = 0.0 if math.isnan(p.xerr) else p.xerr
        dy = 0.0 if math.isnan(p.yerr) else p.yerr
        if dx == 0.0 and dy == 0.0:
            continue
        states = []
        for sx, sy in ((-dx, dy), (dx, -dy)):
            x2, y2 = xs.copy(), ys.copy()
            x2[k], y2[k] = p.x + sx, p.y + sy
            states.append(bool(pareto_front(x2, y2)[k]))
        if states[0] != states[1]:
            flips.append(i)
    order = pareto_order(xs, ys)
    return [eligible[k] for k in order if on[k]], flips


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """Wrap ``text`` to lines that fit ``width_in`` inches at ``fontsize`` points."""
    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(
        "\n".join(textwrap.wrap(part, chars)) if part else "" for part in text.split("\n")
    )


def _number_labels(ax: Any, canvas: Any, pts: Sequence[ParetoPoint], segments: list) -> None:
    """Put each point's number beside it without collisions: adjustText where installed
    (the maintained tool for this), else the report's greedy placer."""
    try:
        from adjustText import adjust_text
    except ImportError:
        from bench.analysis.report.plots import _label_axes

        _label_axes(ax, canvas, [(p.x, p.y, str(p.number), False) for p in pts],
                    segments=segments)  # fmt: skip
        return
    texts = [
        ax.text(p.x, p.y, str(p.number), fontsize=8, fontweight="bold", zorder=6,
                ha="center", va="center")
        for p in pts
    ]  # fmt: skip
    adjust_text(
        texts,
        x=[p.x for p in pts],
        y=[p.y for p in pts],
        ax=ax,
        expand=(1.6, 1.8),
        # a fixed iteration budget, not adjustText's default 1 s time limit: the same
        # results give the same figure on a fast or a loaded machine
        iter_lim=1000,
        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.4"},
    )


def _label_log_ticks(ax: Any) -> None:
    """Plain numbers on a log x axis ("0.1", "20"), the 2-9 ticks labelled too when it
    spans under two decades: points of light models often sit between two powers of ten,
    where matplotlib's default labels one tick or none and the reader cannot read a value."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        """LogFormatter's choice of which ticks to label, printed as plain numbers."""

        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:g}" if super().__call__(x, pos) else ""

    ax.xaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.7)))


def _draw_points(ax: Any, pts: Sequence[ParetoPoint], colours: dict[str, Any]) -> None:
    for p in pts:
        filled = p.n >= MIN_SEEDS_FRONT
        colour = colours.get(p.model, "0.4")
        ax.errorbar(
            p.x, p.y,
            yerr=None if math.isnan(p.yerr) else p.yerr,
            xerr=None if math.isnan(p.xerr) else p.xerr,
            fmt="none", ecolor=colour, elinewidth=1.0, capsize=2, zorder=2,
        )  # fmt: skip
        ax.scatter(
            p.x, p.y, s=64 if p.n else 90,
            marker="*" if p.n == 0 else marker_for(p.precision),
            facecolors=colour if (filled or p.n == 0) else "white",
            edgecolors="black" if filled or p.n == 0 else colour,
            linewidths=0.7 if filled else 1.8, zorder=4,
        )  # fmt: skip


def _draw_front(ax: Any, pts: Sequence[ParetoPoint], front: list[int], style: dict) -> list:
    if not front:
        return []
    fx = [pts[i].x for i in front] + [ax.get_xlim()[1]]
    fy = [pts[i].y for i in front] + [pts[front[-1]].y]
    ax.step(fx, fy, where="post", lw=1.2, zorder=1, alpha=0.8, **style)
    segs = []
    for i in range(len(fx) - 1):
        segs += [((fx[i], fy[i]), (fx[i + 1], fy[i])), ((fx[i + 1], fy[i]), (fx[i + 1], fy[i + 1]))]
    return segs


@dataclass
class Panel:
    """One axes: its points, labels and (for measured data) the baselines' note."""

    points: list[ParetoPoint]
    title: str
    ylabel: str
    front_label: str
    baselines_note: str = ""


def _table_rows(
    measured: Panel | None, reported: Panel | None, cost_fmt: str
) -> tuple[list[str], list[list[str]]]:
    header = ["#", "model", "precision", "seeds", "DSC % (mean ± std)", "cost", "front"]
    rows: dict[int, list[str]] = {}
    if measured is not None:
        front, flips = front_status(measured.points)
        for i, p in enumerate(measured.points):
            std = "" if math.isnan(p.yerr) else f" ± {p.yerr:.2f}"
            where = "≈ (flips within spread)" if i in flips else ("yes" if i in front else "")
            if p.n < MIN_SEEDS_FRONT:
                where = f"not eligible (n={p.n})"
            cost = cost_fmt.format(p.x) + (f" ± {p.xerr:.2g}" if not math.isnan(p.xerr) else "")
            rows[p.number] = [str(p.number), p.model + (f" [{p.detail}]" if p.detail else ""),
                              p.precision, f"n={p.n}", f"{p.y:.2f}{std}", cost, where]  # fmt: skip
    if reported is not None:
        for p in reported.points:
            if p.number not in rows:
                rows[p.number] = [str(p.number), p.model, "-", "paper", "-",
                                  cost_fmt.format(p.x), ""]  # fmt: skip
            rows[p.number][4] += f"; paper {p.y:.2f}" if rows[p.number][4] != "-" else ""
            if rows[p.number][4] == "-":
                rows[p.number][4] = f"paper {p.y:.2f}"
    return header, [rows[k] for k in sorted(rows)]


def plot_pareto_panels(
    measured: Panel | None,
    reported: Panel | None,
    xlabel: str,
    suptitle: str,
    stem: Path,
    colours: dict[str, Any],
    cost_fmt: str = "{:.3g}",
    logx: bool = True,
    cost_header: str = "cost",
) -> list[Path]:
    """Measured (left) and reported (right) panels over one number table; PNG and SVG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from bench.analysis.report.plots import _freeze_limits, _save

    panels = [p for p in (measured, reported) if p is not None and p.points]
    if not panels:
        raise ValueError("plot_pareto_panels: no points to plot")
    header, table = _table_rows(measured, reported, cost_fmt)
    header[5] = cost_header
    width = 6.4 * len(panels) + 0.8
    table_h = 0.19 * (len(table) + 1)
    # constrained layout makes room for the wrapped suptitle, panel titles and legends
    fig = Figure(figsize=(width, 6.6 + table_h), dpi=150, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, len(panels), height_ratios=[6.6, table_h])
    axes = [fig.add_subplot(gs[0, i]) for i in range(len(panels))]
    for ax, panel in zip(axes, panels):
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
        if logx:
            ax.set_xscale("log")
        _draw_points(ax, panel.points, colours)
        _freeze_limits(ax)
        if logx:
            _label_log_ticks(ax)
    done = []
    for ax, panel in zip(axes, panels):
        front, flips = front_status(panel.points)
        is_measured = panel is measured
        style = {"color": "black", "ls": "-"} if is_measured else {"color": "0.45", "ls": "--"}
        segs = _draw_front(ax, panel.points, front, style)
        for i in flips:
            p = panel.points[i]
            ax.scatter(p.x, p.y, s=260, facecolors="none", edgecolors="0.2", linewidths=1.0,
                       linestyles=":", zorder=3)  # fmt: skip
        handles = [Line2D([], [], **style, label=panel.front_label)]
        if is_measured:
            precisions = sorted({p.precision for p in panel.points})
            handles += [
                Line2D([], [], marker=marker_for(pr), ls="", color="0.5", mec="black",
                       label=f"{pr}, >= {MIN_SEEDS_FRONT} seeds (bars: std over seeds)")
                for pr in precisions
            ]  # fmt: skip
            handles.append(Line2D([], [], marker="o", ls="", mfc="white", mec="0.4", mew=1.6,
                                  label=f"fewer than {MIN_SEEDS_FRONT} seeds: not on the front"))  # fmt: skip
            if flips:
                handles.append(Line2D([], [], marker="o", ls="", ms=12, mfc="none", mec="0.2",
                                      label="front membership flips within its spread"))  # fmt: skip
            if panel.baselines_note:
                ax.text(0.99, 0.01, panel.baselines_note, transform=ax.transAxes, ha="right",
                        va="bottom", fontsize=7, color="0.25",
                        bbox={"fc": "white", "ec": "0.7", "alpha": 0.9})  # fmt: skip
        else:
            handles.append(Line2D([], [], marker="*", ls="", ms=10, color="0.5", mec="black",
                                  label="reported by the paper"))  # fmt: skip
        # below the panel: inside, the legend hid points
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
                  fontsize=7, framealpha=0.9)  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.set_title(_wrap(panel.title, width / len(panels) - 0.6, 8.5), fontsize=8.5)
        done.append((ax, panel, segs))
    tax = fig.add_subplot(gs[1, :])
    tax.axis("off")
    tab = tax.table(cellText=table, colLabels=header, loc="upper center", cellLoc="left",
                    colLoc="left")  # fmt: skip
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    tab.auto_set_column_width(list(range(len(header))))
    for (r, _c), cell in tab.get_celld().items():
        cell.set_height(1.0 / (len(table) + 1))
        cell.set_linewidth(0.3)
        if r == 0:
            cell.set_text_props(fontweight="bold")
    fig.suptitle(_wrap(suptitle, width - 0.4, 10), fontsize=10)
    fig.draw_without_rendering()  # lay out once, then freeze it so the numbers stay put
    fig.set_layout_engine("none")
    for ax, panel, segs in done:
        _number_labels(ax, canvas, panel.points, segs)
    return _save(fig, stem)
