"""One speed file = one host and one measuring run: which rows belong together, and the check.

A *measuring run* is what shares one roofline peak: ``segbench benchmark`` measures the
peak once and passes it to each of its ``run_speed`` calls (one run id each), so rows from
those calls belong together; a later ``segbench speed`` measures the peak again, and rows
timed on another day (another load, another kernel, another peak) do not. Mixing them in
one table showed one model's eager latency as 16.6 / 46.5 / 36.2 ms in one report and gave
two roofline peaks (188.9 and 133.1 GFLOP/s) to one file.

Two runs are *compatible* unless there is positive evidence that they differ: another
``device_name``, or a dtype both measured a peak for whose compute or bandwidth figure
differs by more than :data:`PEAK_RTOL`. The writer (:func:`bench.speed.files.write_results`)
drops the rows of every older run that is incompatible with the new one (they are replaced,
not mixed); the report refuses a file that still holds incompatible runs
(:func:`check_one_measuring_run`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "PEAK_RTOL",
    "MixedSpeedFileError",
    "check_one_measuring_run",
    "compatible",
    "incompatible_runs",
    "run_identity",
]

#: Peaks of one measuring run are the same numbers; two measurements differ by more.
PEAK_RTOL = 0.005


class MixedSpeedFileError(ValueError):
    """A speed (or deployment) table holds rows from two hosts or two measuring runs."""


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _text(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).strip()


def run_identity(
    rows: Iterable[Mapping[str, Any]], meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``{"device_name": str, "peaks": {dtype: (tflops, gbps)}}`` of one run's rows.

    Peaks come from the rows (``peak_tflops`` / ``peak_gbps`` per dtype), else from the
    run's ``peaks`` entry in the JSON (``{dtype: {"tflops", "gbps"}}``); a failed or
    absent peak is left out. ``device_name`` is the rows' (else the run environment's).
    """
    device = ""
    peaks: dict[str, tuple[float, float]] = {}
    for r in rows:
        device = device or _text(r.get("device_name"))
        t, g = _num(r.get("peak_tflops")), _num(r.get("peak_gbps"))
        dtype = _text(r.get("dtype")) or "fp32"
        if math.isfinite(t) and math.isfinite(g) and dtype not in peaks:
            peaks[dtype] = (t, g)
    meta = meta or {}
    env = meta.get("environment") if isinstance(meta.get("environment"), Mapping) else {}
    device = device or _text(env.get("device_name"))  # type: ignore[union-attr]
    meta_peaks = meta.get("peaks") if isinstance(meta.get("peaks"), Mapping) else {}
    for dtype, p in meta_peaks.items():  # type: ignore[union-attr]
        if isinstance(p, Mapping) and dtype not in peaks:
            t, g = _num(p.get("tflops")), _num(p.get("gbps"))
            if math.isfinite(t) and math.isfinite(g):
                peaks[str(dtype)] = (t, g)
    return {"device_name": device, "peaks": peaks}


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= PEAK_RTOL * max(abs(a), abs(b))


def compatible(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether two :func:`run_identity` results may share a table, and why not."""
    da, db = a["device_name"], b["device_name"]
    if da and db and da != db:
        return False, f"host {da!r} vs {db!r}"
    for dtype in sorted(set(a["peaks"]) & set(b["peaks"])):
        (ta, ga), (tb, gb) = a["peaks"][dtype], b["peaks"][dtype]
        if not (_close(ta, tb) and _close(ga, gb)):
            return False, (
                f"{dtype} roofline peak {ta * 1e3:.1f} GFLOP/s, {ga:.1f} GB/s vs "
                f"{tb * 1e3:.1f} GFLOP/s, {gb:.1f} GB/s (another measuring run)"
            )
    return True, ""


def _by_run(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(_text(r.get("run")), []).append(r)
    return out


def incompatible_runs(
    old_rows: Iterable[Mapping[str, Any]],
    new_rows: Iterable[Mapping[str, Any]],
    runs_meta: Mapping[str, Any],
    new_meta: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Run ids among ``old_rows`` that may not share a file with ``new_rows``: id -> why."""
    new = run_identity(list(new_rows), new_meta)
    out = {}
    for run, rows in _by_run(old_rows).items():
        ok, why = compatible(run_identity(rows, runs_meta.get(run)), new)
        if not ok:
            out[run] = why
    return out


def check_one_measuring_run(
    rows: Iterable[Mapping[str, Any]], runs_meta: Mapping[str, Any], path: str
) -> None:
    """Raise :class:`MixedSpeedFileError` naming ``path`` when its rows come from two hosts
    or two measuring runs (pairwise-incompatible runs, see :func:`compatible`)."""
    groups = _by_run(rows)
    ids = {run: run_identity(rs, runs_meta.get(run)) for run, rs in groups.items()}
    names = sorted(ids)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ok, why = compatible(ids[a], ids[b])
            if not ok:
                raise MixedSpeedFileError(
                    f"{path}: rows of run {a} ({len(groups[a])} rows) and run {b} "
                    f"({len(groups[b])} rows) cannot share one table: {why}. One table "
                    "holds one host and one measuring run; re-measure the file's models in "
                    "one run, or drop the older run's rows with "
                    f"bench.speed.files.keep_latest_run({path!r})"
                )
