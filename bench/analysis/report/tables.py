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
    note: str | None = None  # key of a text shown after the value, in parentheses
    csv_only: bool = False  # a CSV column only (numbers the Markdown shows in a note)

    def text(self, row: pd.Series) -> str:
        v = row.get(self.key)
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return "–"
        if isinstance(v, str):
            return (v or "–") + self._note(row)
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
        return s + self._note(row)

    def _note(self, row: pd.Series) -> str:
        text = row.get(self.note) if self.note else None
        return f" ({text})" if isinstance(text, str) and text else ""

    def values(self, df: pd.DataFrame) -> dict[str, pd.Series]:
        out: dict[str, pd.Series] = {}
        if self.key in df:
            col = df[self.key]
            out[self.header] = col * self.scale if pd.api.types.is_numeric_dtype(col) else col
        if self.std and self.std in df:
            out[f"{self.header} std"] = df[self.std] * self.scale
        return out


def _has_values(col: pd.Series) -> bool:
    """Any value that is neither missing nor an empty string."""
    return bool((col.notna() & (col.astype(str).str.strip() != "")).any())


def render(df: pd.DataFrame, cols: Sequence[Col]) -> tuple[pd.DataFrame, str]:
    """(CSV frame with unrounded numbers, Markdown text) for the columns present in ``df``."""
    present = [c for c in cols if c.key in df and (_has_values(df[c.key]) or c.key == "model")]
    csv = pd.DataFrame(index=df.index)
    for c in present:
        for name, series in c.values(df).items():
            csv[name] = series
    shown = [c for c in present if not c.csv_only]
    text = pd.DataFrame({c.header: [c.text(r) for _, r in df.iterrows()] for c in shown})
    md = text.to_markdown(index=False, disable_numparse=True) if not text.empty else "(no rows)"
    return csv.reset_index(drop=True), md


def _efficiency_cols(device_label: str | None) -> list[Col]:
    dev = f" {device_label}" if device_label else ""
    return [
        Col("model", "model"),
        Col("params total (M)", "params_total", 1e-6, 3),
        Col("params unique (M)", "params_unique", 1e-6, 3),
        Col("MACs segbench (G)", "macs", 1e-9, 3, lower_bound="macs_lower_bound"),
        Col("GFLOPs papers' convention (thop MACs, G)", "thop_macs", 1e-9, 3, note="thop_note"),
        Col("paper params (M)", "paper_params_m", 1, 3),
        Col("paper GFLOPs", "paper_gflops", 1, 3),
        Col(f"latency bs1{dev} (ms, median)", "latency_ms", flag="noisy"),
        Col(f"throughput{dev} (img/s, best batch)", "throughput_img_s"),
        Col("best batch", "best_batch", decimals=0),
        Col(f"train step{dev} (img/s)", "train_img_s", note="train_note"),
        Col("peak mem bs1 (MB)", "peak_mem_mb"),
        Col("CPU peak mem bs1, model's RSS increase (MB)", "rss_delta_mb"),
        Col("CPU process RSS bs1, incl. interpreter (MB)", "process_rss_mb"),
        Col("roofline bs1 (%)", "roofline_fraction", 100),
        Col("limiter bs1 (eager)", "limiter"),
        Col("thop note", "thop_note", csv_only=True),
        Col("train step note", "train_note", csv_only=True),
        Col("best fp32 backend bs1", "best_backend"),
        Col(f"best backend latency bs1{dev} (ms)", "best_latency_ms"),
        Col("speedup over eager", "speedup_vs_eager", decimals=2),
    ]


#: the papers' five metrics (MALUNet / EGE-UNet tables): always in the accuracy tables
PAPER_METRICS = ("miou", "dsc", "acc", "spe", "sen")


def _run_info_cols() -> list[Col]:
    """What an accuracy row rests on (bench.analysis.runinfo): poor-image share, training
    cost and schedule, code fingerprint and hosts."""
    return [
        Col("images Dice < 0.8 (%)", "dice_below_08_mean", decimals=1, std="dice_below_08_std"),
        Col("training time", "train_time_text"),
        Col("training time (h/seed)", "train_time_h_mean", csv_only=True),
        Col("training time std (h)", "train_time_h_std", csv_only=True),
        Col("time to 99% of best (h)", "time_to_99_h_mean", csv_only=True),
        Col("T_max", "t_max"),
        Col("lr at end (x peak)", "lr_end_fraction", decimals=2),
        Col("last epoch picked", "last_epoch_picked_text"),
        Col("code", "code"),
        Col("hosts", "hosts", csv_only=True),
        Col("fingerprint", "fingerprint", csv_only=True),
    ]


