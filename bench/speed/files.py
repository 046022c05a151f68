"""The speed result files: row schema, merging a run into ``speed-<device_slug>.{csv,json}`` under a lock, and the printed table."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.speed.sessions import check_one_measuring_run, incompatible_runs

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
    # time per image at this batch size over the same configuration's batch-1 time, and
    # a flag where it rises with the batch (see batch_scaling)
    "per_image_vs_b1", "batch_scaling",
    # fp32 size of the model's parameters: an RSS delta below it was not measured
    "weights_mb",
    # where the model comes from: "" for segbench's own, else its distribution + version,
    # module or file (an external model, labelled so in the report)
    "source",
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
    "precision_detail", "exporter", "batch_scaling",
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
    from bench.core.io import read_json

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
    # One file = one host and one measuring run: an older run with another host or
    # another roofline peak is replaced as a whole, never mixed with the new rows.
    stale = incompatible_runs(old_rows, new_rows, runs, meta)
    if stale:
        dropped = [r for r in old_rows if str(r.get("run") or "") in stale]
        warnings.warn(
            f"{csv_path}: dropped {len(dropped)} row(s) of older run(s) "
            + "; ".join(f"{k} ({why})" for k, why in sorted(stale.items()))
            + ": one speed file holds one host and one measuring run",
            stacklevel=3,
        )
        old_rows = [r for r in old_rows if str(r.get("run") or "") not in stale]
    merged = [r for r in old_rows if _key(r) not in new_keys] + new_rows
    runs[run_id] = meta
    _write_frame(_frame(merged), runs, csv_path, json_path, slug)
    return csv_path, json_path


def _write_frame(
    frame: pd.DataFrame, runs: dict[str, Any], csv_path: Path, json_path: Path, slug: str
) -> None:
    from bench.core.io import write_csv, write_json

    used = set(frame["run"].astype(str))
    runs = {k: v for k, v in runs.items() if k in used}
    frame = rss_checked(batch_scaling(frame))
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


#: Per-image time at batch b over batch 1 above this is flagged (10 % is above run-to-run
#: noise of an un-noisy row; see ``noisy_threshold``).
BATCH_SCALING_LIMIT = 1.10


def batch_scaling(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``per_image_vs_b1`` (time per image at this batch over the same configuration's
    batch-1 time) and a ``batch_scaling`` flag where it exceeds :data:`BATCH_SCALING_LIMIT`.

    A batch should cost at most its size times one image; a per-image time that *rises*
    with the batch means the larger batch ran other (slower) kernels or spilled a cache, and
    the batch-1 latency does not predict throughput. Example on record (issue 24): an Intel
    Xeon (AMX) host timed lraspp eager at 27 ms for batch 1 and 2,742 ms for batch 8 (12.7x
    per image). On the two EPYC hosts of results/speed the same model stays near 1x (AVX2
    0.85x, AVX-512 1.10x), so that case is host-specific. Reading the code: PyTorch's CPU
    convolution dispatch (``use_mkldnn`` in aten/src/ATen/native/Convolution.cpp) picks the
    kernel by batch size: an fp32 1x1 convolution (groups 1, unstrided, undilated) on an
    input of at most 20,480 elements runs the native ``Slow2d`` kernel at batch 1, while at
    batch > 1 every fp32 convolution goes to oneDNN. Checked with
    ``torch._C._select_conv_backend`` on lraspp (torch 2.14.1, 256x256 input): at batch 1,
    21 of its 50 1x1 convolutions take ``Slow2d`` (17 on 1x1 maps: the squeeze-excitation
    blocks and the LR-ASPP scale branch; 4 on 16x16 maps) and 29 oneDNN; at batch 8 all
    50 take oneDNN. So batch 1 and batch 8
    run different kernels for those layers, and a oneDNN path that is slow for tiny 1x1
    inputs on the AMX host would show exactly as this per-image rise; which kernel is slow
    there is not measured here: ``segbench profile --model lraspp_mobilenet_v3_large
    --batch-sizes 1,8`` (:mod:`bench.speed.profile`) on that host names the operators that
    add the per-image time.
    """
    out = frame.copy()
    out["per_image_vs_b1"] = math.nan
    out["batch_scaling"] = ""
    cfg = [c for c in KEY_COLUMNS if c != "requested_batch_size"]
    ok = out["status"].astype(str).eq("ok") & pd.to_numeric(out["median_ms"], errors="coerce").gt(0)
    keys = out[cfg].astype(str).agg("|".join, axis=1)
    per_img = pd.to_numeric(out["median_ms"], errors="coerce") / pd.to_numeric(
        out["batch_size"], errors="coerce"
    ).astype(float)
    b1 = ok & pd.to_numeric(out["batch_size"], errors="coerce").eq(1)
    base = dict(zip(keys[b1], per_img[b1]))
    ratio = keys.map(base).astype(float)
    ratio = per_img / ratio
    ratio = ratio.where(ok)
    out["per_image_vs_b1"] = ratio
    rising = ratio > BATCH_SCALING_LIMIT
    out.loc[rising, "batch_scaling"] = [
        f"per-image time {r:.2f}x batch 1 (rises with batch size)" for r in ratio[rising]
    ]
    return out


