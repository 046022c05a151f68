"""Tables, Pareto plots and ``results/README.md`` from everything under ``results/``.

``segbench report`` reads only result files (the schema in DEVELOPING.md):

- ``complexity/complexity.csv``: parameters and MACs per model;
- ``speed/speed-<device_slug>.csv``: latency / throughput / memory rows per device;
- ``runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/metrics.json``: finished training
  runs; an experiment (recipe, epochs) is never averaged with another: the accuracy
  table has one row per (dataset, model, recipe, epochs), and the per-model summary and
  the Pareto plots use each model's experiment with the most epochs (ties: more seeds);
- ``stats/*.csv`` (optional): paired significance tests, shown when present;

and the papers' figures from the model registry (``model_info(name).reported``).
It writes ``tables/*.{csv,md}``, ``plots/*.{png,svg}`` and ``README.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import re
import shlex
import sys
import textwrap
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.io import read_json, write_csv, write_text
from bench.pareto import pareto_front, pareto_order
from bench.stats import RUN_METRICS_GLOB, find_runs

__all__ = [
    "ReportInputError",
    "Results",
    "accuracy_summary",
    "accuracy_table",
    "complexity_summary",
    "load_results",
    "main_experiments",
    "paper_summary",
    "pareto_front",
    "register",
    "speed_summary",
    "summary_table",
    "write_report",
]

RESULTS_DIR = Path("results")
_FP32 = {"fp32", "float32", "torch.float32", "float"}
_CHANNELS_LAST = {"channels_last", "nhwc", "torch.channels_last"}
_OK_STATUS = {"ok", "success", "finished", ""}
# runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/ (bench.train.run_dir_for)
_EXPERIMENT = ["dataset", "model", "recipe", "epochs"]

# Complexity columns under the names other writers may use; the first present wins.
_COMPLEXITY_ALIASES: dict[str, list[str]] = {
    "params_total": ["params_total", "params", "parameters"],
    "params_unique": ["params_unique", "unique_params"],
    "params_trainable": ["params_trainable", "trainable_params"],
    "macs": ["macs", "segbench_macs", "macs_segbench"],
    "other_flops": ["other_flops", "segbench_other_flops"],
    "thop_macs": ["thop_macs", "macs_thop", "thop"],
    "fvcore_macs": ["fvcore_macs", "fvcore_flops", "flops_fvcore", "fvcore"],
    "activation_bytes": ["activation_bytes"],
}


class ReportInputError(ValueError):
    """A result file the report cannot use; the message names the file and the problem."""


# --------------------------------------------------------------------------- loading


@dataclass
class Results:
    """Everything the report reads, as data frames (raw, as written by the harness)."""

    root: Path
    complexity: pd.DataFrame = field(default_factory=pd.DataFrame)
    complexity_meta: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, pd.DataFrame] = field(default_factory=dict)  # device slug -> rows
    speed_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per finished run
    stats: pd.DataFrame = field(default_factory=pd.DataFrame)
    benchmark: dict[str, Any] = field(default_factory=dict)  # benchmark.json, if any
    files: list[Path] = field(default_factory=list)

    @property
    def devices(self) -> list[str]:
        """Device slugs, accelerators first (the primary device is the first)."""
        return sorted(self.speed, key=lambda s: (s.startswith("cpu"), s))

    @property
    def primary_device(self) -> str | None:
        return self.devices[0] if self.devices else None

    def device_name(self, slug: str) -> str:
        df = self.speed.get(slug)
        if df is not None and "device_name" in df and df["device_name"].notna().any():
            return str(df["device_name"].dropna().iloc[0])
        env = self.speed_meta.get(slug, {}).get("environment", {})
        return str(env.get("device_name", slug))

    @property
    def models(self) -> list[str]:
        names: set[str] = set()
        if "model" in self.complexity:
            names.update(self.complexity["model"].astype(str))
        for df in self.speed.values():
            names.update(df["model"].astype(str))
        if "model" in self.runs:
            names.update(self.runs["model"].astype(str))
        return sorted(names)


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReportInputError(f"{path}: not a readable CSV file ({err})") from err
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ReportInputError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}"
        )
    return df


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise ReportInputError(f"{path}: not valid JSON ({err})") from err


def _json_meta(path: Path) -> dict[str, Any]:
    """Provenance (command, environment, ...) from a result JSON, without its data rows."""
    if not path.exists():
        return {}
    obj = _read_json(path)
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items() if not isinstance(v, list) or k in ("command", "argv")}


def _normalise_complexity(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    out = pd.DataFrame({"model": df["model"].astype(str)})
    for key, names in _COMPLEXITY_ALIASES.items():
        col = next((n for n in names if n in df.columns), None)
        if col is not None:
            out[key] = pd.to_numeric(df[col], errors="coerce")
    if "params_total" not in out or "macs" not in out:
        raise ReportInputError(
            f"{path}: needs a parameter count and a MAC count column (e.g. params_total, macs); "
            f"found {', '.join(map(str, df.columns))}"
        )
    for col in ("input_shape", "input_size", "height", "width", "status", "error"):
        if col in df.columns:
            out[col] = df[col]
    # Should the file hold several input sizes per model, the tables use the 256x256
    # rows (the papers' size), else the last row per model.
    if out["model"].duplicated().any():
        if "input_shape" in out:
            keep = out["input_shape"].astype(str).str.contains("256, 256|256x256")
            if keep.any():
                out = out[keep]
        out = out.drop_duplicates("model", keep="last")
    return out.reset_index(drop=True)


def _load_runs(root: Path) -> pd.DataFrame:
    """Finished runs, one row each, read by :func:`bench.stats.find_runs` (the one loader
    of ``metrics.json``); ``path`` is the metrics file the row came from."""
    try:
        runs = find_runs(root)
    except ValueError as err:  # malformed metrics.json: the message names it
        raise ReportInputError(str(err)) from err
    if runs.empty:
        return pd.DataFrame()
    runs["path"] = [str(Path(d) / "metrics.json") for d in runs["run_dir"]]
    no_dsc = runs[runs["dsc"].isna()]
    if not no_dsc.empty:
        raise ReportInputError(f"{no_dsc['path'].iloc[0]}: status 'finished' but no test.dsc entry")
    runs["epochs"] = pd.to_numeric(runs["epochs"], errors="coerce").fillna(-1).astype(int)
    runs["recipe"] = runs["recipe"].replace("", "?")
    return runs


def load_results(root: str | Path = RESULTS_DIR) -> Results:
    """Read every result file under ``root``; a malformed file raises :class:`ReportInputError`."""
    root = Path(root)
    if not root.is_dir():
        raise ReportInputError(f"results directory {root} does not exist")
    res = Results(root=root)
    cpath = root / "complexity" / "complexity.csv"
    if cpath.exists():
        res.complexity = _normalise_complexity(_read_csv(cpath, ["model"]), cpath)
        res.complexity_meta = _json_meta(cpath.with_suffix(".json"))
        res.files.append(cpath)
    for spath in sorted((root / "speed").glob("speed-*.csv")):
        df = _read_csv(spath, ["model", "mode", "batch_size", "median_ms"])
        if df.empty:
            continue
        df["model"] = df["model"].astype(str)
        slug = spath.stem.removeprefix("speed-")
        res.speed[slug] = df
        res.speed_meta[slug] = _json_meta(spath.with_suffix(".json"))
        res.files.append(spath)
    bpath = root / "benchmark.json"
    if bpath.exists():
        obj = _read_json(bpath)
        res.benchmark = obj if isinstance(obj, dict) else {}
    res.runs = _load_runs(root)
    if not res.runs.empty:
        res.files.extend(Path(p) for p in res.runs["path"])
    stat_frames = []
    for path in sorted((root / "stats").glob("*.csv")):
        df = _read_csv(path, [])
        # bench.stats names its files <dataset>_<recipe>-e<epochs>_pairwise.csv
        name = path.stem.removesuffix("_pairwise")
        m = re.fullmatch(r"(?P<dataset>.+)_(?P<recipe>[^_]+)-e(?P<epochs>\d+)", name)
        found = m.groupdict() if m else {"dataset": name}
        for key, val in found.items():
            if key not in df:
                df[key] = int(val) if key == "epochs" else val
        stat_frames.append(df.assign(source=str(path)))
        res.files.append(path)
    if stat_frames:
        res.stats = pd.concat(stat_frames, ignore_index=True)
    return res


# --------------------------------------------------------------------------- summaries


def complexity_summary(res: Results) -> pd.DataFrame:
    """One row per model: parameter and MAC counts (raw integers)."""
    if res.complexity.empty:
        return pd.DataFrame(columns=["model"])
    return res.complexity.copy()


def _truthy(s: pd.Series) -> pd.Series:
    return s.astype(str).str.strip().str.lower().isin({"true", "1", "yes"})


def _default_variant(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the baseline variant: fp32, NCHW, eager, successful."""
    keep = pd.Series(True, index=df.index)
    if "dtype" in df:
        keep &= df["dtype"].astype(str).str.lower().isin(_FP32)
    if "layout" in df:
        keep &= ~df["layout"].astype(str).str.lower().isin(_CHANNELS_LAST)
    if "compile" in df:
        keep &= ~_truthy(df["compile"])
    if "status" in df:
        keep &= df["status"].fillna("").astype(str).str.lower().isin(_OK_STATUS)
    keep &= pd.to_numeric(df["median_ms"], errors="coerce").notna()
    return df[keep]