def _metric_cols(header_prefix: str = "", key_prefix: str = "") -> list[Col]:
    """Mean ± std over seeds of the metric table's report metrics (bench.engine.metric_table);
    HD95 with the count of images where it is undefined beside it."""
    cols = []
    for m in METRICS:
        if not (m.in_report or m.key in PAPER_METRICS):
            continue
        hd95 = m.key == "hd95_mean"
        cols.append(
            Col(
                f"{header_prefix}{m.header}",
                f"{key_prefix}{m.column}_mean",
                decimals=m.decimals,
                std=f"{key_prefix}{m.column}_std",
                note=f"{key_prefix}hd95_undefined_text" if hd95 else None,
            )
        )
        if hd95:
            cols += [
                Col(
                    f"{header_prefix}HD95 undefined (images, all seeds)",
                    f"{key_prefix}hd95_undefined",
                    decimals=0,
                    csv_only=True,
                ),
                Col(
                    f"{header_prefix}HD95 scored (images, all seeds)",
                    f"{key_prefix}hd95_scored",
                    decimals=0,
                    csv_only=True,
                ),
            ]
    return cols


_SIGNIFICANCE = Col("significant over seeds (Holm, CI excl. 0)", "significant_over_seeds")


def _paper_cols(paper_keys: Sequence[str], *, note: bool = False) -> list[Col]:
    """The papers' DSC / mIoU per dataset key, the significance marks (and the row note)."""
    cols = []
    for key in paper_keys:
        name = key.upper()
        cols += [
            Col(f"paper DSC {name} (%)", f"paper_{key}_dsc", decimals=2),
            Col(f"paper mIoU {name} (%)", f"paper_{key}_miou", decimals=2),
        ]
    cols.append(_SIGNIFICANCE)
    if note:
        cols.append(Col("note", "row_note"))
    return cols


def _accuracy_cols(datasets: Sequence[str], paper_keys: Sequence[str]) -> list[Col]:
    cols = [Col("model", "model")]
    for ds in datasets:
        cols += [
            Col(f"{ds} experiment", f"{ds}:experiment"),
            Col(f"{ds} precision", f"{ds}:precision", note=f"{ds}:precision_note"),
            Col(f"{ds} seeds", f"{ds}:n_seeds", decimals=0),
            Col(f"{ds} epochs", f"{ds}:epochs", decimals=0),
            *_metric_cols(f"{ds} ", f"{ds}:"),
            Col(f"{ds} training time", f"{ds}:train_time_text"),
            Col(f"{ds} code", f"{ds}:code"),
        ]
    return [*cols, *_paper_cols(paper_keys)]


def _experiment_cols(paper_keys: Sequence[str]) -> list[Col]:
    """Columns of the accuracy table: one row per experiment (configuration except the
    seed, precision), then the trivial baselines."""
    cols = [
        Col("model", "model"),
        Col("dataset", "dataset"),
        Col("recipe", "recipe"),
        Col("epochs", "epochs", decimals=0),
        Col("input (px)", "image_size"),
        Col("precision", "precision", note="precision_note"),
        Col("differs in", "setting"),
        Col("seeds", "n_seeds", decimals=0),
        Col("seed list", "seeds"),
        Col("experiment folder", "experiment", csv_only=True),
        Col("experiment hash", "experiment_hash", csv_only=True),
        *_metric_cols(),
        *_run_info_cols(),
    ]
    return [*cols, *_paper_cols(paper_keys, note=True)]


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
        # a delta below the weights' size cannot be right: the speed stage blanks it
        Col("weights (MB)", "weights_mb"),
        Col("achieved GFLOP/s", "achieved_gflops"),
        Col("roofline (%)", "roofline_fraction", 100),
        Col("precision", "precision_detail"),
        # per-image time at this batch / at batch 1, flagged above 1.10 (issue 24 item 13)
        Col("per image vs bs1", "per_image_vs_b1", decimals=2),
        Col("batch scaling", "batch_scaling"),
        Col("status", "status"),
        Col("reason", "reason"),
    ]


def _external_cols(targets: Sequence[str]) -> list[Col]:
    """Columns of the external-validation table (:func:`summaries.external_table`)."""
    cols = [
        Col("model", "model"),
        Col("trained on", "dataset"),
        Col("experiment", "experiment"),
        Col("precision", "precision"),
        Col("differs in", "setting"),
        Col("seeds", "n_seeds", decimals=0),
        Col("in-domain test DSC (%)", "in_domain"),
        Col("in-domain test DSC mean (%)", "in_domain_dsc_mean", csv_only=True),
    ]
    for t in targets:
        cols += [
            Col(f"{t}: DSC % ({t} − in-domain, pp)", f"{t}:text"),
            Col(f"{t} DSC mean (%)", f"{t}:dsc_mean", csv_only=True),
            Col(f"{t} DSC std (%)", f"{t}:dsc_std", csv_only=True),
            Col(f"{t} drop mean (pp)", f"{t}:drop_mean", csv_only=True),
            Col(f"{t} drop std (pp)", f"{t}:drop_std", csv_only=True),
            Col(f"{t} seeds", f"{t}:n", csv_only=True),
        ]
    return cols


