"""Summaries the report shows: complexity, speed per model, accuracy per experiment, the papers' figures, significance marks."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import pandas as pd

from bench.analysis.report.accuracy import accuracy_summary, main_experiments
from bench.analysis.report.claims import limiter_text, thop_note, train_step_note
from bench.analysis.report.load import _CHANNELS_LAST, _FP32, _OK_STATUS, Results
from bench.analysis.report.significance import report_comparisons, significance_column
from bench.analysis.runinfo import POOL_KEY
from bench.analysis.runs import EXPERIMENT_KEY
from bench.engine.metric_table import METRICS


def complexity_summary(res: Results) -> pd.DataFrame:
    """One row per model: parameter and MAC counts (raw integers).

    ``macs_lower_bound``: the count met ops it has no rule for (status ``incomplete``), so
    its MACs are a lower bound; the tables mark them ``>= ``.
    """
    if res.complexity.empty:
        return pd.DataFrame(columns=["model"])
    out = res.complexity.copy()
    if "params_thop" in out:  # thop's MACs (the papers' convention) miss what it skipped
        out["thop_note"] = [
            thop_note(t, s) for t, s in zip(out["params_total"], out["params_thop"])
        ]
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


def _at_size(df: pd.DataFrame, input_size: int | None) -> pd.DataFrame:
    """The rows measured at ``input_size`` when the file holds any, else all rows."""
    if input_size is None or "input_size" not in df:
        return df
    at_size = pd.to_numeric(df["input_size"], errors="coerce") == input_size
    return df[at_size] if at_size.any() else df


def _latest_last(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in run order (stable), so ``tail(1)`` / later rows are the latest run's."""
    return df.sort_values("run", kind="stable") if "run" in df else df


def speed_summary(df: pd.DataFrame, input_size: int | None = 256) -> pd.DataFrame:
    """One row per model from one device's speed rows.

    latency_ms: median at batch 1 (inference, fp32); throughput_img_s: the best over
    batch sizes; peak_mem_mb and roofline_fraction at batch 1; train_img_s: the best
    training-step throughput measured. Rows at ``input_size`` are preferred when the
    file holds several sizes; of repeated configurations the latest run counts.
    """
    base = _default_variant(df).copy()
    base["batch_size"] = pd.to_numeric(base["batch_size"], errors="coerce")
    base = _latest_last(_at_size(base, input_size))
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
                "input_size",
            ):
                if key in r:
                    row[key] = r[key]
            row["limiter"] = limiter_text(r)
            # Memory at batch 1: the device's peak (CUDA max allocated) where measured; on a
            # CPU the model's own increase of the process RSS (rss_delta_mb) when the speed
            # file has it, else the whole process's RSS, which includes the interpreter.
            row["peak_mem_mb"] = r.get("peak_mem_mb")
            if pd.isna(r.get("peak_mem_mb")):  # a CPU: no device peak
                delta = pd.to_numeric(pd.Series([r.get("rss_delta_mb")]), errors="coerce")
                if delta.notna().iloc[0]:
                    row["rss_delta_mb"] = float(delta.iloc[0])
                elif pd.isna(r.get("weights_mb")):
                    row["process_rss_mb"] = r.get("rss_mb")
                # else: the speed stage blanked a delta below the weights' size (not
                # measured); the process RSS would look like the model's and is left out
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
            out[model]["train_note"] = train_step_note(best)
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
    base = _latest_last(_at_size(base, input_size))
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


UNMEASURED_NOTE = "not measured yet: no finished training run under runs/"