def speed_summary(df: pd.DataFrame, input_size: int | None = 256) -> pd.DataFrame:
    """One row per model from one device's speed rows.

    latency_ms: median at batch 1 (inference, fp32); throughput_img_s: the best over
    batch sizes; peak_mem_mb and roofline_fraction at batch 1; train_img_s: the best
    training-step throughput measured. Rows at ``input_size`` are preferred when the
    file holds several sizes; of repeated configurations the latest run counts.
    """
    base = _default_variant(df).copy()
    base["batch_size"] = pd.to_numeric(base["batch_size"], errors="coerce")
    if input_size is not None and "input_size" in base:
        at_size = pd.to_numeric(base["input_size"], errors="coerce") == input_size
        if at_size.any():
            base = base[at_size]
    if "run" in base:
        base = base.sort_values("run", kind="stable")
    out: dict[str, dict[str, Any]] = {m: {"model": m} for m in sorted(df["model"].unique())}
    inf = base[base["mode"].astype(str) == "inference"]
    for model, g in inf.groupby("model"):
        row = out[model]
        b1 = g[g["batch_size"] == 1]
        if not b1.empty:
            r = b1.iloc[-1]
            row["latency_ms"] = float(r["median_ms"])
            for key in (
                "iqr_ms",
                "p90_ms",
                "noisy",
                "roofline_fraction",
                "achieved_gflops",
                "threads",
            ):
                if key in r:
                    row[key] = r[key]
            mem = r.get("peak_mem_mb")
            if mem is None or pd.isna(mem):
                mem = r.get("rss_mb")
            row["peak_mem_mb"] = mem
        if "throughput_img_s" in g and g["throughput_img_s"].notna().any():
            best = g.loc[pd.to_numeric(g["throughput_img_s"], errors="coerce").idxmax()]
            row["throughput_img_s"] = float(best["throughput_img_s"])
            row["best_batch"] = int(best["batch_size"])
    train = base[base["mode"].astype(str) == "train"]
    for model, g in train.groupby("model"):
        if "throughput_img_s" in g and g["throughput_img_s"].notna().any():
            best = g.loc[pd.to_numeric(g["throughput_img_s"], errors="coerce").idxmax()]
            out[model]["train_img_s"] = float(best["throughput_img_s"])
            out[model]["train_batch"] = int(best["batch_size"])
    # Configurations that were skipped or failed, so the table can say why a cell is empty.
    if "status" in df:
        bad = df[~df["status"].fillna("").astype(str).str.lower().isin(_OK_STATUS)]
        for model, g in bad.groupby("model"):
            reasons = sorted(
                {
                    f"{r['mode']} bs{r['batch_size']}: {r.get('reason', r['status'])}"
                    for _, r in g.iterrows()
                }
            )
            out[model]["speed_notes"] = "; ".join(reasons)
    return pd.DataFrame(list(out.values()))