def rss_checked(frame: pd.DataFrame) -> pd.DataFrame:
    """Blank ``rss_delta_mb`` where it is below the row's ``weights_mb`` and say why in
    ``reason`` (:func:`bench.speed.memory.rss_delta_check`): such a delta was memory
    already resident, not a measurement. Rows without ``weights_mb`` are left as they are."""
    from bench.speed.memory import rss_delta_check

    out = frame.copy()
    delta = pd.to_numeric(out["rss_delta_mb"], errors="coerce")
    weights = pd.to_numeric(out["weights_mb"], errors="coerce")
    for i in out.index[delta.notna() & weights.notna()]:
        why = rss_delta_check(float(delta[i]), float(weights[i]))
        if why:
            out.at[i, "rss_delta_mb"] = math.nan
            reason = str(out.at[i, "reason"] or "")
            out.at[i, "reason"] = "; ".join(t for t in (reason, why) if t)
    return out


def keep_latest_run(csv_or_json: str | Path, weights_mb: dict[str, float] | None = None) -> int:
    """Drop from a speed file every run that cannot share it with its latest run (another
    host or another roofline peak, :mod:`bench.speed.sessions`); return how many rows went.
    The file is rewritten through the writer either way, so its derived columns
    (:func:`batch_scaling`, :func:`rss_checked`) follow the current code; ``weights_mb``
    (model -> MB) fills the weights' size of rows written without it.

    The repair for a file written before the writer refused to mix measuring runs. The
    latest run is the one with the latest ``started`` time (run ids are start times)."""
    from bench.core.io import read_json

    path = Path(csv_or_json)
    json_path, csv_path = path.with_suffix(".json"), path.with_suffix(".csv")
    data = read_json(json_path)
    rows, runs = list(data["rows"]), dict(data.get("runs", {}))
    if not rows:
        return 0
    latest = max({str(r.get("run") or "") for r in rows})
    newest = [r for r in rows if str(r.get("run") or "") == latest]
    stale = incompatible_runs(rows, newest, runs, runs.get(latest))
    keep = [r for r in rows if str(r.get("run") or "") not in stale]
    for r in keep:  # rows written before they carried their weights' size
        if weights_mb and r.get("weights_mb") is None and r.get("model") in weights_mb:
            r["weights_mb"] = weights_mb[r["model"]]
    # rewritten even when nothing is dropped: derived columns (batch_scaling) are recomputed
    with _dir_lock(json_path.parent):
        _write_frame(_frame(keep), runs, csv_path, json_path, str(data.get("device_slug", "")))
    return len(rows) - len(keep)


def read_checked(csv_path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A speed file's rows and its JSON's ``runs``, refusing a file that mixes hosts or
    measuring runs (:func:`bench.speed.sessions.check_one_measuring_run`)."""
    from bench.core.io import read_json

    path = Path(csv_path)
    df = pd.read_csv(path)
    json_path = path.with_suffix(".json")
    runs = dict(read_json(json_path).get("runs", {})) if json_path.exists() else {}
    check_one_measuring_run(_records(df), runs, str(path))
    return df, runs
