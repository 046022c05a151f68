"""The speed result files: row schema, merging a run into ``speed-<device_slug>.{csv,json}`` under a lock, and the printed table."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_COLUMNS = [
    "model", "mode", "dtype", "layout", "compile", "batch_size", "threads", "median_ms",
    "iqr_ms", "p90_ms", "mean_ms", "count", "noisy", "throughput_img_s", "peak_mem_mb",
    "rss_mb", "achieved_gflops", "roofline_fraction", "device", "device_name",
    "torch_version", "status", "reason",
]  # fmt: skip


EXTRA_COLUMNS = [
    "requested_batch_size", "input_size", "rss_delta_mb", "rss_method", "gmacs_per_img",
    "intensity_flop_per_byte", "roofline_bound_gflops", "roofline_limiter", "peak_tflops",
    "peak_gbps", "peak_source", "run",
    # deployment runtimes: which library ran the row, its version, the precision it really
    # computed in (read back where the library can say), and the output's agreement with
    # eager fp32 PyTorch on the same input (rows in another precision or another backend)
    "backend", "backend_version", "precision_detail", "exporter", "out_max_abs_diff",
    "out_rel_max_diff", "out_mask_diff",
]  # fmt: skip


COLUMNS = SCHEMA_COLUMNS + EXTRA_COLUMNS


#: A row with the same values here is the same configuration (a re-run replaces it).
KEY_COLUMNS = [
    "model",
    "backend",
    "mode",
    "dtype",
    "layout",
    "compile",
    "requested_batch_size",
    "threads",
    "input_size",
    "device",
]


_TEXT_COLUMNS = (
    "reason", "rss_method", "roofline_limiter", "peak_source", "backend_version",
    "precision_detail", "exporter",
)  # fmt: skip


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = "" if col in _TEXT_COLUMNS else math.nan
    for col in _TEXT_COLUMNS:
        df[col] = df[col].fillna("")
    # rows written before runtime backends existed were all eager PyTorch
    df["backend"] = df["backend"].where(df["backend"].notna() & (df["backend"] != ""), "torch")
    # Nullable dtypes keep counts integral and flags boolean next to skipped rows' blanks.
    for col in ("batch_size", "requested_batch_size", "threads", "input_size", "count"):
        df[col] = pd.to_numeric(df[col], errors="coerce").round().astype("Int64")
    for col in ("noisy", "compile"):
        df[col] = df[col].map(_as_bool).astype("boolean")
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra]


def _as_bool(v: Any) -> Any:
    if isinstance(v, str):  # a CSV read back
        return {"true": True, "false": False}.get(v.strip().lower(), pd.NA)
    return pd.NA if v is None or (isinstance(v, float) and math.isnan(v)) else bool(v)


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    out = []
    for col in KEY_COLUMNS:
        v = row.get(col)
        if col == "backend" and v in (None, ""):  # rows from before runtime backends
            v = "torch"
        if isinstance(v, float) and math.isfinite(v) and v == int(v):
            v = int(v)
        if isinstance(v, np.generic):
            v = v.item()
        out.append(str(v))
    return tuple(out)


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    recs = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in recs]


def write_results(
    df: pd.DataFrame, out_dir: str | Path, slug: str, run_id: str, meta: dict[str, Any]
) -> tuple[Path, Path]:
    """Merge ``df`` into ``out_dir/speed-<slug>.{csv,json}`` atomically.

    Existing rows of other configurations stay; a row with the same :data:`KEY_COLUMNS`
    is replaced. The JSON holds ``runs`` (command, environment, timing per run id) and
    ``rows`` (each naming its ``run``); the CSV holds the same rows. The read-merge-write
    holds an exclusive lock on ``out_dir`` so concurrent runs do not drop rows.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _dir_lock(out):  # two runs merging into one file must not lose each other's rows
        return _merge_write(df, out, slug, run_id, meta)