def accuracy_table(
    res: Results, summary: pd.DataFrame | None = None, baselines: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per experiment (see :func:`accuracy_summary`), then the trivial baselines
    of each dataset, then every other model of the report (not measured yet, with the
    papers' figures where they exist); paper columns joined by model. The significance
    column is filled only on each model's main experiment (the one the comparisons
    tested)."""
    summary = summary_table(res) if summary is None else summary
    acc = accuracy_summary(res.runs)
    extra = [c for c in summary.columns if c.startswith("paper_") and c.endswith(("_dsc", "_miou"))]
    by_model = summary[["model", *extra]]
    measured = acc.merge(by_model, on="model", how="left")
    if "significant_over_seeds" in summary and not measured.empty:
        main = main_experiments(acc)[[*POOL_KEY]].assign(_main=True)
        measured = measured.merge(main, on=POOL_KEY, how="left")
        sig = summary.set_index("model")["significant_over_seeds"]
        measured["significant_over_seeds"] = [
            sig.get(m) if flag is True else math.nan
            for m, flag in zip(measured["model"], measured["_main"])
        ]
        measured = measured.drop(columns="_main")
    parts = [measured]
    if baselines is not None and not baselines.empty:
        parts.append(baselines)
    # every other model of the report gets a row too, so that a reader sees which models
    # have no measurement yet instead of missing them (their paper figures, if any, stay)
    unmeasured = by_model[~by_model["model"].isin(acc["model"])].assign(row_note=UNMEASURED_NOTE)
    parts.append(unmeasured)
    out = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    for col in ("epochs", "n_seeds"):  # stay integers next to the unmeasured rows' NaN
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
    sig = significance_column(report_comparisons(res)[0])
    if not sig.empty:
        out = out.merge(sig, on="model", how="left")
    out = out.merge(paper_summary(models), on="model", how="left")
    return out


BASELINE_NAMES = {
    "disc": "centred disc (training mean lesion area)",
    "mean-mask": "mean training mask, thresholded",
    "all": "every pixel lesion",
}


def baseline_rows(res: Results) -> pd.DataFrame:
    """The trivial baselines (``baselines/<dataset>/<kind>/metrics.json``) as accuracy-table
    rows: model ``baseline: <kind>``, metrics in percent (HD95 in px), no seeds (a
    baseline is deterministic)."""
    b = res.baselines
    if b.empty:
        return pd.DataFrame()
    rows = []
    for _, r in b.sort_values(["dataset", "kind"]).iterrows():
        row: dict[str, Any] = {
            "model": f"baseline: {r['kind']}",
            "dataset": r["dataset"],
            "row_note": "trivial baseline: "
            + BASELINE_NAMES.get(str(r["kind"]), "a fixed predictor")
            + f", {r['split']} split",
        }
        for m in METRICS:
            if m.key in r and pd.notna(r[m.key]):
                row[f"{m.column}_mean"] = float(r[m.key]) * m.scale
        n_img, undefined = r.get("n_images"), r.get("hd95_n_undefined")
        if pd.notna(n_img) and pd.notna(undefined):
            row["hd95_undefined"], row["hd95_scored"] = int(undefined), int(n_img)
            row["hd95_undefined_text"] = f"{int(undefined)}/{int(n_img)} undefined"
        rows.append(row)
    return pd.DataFrame(rows)


def _pm_text(values: pd.Series, digits: int = 2, signed: bool = False) -> str:
    v = values.dropna().astype(float)
    if v.empty:
        return "–"
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    text = fmt.format(v.mean())
    if len(v) > 1:
        text += f" ± {v.std(ddof=1):.{digits}f}"
    return text


def external_table(res: Results) -> tuple[pd.DataFrame, list[str]]:
    """External validation: (table, the evaluated dataset-split columns).

    One row per experiment (trained on dataset A) that has runs scored elsewhere; for
    each evaluated ``<dataset B>-<split>``: pooled DSC (%) mean ± std over the seeds
    scored there, and the drop from in-domain (B minus the same seed's A test DSC,
    percentage points), mean ± std over seeds. Numbers also go to ``<B>:dsc_mean`` /
    ``<B>:dsc_std`` / ``<B>:drop_mean`` / ``<B>:drop_std`` / ``<B>:n`` for the CSV.
    """
    ext = res.external
    if ext.empty:
        return pd.DataFrame(), []
    ext = ext.assign(target=ext["eval_dataset"] + "-" + ext["eval_split"])
    targets = sorted(set(ext["target"]))
    rows = []
    for key, g in ext.groupby(EXPERIMENT_KEY, sort=True, dropna=False):
        row: dict[str, Any] = dict(zip(EXPERIMENT_KEY, key))
        keep = pd.Series(True, index=res.runs.index)
        for k, v in zip(EXPERIMENT_KEY, key):
            keep &= res.runs[k].astype(str) == str(v)
        in_domain = res.runs.loc[keep, "dsc"] * 100
        row["n_seeds"] = int(keep.sum())
        row["in_domain"] = _pm_text(in_domain)
        row["in_domain_dsc_mean"] = float(in_domain.mean())
        for t in targets:
            cell = g[g["target"] == t]
            if cell.empty:
                continue
            dsc = cell["eval_dsc"].astype(float) * 100
            drop = (cell["eval_dsc"].astype(float) - cell["in_domain_dsc"].astype(float)) * 100
            n = int(dsc.notna().sum())
            row[f"{t}:text"] = f"{_pm_text(dsc)} ({_pm_text(drop, signed=True)})" + (
                f", n={n}" if n != row["n_seeds"] else ""
            )
            row[f"{t}:dsc_mean"], row[f"{t}:dsc_std"] = dsc.mean(), dsc.std(ddof=1)
            row[f"{t}:drop_mean"], row[f"{t}:drop_std"] = drop.mean(), drop.std(ddof=1)
            row[f"{t}:n"] = n
        rows.append(row)
    return pd.DataFrame(rows), targets
