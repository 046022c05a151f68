"""``segbench export --int8 / --bf16``: reduced-precision variants of each model against eager fp32.

Per model, one variant per entry of the runtime table
(:data:`bench.deploy.backends.RUNTIMES`, eager PyTorch first: the reference) and precision:

* ``<runtime> fp32``: eager PyTorch on the module, every other runtime on the exported graph;
* ``<runtime> int8-dynamic`` / ``int8-static`` on every runtime that takes an ONNX file
  (:mod:`bench.deploy.quantize`; static calibration on the first ``calib_images`` images of
  the *training* split, scaled as the model's input);
* with ``bf16``: ``<runtime> bf16`` (torch autocast; OpenVINO's precision hint pinned and
  read back, skipped with the reason on CPUs without native bf16, where it would run f32;
  onnxruntime's CPU provider has none: skipped with the reason).

Each variant is timed through its runtime's session, the same step ``segbench speed`` times
(``session.run`` at batch 1; :func:`bench.speed.timing.timed_row`, threads pinned to
``threads`` for every backend): ``latency_ms`` is the median. It also gets the output
agreement with eager fp32 on the first test images (max / max-relative logit difference,
flipped mask pixels) and, when the weights are trained and ``data`` is given, the pooled
test-split DSC and its change from eager fp32 in points. Untrained weights give no DSC (the
row says so): a random network's Dice says nothing about what quantization costs. Rows go
to ``<out>/precision.{csv,json}`` (:func:`bench.jobs.deploy_table.merge_write`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from bench.core.measure import pinned_threads
from bench.deploy.export import EXPORTERS, error_reason
from bench.jobs.deploy_table import merge_write
from bench.jobs.export import Weights, build_model
from bench.speed.timing import timed_row

PRECISION_KEY = ["model", "variant"]

# latency: warmup forwards, then at least this many timed ones (the fewest a latency costs)
_WARMUP, _MIN_ITERS = 2, 5
MIN_LATENCY_FORWARDS = _WARMUP + _MIN_ITERS

# scoring budget per variant (seconds); see run_precision
MAX_VARIANT_S = 600.0


def latency_timing(seconds: float) -> dict[str, Any]:
    """The timing settings of a variant's latency (:func:`bench.speed.timing.timed_row`):
    ``_WARMUP`` untimed calls, then at least ``seconds`` and ``_MIN_ITERS`` timed ones,
    stopped at ``4 x seconds``."""
    return {
        "warmup": _WARMUP,
        "min_time_s": seconds,
        "min_iters": _MIN_ITERS,
        "max_time_s": 4 * seconds,
    }


@dataclass
class _Variant:
    name: str
    backend: str
    precision: str
    session: Any = None  # a bench.deploy.backends.Session; its run is the timed step
    module: nn.Module | None = None  # the session as a module: logits of a scaled NCHW batch
    reason: str = ""  # why it was not scored (no module)
    size_mb: float = math.nan
    note: str = ""  # a warning about a scored variant, in full (the row's ``notes``)
    failed: bool = False  # not scored because something broke (an error, not a skip)


def _variants(
    name: str,
    model: nn.Module,
    fp32_path: Path,
    out: Path,
    *,
    int8: Sequence[str],
    bf16: bool,
    threads: int,
    calibration: list[np.ndarray] | None,
    input_size: int,
) -> list[_Variant]:
    """Every variant of one model, in table order; eager PyTorch fp32 (the reference) first."""
    from bench.deploy.backends import RUNTIMES, BackendUnavailable, Runtime, SessionModule
    from bench.deploy.quantize import quantize_onnx

    def variant(rt: Runtime, source: Any, variant: str, precision: str, size_mb: float,
                note: str = "") -> _Variant:  # fmt: skip
        v = _Variant(f"{rt.name} {variant}", rt.name, variant, size_mb=size_mb)
        try:
            v.session = rt.session(
                source, threads=threads, precision=precision,
                input_shape=(1, 3, input_size, input_size),
            )  # fmt: skip
        except BackendUnavailable as err:  # this host cannot run it: a skip with the reason
            v.reason = str(err)
            return v
        except Exception as err:
            v.reason, v.failed = f"graph does not run: {error_reason(err)}", True
            return v
        v.module, v.note = SessionModule(v.session), note
        return v

    size = fp32_path.stat().st_size / 2**20
    runtimes = [RUNTIMES["torch"], *(rt for n, rt in RUNTIMES.items() if n != "torch")]
    onnx = [rt for rt in runtimes if rt.takes == "onnx"]

    def plain(precision: str) -> list[_Variant]:
        """Every runtime on the model itself or its fp32 graph, at ``precision``."""
        return [
            variant(rt, fp32_path, precision, precision, size)
            if rt.takes == "onnx"
            else variant(rt, model, precision, precision, math.nan)
            for rt in runtimes
        ]

    # every runtime of `segbench speed` at each precision it can run (issue 24 item 15)
    vs = plain("fp32")
    for mode in int8:
        label = f"int8-{mode}"
        if mode == "static" and not calibration:
            why = "static int8 needs calibration images: give --data"
            vs += [_Variant(f"{rt.name} {label}", rt.name, label, reason=why) for rt in onnx]
            continue
        q = quantize_onnx(
            fp32_path, out / "onnx" / f"{name}.{label}.onnx", mode=mode, calibration=calibration
        )
        for rt in onnx:
            if q["status"] != "ok":
                vs.append(_Variant(f"{rt.name} {label}", rt.name, label, reason=q["reason"],
                                   failed=True))  # fmt: skip
                continue
            # the int8 graph's own ops run in int8; the hint covers the rest (fp32)
            vs.append(variant(rt, Path(q["path"]), label, "fp32", q["size_mb"], note=q["reason"]))
    if bf16:
        vs += plain("bf16")
    return vs


def run_precision(
    models: Sequence[str],
    out_dir: str | Path = "results/deploy",
    *,
    weights: Weights | None = None,
    int8: Sequence[str] = ("dynamic", "static"),
    bf16: bool = False,
    data: str | Path | None = None,
    split: str = "test",
    calib_images: int = 32,
    agree_images: int = 8,
    latency_s: float = 1.0,
    threads: int | None = None,
    exporters: Sequence[str] = EXPORTERS,
    write: bool = True,
    progress: bool = False,
    max_variant_s: float = MAX_VARIANT_S,
) -> pd.DataFrame:
    """Reduced-precision variants of each model against eager fp32 (module docstring).

    ``max_variant_s``: a variant whose scoring (agreement images, latency, test split),
    projected from its first batch-1 forward, would take longer is skipped with the
    measured forward time as the reason (emulated bf16 on a CPU without it: minutes per
    UNet image).
    """
    from bench.deploy.check import fixed_inputs
    from bench.deploy.export import export_model

    w = weights or Weights()
    out = Path(out_dir)
    bad = [m for m in int8 if m not in ("dynamic", "static")]
    if bad:
        raise ValueError(f"--int8: modes are dynamic and static, got {bad}")
    prepared = _prepare(data, w, progress) if data is not None else None
    rows: list[dict[str, Any]] = []
    with pinned_threads(threads) as n:
        test_x = (
            _scaled(prepared, split, agree_images, w.scaling)
            if prepared is not None
            else fixed_inputs((agree_images, 3, w.input_size, w.input_size), n=1)[0]
        )
        calib = (
            list(_scaled(prepared, "train", calib_images, w.scaling))
            if prepared is not None
            else None
        )
        for name in models:
            base = {"model": name, "weights": w.label, "trained": w.trained, "threads": n,
                    "input_size": w.input_size, "split": split if prepared else ""}  # fmt: skip
            try:
                model = build_model(name, w)
                exp = export_model(
                    name, out / "onnx", model=model, weights=w.label,
                    input_size=w.input_size, exporters=exporters,
                )  # fmt: skip
                if exp["status"] != "ok":
                    raise RuntimeError(f"ONNX export failed: {exp['reason']}")
                variants = _variants(
                    name, model, Path(exp["path"]), out, int8=int8, bf16=bf16, threads=n,
                    calibration=calib, input_size=w.input_size,
                )  # fmt: skip
            except Exception as err:
                rows.append(
                    {**base, "variant": "all", "status": "error", "reason": error_reason(err)}
                )
                continue
            rows += _score(base, variants, test_x, prepared, split, w, latency_s, max_variant_s)
    df = pd.DataFrame(rows)
    if write:
        merge_write(df, out / "precision", PRECISION_KEY)
    return df


def _prepare(data: str | Path, w: Weights, progress: bool) -> Any:
    from bench.data.cache import prepare_data

    kw = {k: w.split[k] for k in ("split_file", "val_fraction", "test_fraction") if k in w.split}
    return prepare_data(
        data, size=w.input_size, seed=int(w.split.get("split_seed", 42)), progress=progress, **kw
    )


def _scaled(prepared: Any, split: str, n: int, scaling: str) -> np.ndarray:
    from bench.data.augment import scale_images
    from bench.engine.evaluate import to_nchw

    imgs = prepared.images(split)[:n]
    if len(imgs) == 0:
        raise ValueError(f"split {split!r} of {prepared.name} is empty")
    return scale_images(to_nchw(imgs), scaling).numpy()


def _score(
    base: dict[str, Any],
    variants: list[_Variant],
    test_x: np.ndarray,
    prepared: Any,
    split: str,
    w: Weights,
    latency_s: float,
    max_variant_s: float = math.inf,
) -> list[dict[str, Any]]:
    """Latency, agreement with eager fp32 and (trained + data) DSC of each variant."""
    from bench.core.device import cpu_bf16_native
    from bench.deploy.check import agreement_columns
    from bench.engine.evaluate import EvalSettings, evaluate_split

    ref_module = variants[0].module
    singles = [torch.from_numpy(test_x[i : i + 1]) for i in range(len(test_x))]
    ref = [ref_module(x).numpy() for x in singles]
    rows = []
    ref_dsc = math.nan
    for v in variants:
        row = {**base, "variant": v.name, "backend": v.backend, "precision": v.precision,
               "size_mb": v.size_mb}  # fmt: skip
        if v.module is None:
            rows.append({**row, "status": "error" if v.failed else "skipped", "reason": v.reason})
            continue
        try:
            t0 = time.perf_counter()
            first = v.module(singles[0]).numpy()
            first_s = time.perf_counter() - t0
            n_test = len(prepared.ids(split)) if prepared is not None and w.trained else 0
            forwards = len(singles) + MIN_LATENCY_FORWARDS + n_test
            if v is not variants[0] and first_s * forwards > max_variant_s:  # ref: always
                reason = (
                    f"not scored: one batch-1 forward took {first_s:.1f} s, so its "
                    f"{forwards} forwards would take ~{first_s * forwards / 60:.0f} min "
                    f"(limit {max_variant_s / 60:.0f} min)"
                )
                if v.backend == "torch" and v.precision == "bf16" and not cpu_bf16_native():
                    reason += "; this CPU has no native bf16, torch emulates it"
                rows.append({**row, "status": "skipped", "reason": reason})
                continue
            outs = [first] + [v.module(x).numpy() for x in singles[1:]]
            row.update(agreement_columns(ref, outs), agree_images=len(singles))
            # the timed step is the session's, as in `segbench speed` (numpy in and out)
            step = functools.partial(v.session.run, test_x[:1])
            row["latency_ms"] = timed_row(step, 1, latency_timing(latency_s))["median_ms"]
            notes = [v.note] if v.note else []
            if prepared is not None and w.trained:
                scoring = EvalSettings(
                    batch_size=1, scaling=w.scaling, threshold=w.threshold, compute_hd95=False
                )
                res = evaluate_split(v.module, prepared, split, scoring)
                row["dsc"] = float(res.metrics["dsc"])
                row["n_images"] = int(res.metrics["n_images"])
                if v.name == "torch fp32":
                    ref_dsc = row["dsc"]
                row["dsc_change_pts"] = 100.0 * (row["dsc"] - ref_dsc)
            elif not w.trained:
                notes.append("untrained weights (random init): no DSC, latency and agreement only")
            else:
                notes.append("no --data: no DSC")
            # warnings of a scored row go to `notes`, in full; `reason` says why a row
            # was not scored (skipped / error) and stays empty here
            row.update(status="ok", reason="", notes="; ".join(notes))
        except Exception as err:  # one variant failing is its row
            row.update(status="error", reason=error_reason(err))
        rows.append(row)
    eager = next((r.get("latency_ms") for r in rows if r["variant"] == "torch fp32"), None)
    ort = next((r.get("latency_ms") for r in rows if r["variant"] == "onnxruntime fp32"), None)
    for r in rows:
        lat = r.get("latency_ms")
        if lat and eager:
            r["speedup_vs_eager_fp32"] = eager / lat
        if lat and ort and r["backend"] == "onnxruntime":
            r["speedup_vs_onnxruntime_fp32"] = ort / lat
    return rows