def accuracy_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment (dataset, model, recipe, epochs): metrics averaged over
    seeds, in percent (HD95 in px).

    ``*_mean`` / ``*_std`` are the mean and sample standard deviation over seeds (std
    is NaN with one seed); ``dice_img_std`` is the per-image spread averaged over seeds.
    ``experiment`` is ``<recipe>-e<epochs>``, as in the runs' folder names.
    """
    cols = [*_EXPERIMENT, "experiment", "n_seeds"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (dataset, model, recipe, epochs), g in runs.groupby(_EXPERIMENT, sort=True):
        row: dict[str, Any] = {
            "dataset": dataset,
            "model": model,
            "recipe": recipe,
            "epochs": int(epochs),
            "experiment": f"{recipe}-e{epochs}",
            "n_seeds": len(g),
        }
        row["seeds"] = ",".join(str(s) for s in sorted(g["seed"].astype(str)))
        for key, scale in (
            ("dsc", 100),
            ("miou", 100),
            ("dice_mean", 100),
            ("iou_mean", 100),
            ("isic_jaccard", 100),
            ("acc", 100),
            ("sen", 100),
            ("spe", 100),
            ("hd95_mean", 1),
            ("hd95_median", 1),
        ):
            if key in g and g[key].notna().any():
                vals = g[key].dropna() * scale
                name = key.removesuffix("_mean")
                row[f"{name}_mean"] = float(vals.mean())
                row[f"{name}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        if "dice_std" in g:
            row["dice_img_std"] = float(g["dice_std"].mean() * 100)
        if "n_images" in g:
            row["n_images"] = int(g["n_images"].max())
        rows.append(row)
    return pd.DataFrame(rows)


def main_experiments(acc: pd.DataFrame) -> pd.DataFrame:
    """Of :func:`accuracy_summary` rows, each (dataset, model)'s experiment with the most
    epochs (ties: more seeds, then the recipe name): the one plots and the per-model
    summary show."""
    if acc.empty:
        return acc
    order = acc.sort_values(
        ["dataset", "model", "epochs", "n_seeds", "recipe"],
        ascending=[True, True, False, False, True],
        kind="stable",
    )
    return order.drop_duplicates(["dataset", "model"], keep="first").reset_index(drop=True)


def accuracy_table(res: Results, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per experiment (dataset, model, recipe, epochs), then models that have
    only the papers' figures; paper and significance columns joined by model."""
    summary = summary_table(res) if summary is None else summary
    acc = accuracy_summary(res.runs)
    extra = [c for c in summary.columns if c.startswith("paper_") and c.endswith(("_dsc", "_miou"))]
    if "significantly_different_from" in summary:
        extra.append("significantly_different_from")
    by_model = summary[["model", *extra]]
    measured = acc.merge(by_model, on="model", how="left")
    paper_cols = [c for c in extra if c.endswith("_dsc")]
    paper_only = by_model[
        ~by_model["model"].isin(acc["model"]) & by_model[paper_cols].notna().any(axis=1)
    ]
    out = pd.concat([measured, paper_only], ignore_index=True)
    for col in ("epochs", "n_seeds"):  # stay integers next to the paper-only rows' NaN
        if col in out:
            out[col] = out[col].astype("Int64")
    return out


