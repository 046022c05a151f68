"""Summaries the report shows: complexity, speed per model, accuracy per experiment, the papers' figures, significance marks."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import pandas as pd

from bench.analysis.report.load import _CHANNELS_LAST, _EXPERIMENT, _FP32, _OK_STATUS, Results
from bench.engine.metric_table import METRICS


def complexity_summary(res: Results) -> pd.DataFrame:
    """One row per model: parameter and MAC counts (raw integers).

    ``macs_lower_bound``: the count met ops it has no rule for (status ``incomplete``), so
    its MACs are a lower bound; the tables mark them ``>= ``.
    """
    if res.complexity.empty:
        return pd.DataFrame(columns=["model"])
    out = res.complexity.copy()
    if "status" in out:
        out["macs_lower_bound"] = out["status"].astype(str).str.strip().str.lower() == "incomplete"
    return out


def _truthy(s: pd.Series) -> pd.Series:
    return s.astype(str).str.strip().str.lower().isin({"true", "1", "yes"})


def _backend(df: pd.DataFrame) -> pd.Series:
    """Each row's backend; rows from before the backend column are eager PyTorch."""
    if "backend" not in df:
        return pd.Series("torch", index=df.index)
    return df["backend"].fillna("").astype(str).replace("", "torch")


def _default_variant(df: pd.DataFrame, backend: str | None = "torch") -> pd.DataFrame:
    """Rows of the baseline variant: fp32, NCHW, not compiled, successful, on ``backend``
    (eager PyTorch by default; None: any backend)."""
    keep = pd.Series(True, index=df.index)
    if backend is not None:
        keep &= _backend(df) == backend
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
    _best_backend(df, input_size, out)
    # Configurations that were skipped or failed, so the table can say why a cell is empty.
    if "status" in df:
        bad = df[~df["status"].fillna("").astype(str).str.lower().isin(_OK_STATUS)]
        for model, g in bad.groupby("model"):
            backends = _backend(g)
            reasons = sorted(
                {
                    f"{'' if b == 'torch' else b + ' '}{r['mode']} bs{r['batch_size']}: "
                    f"{r.get('reason', r['status'])}"
                    for b, (_, r) in zip(backends, g.iterrows())
                }
            )
            out[model]["speed_notes"] = "; ".join(reasons)
    return pd.DataFrame(list(out.values()))


def backend_latencies(df: pd.DataFrame, input_size: int | None = 256) -> pd.DataFrame:
    """fp32 batch-1 inference latency per (model, backend): columns model, backend,
    latency_ms (the latest run's row of each configuration)."""
    base = _default_variant(df, backend=None).copy()
    base["backend"] = _backend(base)
    base = base[base["mode"].astype(str) == "inference"]
    base = base[pd.to_numeric(base["batch_size"], errors="coerce") == 1]
    if input_size is not None and "input_size" in base:
        at_size = pd.to_numeric(base["input_size"], errors="coerce") == input_size
        if at_size.any():
            base = base[at_size]
    if "run" in base:
        base = base.sort_values("run", kind="stable")
    last = base.groupby(["model", "backend"], sort=True).tail(1)
    return pd.DataFrame(
        {
            "model": last["model"].to_numpy(),
            "backend": last["backend"].to_numpy(),
            "latency_ms": pd.to_numeric(last["median_ms"]).to_numpy(),
        }
    )


def _best_backend(df: pd.DataFrame, input_size: int | None, out: dict[str, dict]) -> None:
    """Per model: the fastest fp32 backend at batch 1, its latency and its speedup over
    eager PyTorch (only where eager was timed too, so the ratio is one machine's)."""
    lat = backend_latencies(df, input_size)
    for model, g in lat.groupby("model"):
        best = g.loc[g["latency_ms"].idxmin()]
        row = out[model]
        row["best_backend"] = str(best["backend"])
        row["best_latency_ms"] = float(best["latency_ms"])
        eager = g[g["backend"] == "torch"]["latency_ms"]
        if len(eager):
            row["speedup_vs_eager"] = float(eager.iloc[0]) / float(best["latency_ms"])
        runtimes = g[g["backend"] != "torch"]
        if len(runtimes):
            r = runtimes.loc[runtimes["latency_ms"].idxmin()]
            row["best_runtime"] = str(r["backend"])
            row["best_runtime_latency_ms"] = float(r["latency_ms"])


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
        # percentages first, then pixels (the column order of the accuracy summary)
        for key, scale in [(m.key, m.scale) for m in sorted(METRICS, key=lambda m: not m.percent)]:
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
