"""Table views: displayed columns (header with unit, source key, scale, digits) rendered as CSV and Markdown."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench.engine.metric_table import METRICS


def _fmt_num(v: Any, digits: int = 3) -> str:
    """Compact human formatting: ``digits`` significant figures, never scientific."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)) or pd.isna(v):
        return "–"
    v = float(v)
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    decimals = max(0, digits - 1 - mag)
    return f"{v:,.{decimals}f}"


@dataclass(frozen=True)
class Col:
    """A displayed column: header (with unit), source key, scale, decimals or sig figs."""

    header: str
    key: str
    scale: float = 1.0
    decimals: int | None = None  # fixed decimals; None means 3 significant figures
    std: str | None = None  # key of a spread shown as "mean ± std"
    flag: str | None = None  # key of a boolean that marks the value with " (noisy)"
    lower_bound: str | None = None  # key of a boolean that marks the value ">= " (a lower bound)

    def text(self, row: pd.Series) -> str:
        v = row.get(self.key)
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return "–"
        if isinstance(v, str):
            return v
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        v = float(v) * self.scale
        if self.decimals is not None:
            s = f"{v:.{self.decimals}f}"
        else:
            s = _fmt_num(v)
        sd = row.get(self.std) if self.std else None
        if sd is not None and not pd.isna(sd):
            sd = float(sd) * self.scale
            s += (
                f" ± {sd:.{self.decimals}f}"
                if self.decimals is not None
                else f" ± {_fmt_num(sd, 2)}"
            )
        if self.flag and str(row.get(self.flag)).strip().lower() in ("true", "1", "yes"):
            s += " (noisy)"
        if self.lower_bound and str(row.get(self.lower_bound)).strip().lower() in ("true", "1"):
            s = ">= " + s
        return s

    def values(self, df: pd.DataFrame) -> dict[str, pd.Series]:
        out: dict[str, pd.Series] = {}
        if self.key in df:
            col = df[self.key]
            out[self.header] = col * self.scale if pd.api.types.is_numeric_dtype(col) else col
        if self.std and self.std in df:
            out[f"{self.header} std"] = df[self.std] * self.scale
        return out


def render(df: pd.DataFrame, cols: Sequence[Col]) -> tuple[pd.DataFrame, str]:
    """(CSV frame with unrounded numbers, Markdown text) for the columns present in ``df``."""
    present = [c for c in cols if c.key in df and (df[c.key].notna().any() or c.key == "model")]
    csv = pd.DataFrame(index=df.index)
    for c in present:
        for name, series in c.values(df).items():
            csv[name] = series
    text = pd.DataFrame({c.header: [c.text(r) for _, r in df.iterrows()] for c in present})
    md = text.to_markdown(index=False, disable_numparse=True) if not text.empty else "(no rows)"
    return csv.reset_index(drop=True), md


def _efficiency_cols(device_label: str | None) -> list[Col]:
    dev = f" {device_label}" if device_label else ""
    return [
        Col("model", "model"),
        Col("params total (M)", "params_total", 1e-6, 3),
        Col("params unique (M)", "params_unique", 1e-6, 3),
        Col("MACs segbench (G)", "macs", 1e-9, 3, lower_bound="macs_lower_bound"),
        Col("GFLOPs papers' convention (thop MACs, G)", "thop_macs", 1e-9, 3),
        Col("paper params (M)", "paper_params_m", 1, 3),
        Col("paper GFLOPs", "paper_gflops", 1, 3),
        Col(f"latency bs1{dev} (ms, median)", "latency_ms", flag="noisy"),
        Col(f"throughput{dev} (img/s, best batch)", "throughput_img_s"),
        Col("best batch", "best_batch", decimals=0),
        Col(f"train step{dev} (img/s)", "train_img_s"),
        Col("peak mem bs1 (MB)", "peak_mem_mb"),
        Col("roofline bs1 (%)", "roofline_fraction", 100),
        Col("best fp32 backend bs1", "best_backend"),
        Col(f"best backend latency bs1{dev} (ms)", "best_latency_ms"),
        Col("speedup over eager", "speedup_vs_eager", decimals=2),
    ]


def _metric_cols(header_prefix: str = "", key_prefix: str = "") -> list[Col]:
    """Mean ± std over seeds of the metric table's report metrics (bench.engine.metric_table)."""
    return [
        Col(
            f"{header_prefix}{m.header}",
            f"{key_prefix}{m.column}_mean",
            decimals=m.decimals,
            std=f"{key_prefix}{m.column}_std",
        )
        for m in METRICS
        if m.in_report
    ]


def _paper_cols(paper_keys: Sequence[str]) -> list[Col]:
    """The papers' DSC / mIoU per dataset key, then the significance marks."""
    cols = []
    for key in paper_keys:
        name = key.upper()
        cols += [
            Col(f"paper DSC {name} (%)", f"paper_{key}_dsc", decimals=2),
            Col(f"paper mIoU {name} (%)", f"paper_{key}_miou", decimals=2),
        ]
    cols.append(Col("significantly different from", "significantly_different_from"))
    return cols


def _accuracy_cols(datasets: Sequence[str], paper_keys: Sequence[str]) -> list[Col]:
    cols = [Col("model", "model")]
    for ds in datasets:
        cols += [
            Col(f"{ds} experiment", f"{ds}:experiment"),
            Col(f"{ds} seeds", f"{ds}:n_seeds", decimals=0),
            *_metric_cols(f"{ds} ", f"{ds}:"),
        ]
    return [*cols, *_paper_cols(paper_keys)]


def _experiment_cols(paper_keys: Sequence[str]) -> list[Col]:
    """Columns of the accuracy table: one row per (dataset, model, recipe, epochs)."""
    cols = [
        Col("model", "model"),
        Col("dataset", "dataset"),
        Col("recipe", "recipe"),
        Col("epochs", "epochs", decimals=0),
        Col("seeds", "n_seeds", decimals=0),
        *_metric_cols(),
    ]
    return [*cols, *_paper_cols(paper_keys)]


def _speed_cols() -> list[Col]:
    return [
        Col("model", "model"),
        Col("backend", "backend"),
        Col("mode", "mode"),
        Col("dtype", "dtype"),
        Col("layout", "layout"),
        Col("compile", "compile"),
        Col("batch", "batch_size", decimals=0),
        Col("threads", "threads", decimals=0),
        Col("median (ms)", "median_ms"),
        Col("IQR (ms)", "iqr_ms"),
        Col("p90 (ms)", "p90_ms"),
        Col("runs", "count", decimals=0),
        Col("noisy", "noisy"),
        Col("throughput (img/s)", "throughput_img_s"),
        Col("peak mem (MB)", "peak_mem_mb"),
        Col("RSS (MB)", "rss_mb"),
        Col("RSS delta (MB)", "rss_delta_mb"),
        Col("achieved GFLOP/s", "achieved_gflops"),
        Col("roofline (%)", "roofline_fraction", 100),
        Col("precision", "precision_detail"),
        Col("status", "status"),
        Col("reason", "reason"),
    ]