def paper_dataset(dataset: str) -> str | None:
    """The paper's dataset key a measured dataset corresponds to (``isic2017-mini`` -> isic2017)."""
    m = re.search(r"(isic)[-_ ]?(20\d\d)", dataset.lower())
    if m:
        return f"isic{m.group(2)}"
    return "ph2" if "ph2" in dataset.lower() else None


def paper_summary(models: Iterable[str]) -> pd.DataFrame:
    """Figures as the papers print them, one row per model (percent, M params, GFLOPs)."""
    try:
        from models import model_info
        from models.registry import UnknownModelError
    except ImportError:  # report still works on results from another checkout
        return pd.DataFrame({"model": list(models)})
    rows = []
    for name in models:
        row: dict[str, Any] = {"model": name}
        try:
            rep = model_info(name).reported or {}
        except UnknownModelError:
            rep = {}
        row["paper_params_m"] = rep.get("params_m", math.nan)
        row["paper_gflops"] = rep.get("gflops", math.nan)
        for key, val in rep.items():
            if isinstance(val, dict):
                for metric in ("dsc", "miou"):
                    if metric in val:
                        row[f"paper_{key}_{metric}"] = float(val[metric])
        rows.append(row)
    return pd.DataFrame(rows)


def _paper_datasets(paper: pd.DataFrame) -> list[str]:
    keys = {c.split("_")[1] for c in paper.columns if c.startswith("paper_") and c.endswith("_dsc")}
    return sorted(keys)


def summary_table(res: Results, device: str | None = None) -> pd.DataFrame:
    """One row per model with raw numbers: complexity, speed on ``device``, accuracy, paper."""
    models = res.models
    out = pd.DataFrame({"model": models})
    comp = complexity_summary(res)
    if len(comp.columns) > 1:
        out = out.merge(comp, on="model", how="left")
    device = device or res.primary_device
    if device is not None:
        out = out.merge(speed_summary(res.speed[device]), on="model", how="left")
    acc = main_experiments(accuracy_summary(res.runs))
    for dataset, g in acc.groupby("dataset", sort=True):
        sub = g.drop(columns="dataset").set_index("model").add_prefix(f"{dataset}:")
        out = out.merge(sub, left_on="model", right_index=True, how="left")
    sig = significance_marks(res.stats)
    if not sig.empty:
        out = out.merge(sig, on="model", how="left")
    out = out.merge(paper_summary(models), on="model", how="left")
    return out


def significance_marks(stats: pd.DataFrame) -> pd.DataFrame:
    """Hook for paired statistics (``results/stats/*.csv``): per model, the models it
    differs from significantly.

    Reads rows with ``model_a``, ``model_b`` and either a boolean ``significant`` or a
    corrected p-value (``p_holm`` / ``p_adjusted`` / ``p_adj``, alpha 0.05), plus an
    optional ``dataset``. Anything else yields an empty frame (no column in the tables).
    """
    if stats.empty or not {"model_a", "model_b"} <= set(stats.columns):
        return pd.DataFrame()
    if "significant" in stats:
        sig = _truthy(stats["significant"])
    else:
        pcol = next((c for c in ("p_holm", "p_adjusted", "p_adj") if c in stats), None)
        if pcol is None:
            return pd.DataFrame()
        sig = pd.to_numeric(stats[pcol], errors="coerce") < 0.05
    rows: dict[str, set[str]] = {}
    for (_, r), s in zip(stats.iterrows(), sig):
        if not s:
            continue
        tag = f"@{r['dataset']}" if "dataset" in stats and pd.notna(r.get("dataset")) else ""
        if {"recipe", "epochs"} <= set(stats.columns) and pd.notna(r.get("epochs")):
            tag += f"/{r['recipe']}-e{int(r['epochs'])}"  # stats compare one experiment
        rows.setdefault(str(r["model_a"]), set()).add(f"{r['model_b']}{tag}")
        rows.setdefault(str(r["model_b"]), set()).add(f"{r['model_a']}{tag}")
    return pd.DataFrame(
        [
            {"model": m, "significantly_different_from": ", ".join(sorted(v))}
            for m, v in rows.items()
        ]
    )