def _test_cols() -> list[Col]:
    """The statistics columns every comparison table shares (A vs B on per-image Dice)."""
    return [
        Col("images", "n", decimals=0),
        Col("Dice/img A (%)", "mean_a", decimals=2),
        Col("Dice/img B (%)", "mean_b", decimals=2),
        Col("A − B (pp)", "mean_diff", decimals=2),
        Col("95% CI of A − B (pp)", "ci"),
        Col("CI low (pp)", "ci_low", csv_only=True),
        Col("CI high (pp)", "ci_high", csv_only=True),
        Col("crossed bootstrap low (pp, shown only)", "boot_low", csv_only=True),
        Col("crossed bootstrap high (pp, shown only)", "boot_high", csv_only=True),
        Col("tested", "level"),
        Col("p (unadjusted)", "p_value"),
        Col("p Holm (tests over seeds)", "p_holm"),
        Col("Holm family (tests)", "holm_family", decimals=0, csv_only=True),
        Col("claim", "claim"),
        Col("note", "note"),
        Col("test", "test", csv_only=True),
        Col("CI method", "ci_method", csv_only=True),
    ]


def _experiment_cmp_cols() -> list[Col]:
    """Columns of the experiment comparisons (:func:`experiments.experiment_table`)."""
    return [
        Col("dataset", "dataset"),
        Col("model", "model"),
        Col("A (main)", "a"),
        Col("B", "b"),
        Col("B differs in", "differs"),
        *_test_cols(),
    ]


def _comparison_cols() -> list[Col]:
    """Columns of the model comparisons (:func:`significance.comparison_table`)."""
    return [
        Col("dataset", "dataset"),
        Col("experiment", "experiment"),
        Col("A", "a"),
        Col("B", "b"),
        *_test_cols(),
        Col("model A", "model_a", csv_only=True),
        Col("model B", "model_b", csv_only=True),
        Col("code A", "code_a", csv_only=True),
        Col("code B", "code_b", csv_only=True),
    ]


def _deployment_cols() -> list[Col]:
    """Columns of the reduced-precision table (``deploy/precision.csv``)."""
    return [
        Col("model", "model"),
        Col("host", "cpu"),
        Col("weights", "weights"),
        Col("variant", "variant"),
        Col("status", "status"),
        Col("latency bs1 (ms)", "latency_ms"),
        Col("speedup vs eager fp32", "speedup_vs_eager_fp32", decimals=2),
        Col("max rel. logit diff", "out_rel_max_diff"),
        Col("mask pixels differing (%)", "out_mask_diff", 100, decimals=2),
        Col("test DSC (%)", "dsc", 100, decimals=2),
        Col("DSC change, variant − eager fp32 (pts)", "dsc_change_pts", decimals=2),
        Col("test images", "n_images", decimals=0),
        Col("threads", "threads", decimals=0),
        Col("load avg (1 min)", "load_avg_1min", decimals=2),
        Col("commit", "git_commit", csv_only=True),
        Col("command", "command", csv_only=True),
        Col("reason", "reason"),
        Col("notes", "notes"),
    ]


def _paper_vs_measured_cols() -> list[Col]:
    """Columns of a seed model's paper-vs-measured table (protocols.paper_vs_measured)."""
    return [
        Col("metric (pooled over test pixels)", "metric"),
        Col("paper (%)", "paper", decimals=2),
        Col("paper's dataset", "paper_dataset"),
        Col("measured (%)", "measured_mean", decimals=2, std="measured_std"),
        Col("measured − paper (pp)", "difference_text"),
        Col("measured − paper (pp, number)", "difference", csv_only=True),
        Col("measured on", "dataset"),
        Col("experiment", "experiment"),
        Col("precision", "precision"),
        Col("seeds", "n_seeds", decimals=0),
        Col("code", "code"),
        Col("caveats", "note"),
        Col("model", "model", csv_only=True),
    ]


def _paper_gap_cols() -> list[Col]:
    """Columns of a seed model's paper-gap table (bench.analysis.report.gap)."""
    return [
        Col("experiment", "experiment"),
        Col("seed", "seed", decimals=0),
        Col("cause", "cause"),
        Col("effect on pooled test DSC (pp)", "effect_text"),
        Col("effect (pp, number)", "effect", csv_only=True),
        Col("95% interval (pp)", "interval_text"),
        Col("measured how", "how"),
        Col("model", "model", csv_only=True),
    ]