@contextlib.contextmanager
def _dir_lock(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``folder`` itself (no lock file left behind); no-op
    where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _merge_write(
    df: pd.DataFrame, out: Path, slug: str, run_id: str, meta: dict[str, Any]
) -> tuple[Path, Path]:
    from bench.core.io import read_json, write_csv, write_json

    csv_path, json_path = out / f"speed-{slug}.csv", out / f"speed-{slug}.json"
    old_rows: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    if json_path.exists():
        try:
            old = read_json(json_path)
            old_rows, runs = list(old["rows"]), dict(old.get("runs", {}))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{json_path}: not a segbench speed results file ({err}); move it "
                f"away or fix it before writing new rows"
            ) from err
    elif csv_path.exists():
        old_rows = _records(pd.read_csv(csv_path, keep_default_na=True))
    new_rows = _records(df)
    new_keys = {_key(r) for r in new_rows}
    merged = [r for r in old_rows if _key(r) not in new_keys] + new_rows
    runs[run_id] = meta
    used = {r.get("run") for r in merged}
    runs = {k: v for k, v in runs.items() if k in used}
    frame = _frame(merged)
    frame = frame.sort_values(
        ["model", "mode", "backend", "dtype", "layout", "compile", "requested_batch_size"],
        kind="stable",
        key=_sort_key,
    )
    frame = frame.reset_index(drop=True)
    write_csv(csv_path, frame)
    write_json(
        json_path,
        {"schema": "segbench-speed/1", "device_slug": slug, "runs": runs, "rows": _records(frame)},
    )
    return csv_path, json_path


def _sort_key(col: pd.Series) -> pd.Series:
    return col.astype(str) if col.dtype == object else col


_TABLE = [
    ("model", "model"),
    ("backend", "backend"),
    ("mode", "mode"),
    ("dtype", "dtype"),
    ("layout", "layout"),
    ("compile", "compile"),
    ("batch_size", "bs"),
    ("median_ms", "median ms"),
    ("iqr_ms", "IQR ms"),
    ("p90_ms", "p90 ms"),
    ("count", "n"),
    ("throughput_img_s", "img/s"),
    ("peak_mem_mb", "GPU MB"),
    ("rss_mb", "RSS MB"),
    ("rss_delta_mb", "RSS +MB"),  # the model's own share (from before it was built)
    ("achieved_gflops", "GFLOP/s"),
    ("roofline_fraction", "roofline"),
    ("roofline_limiter", "bound"),
    ("out_rel_max_diff", "out diff"),
    ("noisy", "noisy"),
    ("status", "status"),
    ("reason", "reason"),
]


def format_table(df: pd.DataFrame, reason_width: int = 60) -> str:
    """A readable fixed-width table of speed rows."""
    t = pd.DataFrame({label: df[col] for col, label in _TABLE if col in df})
    if "layout" in t:
        t["layout"] = (
            t["layout"].map({"contiguous": "nchw", "channels_last": "nhwc"}).fillna(t["layout"])
        )
    for col, fmt in (
        ("median ms", "{:.2f}"),
        ("IQR ms", "{:.2f}"),
        ("p90 ms", "{:.2f}"),
        ("img/s", "{:.1f}"),
        ("GPU MB", "{:.0f}"),
        ("RSS MB", "{:.0f}"),
        ("RSS +MB", "{:.0f}"),
        ("GFLOP/s", "{:.3g}"),
        ("roofline", "{:.1%}"),
        ("out diff", "{:.1e}"),
        ("n", "{:.0f}"),
    ):
        if col in t:
            t[col] = [fmt.format(float(v)) if _finite(v) else "-" for v in t[col]]
    for col in ("noisy", "bound", "compile"):
        if col in t:
            t[col] = [("-" if v is None or v is pd.NA or v == "" else str(v)) for v in t[col]]
    if "reason" in t:
        t["reason"] = [
            (str(r)[: reason_width - 1] + "…") if len(str(r)) > reason_width else str(r)
            for r in t["reason"].fillna("")
        ]
    return t.to_string(index=False)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