# --------------------------------------------------------------------------- table views


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
        Col("MACs segbench (G)", "macs", 1e-9, 3),
        Col("GFLOPs papers' convention (thop MACs, G)", "thop_macs", 1e-9, 3),
        Col("paper params (M)", "paper_params_m", 1, 3),
        Col("paper GFLOPs", "paper_gflops", 1, 3),
        Col(f"latency bs1{dev} (ms, median)", "latency_ms", flag="noisy"),
        Col(f"throughput{dev} (img/s, best batch)", "throughput_img_s"),
        Col("best batch", "best_batch", decimals=0),
        Col(f"train step{dev} (img/s)", "train_img_s"),
        Col("peak mem bs1 (MB)", "peak_mem_mb"),
        Col("roofline bs1 (%)", "roofline_fraction", 100),
    ]


def _accuracy_cols(datasets: Sequence[str], paper_keys: Sequence[str]) -> list[Col]:
    cols = [Col("model", "model")]
    for ds in datasets:
        cols += [
            Col(f"{ds} experiment", f"{ds}:experiment"),
            Col(f"{ds} seeds", f"{ds}:n_seeds", decimals=0),
            Col(f"{ds} DSC pooled (%)", f"{ds}:dsc_mean", decimals=2, std=f"{ds}:dsc_std"),
            Col(f"{ds} mIoU pooled (%)", f"{ds}:miou_mean", decimals=2, std=f"{ds}:miou_std"),
            Col(f"{ds} Dice per-image (%)", f"{ds}:dice_mean", decimals=2, std=f"{ds}:dice_std"),
            Col(f"{ds} HD95 (px)", f"{ds}:hd95_mean", decimals=1, std=f"{ds}:hd95_std"),
        ]
    for key in paper_keys:
        name = key.upper()
        cols += [
            Col(f"paper DSC {name} (%)", f"paper_{key}_dsc", decimals=2),
            Col(f"paper mIoU {name} (%)", f"paper_{key}_miou", decimals=2),
        ]
    cols.append(Col("significantly different from", "significantly_different_from"))
    return cols


def _experiment_cols(paper_keys: Sequence[str]) -> list[Col]:
    """Columns of the accuracy table: one row per (dataset, model, recipe, epochs)."""
    cols = [
        Col("model", "model"),
        Col("dataset", "dataset"),
        Col("recipe", "recipe"),
        Col("epochs", "epochs", decimals=0),
        Col("seeds", "n_seeds", decimals=0),
        Col("DSC pooled (%)", "dsc_mean", decimals=2, std="dsc_std"),
        Col("mIoU pooled (%)", "miou_mean", decimals=2, std="miou_std"),
        Col("Dice per-image (%)", "dice_mean", decimals=2, std="dice_std"),
        Col("HD95 (px)", "hd95_mean", decimals=1, std="hd95_std"),
    ]
    for key in paper_keys:
        name = key.upper()
        cols += [
            Col(f"paper DSC {name} (%)", f"paper_{key}_dsc", decimals=2),
            Col(f"paper mIoU {name} (%)", f"paper_{key}_miou", decimals=2),
        ]
    cols.append(Col("significantly different from", "significantly_different_from"))
    return cols


def _speed_cols() -> list[Col]:
    return [
        Col("model", "model"),
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
        Col("achieved GFLOP/s", "achieved_gflops"),
        Col("roofline (%)", "roofline_fraction", 100),
        Col("status", "status"),
        Col("reason", "reason"),
    ]


# --------------------------------------------------------------------------- plots


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
            tmp = path.with_name(f".{path.name}.tmp")
            fig.savefig(tmp, format=ext, metadata=meta)
            tmp.replace(path)  # atomic, like bench.io
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
    leg = ax.legend(loc=legend_loc, fontsize=8, framealpha=0.9, **kw)
    fig.tight_layout()
    # no full draw needed: extents below come from the renderer directly
    renderer = canvas.get_renderer()
    from matplotlib.transforms import Bbox

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


def plot_pareto(
    points: list[Point],
    xlabel: str,
    ylabel: str,
    title: str,
    stem: Path,
    colours: dict[str, Any],
    logx: bool = True,
) -> list[Path]:
    """Accuracy vs cost: measured points filled, reported ones hollow, fronts as steps."""
    from matplotlib.lines import Line2D

    fig, ax, canvas = _new_figure()
    if logx:
        ax.set_xscale("log")
    measured = [p for p in points if p.kind == "measured"]
    reported = [p for p in points if p.kind == "reported"]
    by_model = {p.model: p for p in measured}
    for p in reported:  # connect a model's reported point to its measured one
        m = by_model.get(p.model)
        if m is not None:
            ax.plot([m.x, p.x], [m.y, p.y], ls=":", lw=0.8, color=colours[p.model], zorder=1)
    for p in measured:
        ax.errorbar(
            p.x,
            p.y,
            yerr=None if math.isnan(p.yerr) else p.yerr,
            fmt="o",
            ms=7,
            color=colours[p.model],
            mec="black",
            mew=0.6,
            zorder=3,
            capsize=2,
        )
    for p in reported:
        ax.scatter(
            p.x, p.y, s=60, facecolors="none", edgecolors=colours[p.model], linewidths=1.6, zorder=3
        )
    _freeze_limits(ax)
    front_names: set[str] = set()
    segments = [
        ((by_model[p.model].x, by_model[p.model].y), (p.x, p.y))
        for p in reported
        if p.model in by_model
    ]
    for group, style in (
        (measured, {"color": "black", "ls": "-"}),
        (reported, {"color": "0.45", "ls": "--"}),
    ):
        xs = np.array([p.x for p in group])
        ys = np.array([p.y for p in group])
        order = pareto_order(xs, ys)
        if len(order) == 0:
            continue
        names = list(dict.fromkeys(group[i].label or group[i].model for i in order))
        kind = group[0].kind
        if kind == "measured" or not measured:
            front_names.update(names)
        # Staircase: the best accuracy reachable at each cost, held to the right edge.
        fx = np.append(xs[order], ax.get_xlim()[1])
        fy = np.append(ys[order], ys[order][-1])
        ax.step(
            fx,
            fy,
            where="post",
            lw=1.3,
            zorder=1,
            alpha=0.8,
            label=f"Pareto front ({kind}): " + " → ".join(names),
            **style,
        )
        for i in range(len(fx) - 1):
            segments += [
                ((fx[i], fy[i]), (fx[i + 1], fy[i])),
                ((fx[i + 1], fy[i]), (fx[i + 1], fy[i + 1])),
            ]
    handles = list(ax.get_legend_handles_labels()[0])
    if measured:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                ls="",
                color="0.5",
                mec="black",
                label="measured (segbench; bar = std over seeds)",
            )
        )
    if any(p.model in by_model for p in reported):
        handles.append(Line2D([], [], ls=":", color="0.4", label="same model: measured ↔ reported"))
    if reported:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                ls="",
                mfc="none",
                mec="0.3",
                label="reported (paper, full test split)",
            )
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    labels = [(p.x, p.y, p.label or p.model, p.model in front_names) for p in measured]
    labels += [
        (p.x, p.y, f"{p.model} (reported)", p.model in front_names and not measured)
        for p in reported
        if p.model not in by_model
    ]
    markers = [(p.x, p.y) for p in reported]
    _finish_axes(fig, ax, canvas, labels, markers=markers, handles=handles, segments=segments)
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
        for x, y, n in hollow:
            ax.scatter(
                x,
                y,
                s=60,
                facecolors="none",
                edgecolors=colours.get(n, "0.4"),
                linewidths=1.4,
                zorder=2,
            )
        ax.scatter([], [], s=60, facecolors="none", edgecolors="0.3", label=hollow_label)
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
    ax.set_title(title, fontsize=10)
    labels = [(x, y, n, False) for x, y, n in zip(xs, ys, names)]
    _finish_axes(
        fig, ax, canvas, labels, markers=[(x, y) for x, y, _ in hollow], legend_loc="upper left"
    )
    return _save(fig, stem)


# --------------------------------------------------------------------------- report


@dataclass
class ReportOutput:
    tables: list[Path] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    readme: Path | None = None
    markdown: dict[str, str] = field(default_factory=dict)  # table name -> Markdown
    figures: list[tuple[str, Path, str]] = field(default_factory=list)  # (group, png, caption)
    # dataset -> which experiment (recipe, epochs, seeds) each measured point shows
    point_sources: dict[str, list[str]] = field(default_factory=dict)

    def add_figure(self, group: str, paths: list[Path], caption: str) -> None:
        self.plots += paths
        png = next(p for p in paths if p.suffix == ".png")
        self.figures.append((group, png, caption.replace("\n", "; ")))


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
    return "1x3x256x256"  # the default every harness module measures at


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


def _env_lines(env: dict[str, Any]) -> list[str]:
    lines = []
    if env.get("cpu"):
        lines.append(
            f"- CPU: {env['cpu']} ({env.get('cpu_count', '?')} logical cores, "
            f"torch threads {env.get('torch_threads', '?')})"
        )
    if env.get("device") == "cuda":
        lines.append(
            f"- GPU: {env.get('device_name')} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')})"
        )
    if env.get("platform"):
        lines.append(f"- platform: {env['platform']}")
    if env.get("git_commit"):
        lines.append(f"- git commit: `{env['git_commit']}`")
    vers = env.get("versions") or {}
    if vers:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    return lines


def _meta_runs(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs a result file records: ``{"runs": {run_id: meta}}`` or a single top level."""
    runs = meta.get("runs")
    if isinstance(runs, dict) and runs:
        return [v for _, v in sorted(runs.items()) if isinstance(v, dict)]
    return [meta] if meta else []


def _provenance(meta: dict[str, Any]) -> str:
    runs = _meta_runs(meta)
    if not runs:
        return "no provenance recorded"
    cmds = []
    for run in runs:
        cmd = run.get("command") or run.get("argv")
        if isinstance(cmd, list):
            cmd = shlex.join(str(c) for c in cmd)
        if cmd and cmd not in cmds:
            cmds.append(str(cmd))
    env = runs[-1].get("environment") or {}
    parts = []
    if cmds:
        parts.append(
            ("command " if len(cmds) == 1 else f"{len(cmds)} commands ")
            + "; ".join(f"`{c}`" for c in cmds)
        )
    if env:
        dev = env.get("device_name") or env.get("cpu")
        parts.append(f"on {dev}")
        if env.get("git_commit"):
            parts.append(f"commit `{str(env['git_commit'])[:12]}`")
        ver = (env.get("versions") or {}).get("torch")
        if ver:
            parts.append(f"torch {ver}")
    return ", ".join(parts) if parts else "no provenance recorded"


def _readme(
    res: Results,
    out: Path,
    report: ReportOutput,
    command: str,
    input_label: str,
    env: dict[str, Any],
    env_source: str = "the machine running this report",
) -> str:
    def rel(p: Path) -> str:
        return p.relative_to(out).as_posix()

    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
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
        f"- input size for complexity and speed: {input_label}",
        f"- machine ({env_source}):",
        *("  " + line for line in _env_lines(env)),
        "",
    ]
    bench = res.benchmark
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
    lines += ["Inputs:", ""]
    if res.complexity_meta or not res.complexity.empty:
        lines.append(f"- `complexity/complexity.csv`: {_provenance(res.complexity_meta)}")
    for slug in res.devices:
        lines.append(
            f"- `speed/speed-{slug}.csv` ({res.device_name(slug)}): "
            f"{_provenance(res.speed_meta.get(slug, {}))}"
        )
    if not res.runs.empty:
        n = len(res.runs)
        n_exp = len(res.runs.drop_duplicates(_EXPERIMENT))
        lines.append(
            f"- `runs/`: {n} finished training run(s), {n_exp} experiment(s) "
            f"(dataset, model, recipe, epochs), {res.runs['dataset'].nunique()} dataset(s); "
            "each run's `metrics.json` records its own command environment and config"
        )
    if res.stats.shape[0]:
        lines.append("- `stats/`: paired tests (the accuracy table lists significant differences)")
    lines.append("")

    def section(title: str, name: str, note: str = "") -> None:
        if name in report.markdown:
            lines.extend([f"## {title}", ""])
            if note:
                lines.extend([note, ""])
            lines.extend(
                [report.markdown[name], "", f"CSV: [`tables/{name}.csv`](tables/{name}.csv)", ""]
            )

    section(
        "Efficiency",
        "efficiency",
        "MACs: segbench's dispatch-level count (multiply-accumulates of conv, linear, "
        "matmul, attention). 'GFLOPs papers' convention' is thop's MAC count, which the "
        "papers print as GFLOPs. Latency: median of timed runs at batch 1, inference, "
        "fp32, marked noisy where bench.speed flags it (IQR above 10% of the median, or "
        "stopped at its time cap); "
        "throughput: best over the batch sizes measured; train step: forward, "
        "backward and AdamW step (models the time budget left out have none). Peak "
        "memory: CUDA max allocated on a GPU; on a CPU the process's peak RSS, which "
        "includes the interpreter and libraries. Roofline: achieved fraction of the "
        "device's roofline bound at batch 1. Every configuration is in the speed tables "
        "below.",
    )
    section(
        "Accuracy",
        "accuracy",
        "One row per experiment (dataset, model, recipe, epochs): runs of different "
        "recipes or epochs are never averaged together. "
        "Measured: mean ± std over seeds (std shown from 2 seeds on); DSC and mIoU pooled "
        "over all test pixels (the papers' convention), Dice per image averaged over "
        "images, HD95 in pixels at the evaluation resolution. 'paper' columns are the "
        "papers' printed figures on their own (full) test splits, not measured here.",
    )
    if report.figures:
        lines.extend(
            [
                "## Plots",
                "",
                "Filled markers: measured by segbench. Hollow markers: figures reported "
                "in the papers (accuracy on the papers' own test splits; cost measured "
                "here where segbench has the model, else as printed). Step lines: Pareto "
                "fronts (lower cost, higher accuracy), front models in bold. An SVG "
                "version lies beside each PNG.",
                "",
            ]
        )
        if report.point_sources:
            lines.extend(
                [
                    "Each model's measured point shows its experiment with the most epochs "
                    "(ties: more seeds); the accuracy table lists every experiment.",
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
    for slug in res.devices:
        section(
            f"Speed on {res.device_name(slug)}",
            f"speed-{slug}",
            "Every configuration measured (one row each); skipped ones give a reason.",
        )
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    results_dir: str | Path = RESULTS_DIR,
    out_dir: str | Path | None = None,
    command: str | None = None,
    progress: bool = True,
) -> ReportOutput:
    """Read ``results_dir`` and write tables, plots and README.md under ``out_dir``."""
    from tqdm.auto import tqdm

    from bench.env import environment

    res = load_results(results_dir)
    out = Path(out_dir) if out_dir is not None else Path(results_dir)
    command = command or "bench.report.write_report(" + repr(str(results_dir)) + ")"
    report = ReportOutput()
    if not res.models:
        raise ReportInputError(
            f"{results_dir}: no result files found (expected complexity/complexity.csv, "
            f"speed/speed-*.csv or {RUN_METRICS_GLOB}); run `segbench benchmark` first"
        )
    steps = tqdm(total=4, desc="report", disable=not progress, leave=False)
    summary = summary_table(res)
    input_label = _input_label(res)
    dev_label = res.device_name(res.primary_device) if res.primary_device else None

    steps.set_postfix_str("tables")
    _write_table(
        out,
        "summary",
        summary,
        _efficiency_cols(dev_label) + _accuracy_cols(*_datasets(summary))[1:],
        report,
    )
    _write_table(out, "efficiency", summary, _efficiency_cols(dev_label), report)
    datasets, paper_keys = _datasets(summary)
    if datasets or paper_keys:
        _write_table(
            out, "accuracy", accuracy_table(res, summary), _experiment_cols(paper_keys), report
        )
    for slug in res.devices:
        rows = res.speed[slug].sort_values(["model", "mode", "batch_size"], kind="stable")
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
    env_dev = "cuda" if (res.primary_device or "").startswith("cuda") else "cpu"
    try:
        env = environment(env_dev)
    except (RuntimeError, AssertionError):  # CUDA results read on a machine without CUDA
        env = environment("cpu")
    speed_runs = _meta_runs(res.speed_meta.get(res.primary_device or "", {}))
    speed_env = speed_runs[-1].get("environment") if speed_runs else None
    env_source = "the machine running this report"
    if isinstance(speed_env, dict):  # the machine that timed the models, not the reader
        env = {**env, **{k: v for k, v in speed_env.items() if v is not None}}
        env_source = f"the machine that produced speed/speed-{res.primary_device}.csv"
    text = _readme(res, out, report, command, input_label, env, env_source)
    report.readme = write_text(out / "README.md", text)
    steps.update()
    steps.close()
    return report


# The report's own output names; files of these names not written by this run are stale
# (a dataset or device that is gone) and removed. Other files in tables/ stay.
_OWN_OUTPUTS = {
    "plots": ("pareto-*.png", "pareto-*.svg", "efficiency-*.png", "efficiency-*.svg"),
    "tables": ("summary.*", "efficiency.*", "accuracy.*", "speed-*.csv", "speed-*.md"),
}


def _remove_stale(out: Path, report: ReportOutput) -> None:
    written = {p.resolve() for p in report.tables + report.plots}
    for folder, patterns in _OWN_OUTPUTS.items():
        for pattern in patterns:
            for path in (out / folder).glob(pattern):
                if path.resolve() not in written:
                    path.unlink()


def _datasets(summary: pd.DataFrame) -> tuple[list[str], list[str]]:
    measured = sorted({c.split(":")[0] for c in summary.columns if c.endswith(":dsc_mean")})
    paper = _paper_datasets(summary)
    return measured, paper


# --------------------------------------------------------------------------- CLI


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        cmd = ["segbench", "report"]
        if Path(args.results) != RESULTS_DIR:
            cmd += ["--results", str(args.results)]
        if args.out is not None:
            cmd += ["--out", str(args.out)]
        rep = write_report(args.results, args.out, command=shlex.join(cmd), progress=not args.quiet)
    except ReportInputError as err:
        print(f"segbench report: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(rep.markdown.get("efficiency", ""))
        print(
            f"\nwrote {len(rep.tables)} table files, {len(rep.plots)} plot files and {rep.readme}"
        )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="tables, Pareto plots and results/README.md from results/",
        description="Read every result file under --results (complexity, speed per device, "
        "finished training runs, optional paired statistics) and write Markdown + CSV tables "
        "(tables/), Pareto and efficiency plots as PNG + SVG (plots/) and README.md into --out.",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help="results folder to read (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write tables/, plots/ and README.md (default: --results)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or table print-out")
    p.set_defaults(func=_cmd_report)
