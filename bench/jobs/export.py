"""``segbench export``: ONNX files of registered models, checked, and (opt-in) int8 / bf16 costs.

**Export** (:func:`run_export`): per model, the weights (random init, a checkpoint file, or a
training run's ``checkpoints/best.pt`` with the run's model arguments), then
:func:`bench.deploy.export.export_model` (dynamo, then TorchScript) and
:func:`bench.deploy.check.check_onnx` (the graph on onnxruntime against the PyTorch model on
seeded inputs, with the model's tolerance). A row per model; an export failure or a check
outside the tolerance is a row with ``status="error"`` and the reason, never the end of the
run. ``<out>/onnx/<model>.onnx`` (git-ignored) and the table ``<out>/export.{csv,json}``
(rows of earlier runs for other models are kept, a model's row is replaced).

**Reduced precision** (:func:`run_precision`, ``--int8`` / ``--bf16``): per model, variants
against eager fp32 PyTorch:

* ``onnxruntime fp32`` (the exported graph), ``onnxruntime int8-dynamic`` and
  ``onnxruntime int8-static`` (:mod:`bench.deploy.quantize`; static calibration on the first
  ``calib_images`` images of the *training* split, scaled as the model's input);
* ``torch bf16`` (autocast) and ``openvino bf16`` (precision hint pinned and read back;
  skipped with the reason on CPUs without native bf16, where it would run f32).

Each variant gets its batch-1 latency (median of :func:`bench.speed.timing.time_step`, threads
pinned to ``threads`` for every backend), the output agreement with eager fp32 on the first
test images (max / max-relative logit difference, flipped mask pixels) and, when the weights
are trained and ``data`` is given, the pooled test-split DSC and its change from eager fp32 in
points. Untrained weights give no DSC (the row says so): a random network's Dice says
nothing about what quantization costs. Rows go to ``<out>/precision.{csv,json}``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from bench.deploy.export import EXPORTERS

RANDOM_INIT = "random init (untrained)"
EXPORT_KEY = ["model"]
PRECISION_KEY = ["model", "variant"]


@dataclass(frozen=True)
class Weights:
    """Where a model's weights come from, and what its training run says about its input."""

    label: str = RANDOM_INIT
    checkpoint: Path | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int = 256
    scaling: str = "minmax255"
    threshold: float = 0.5
    split: dict[str, Any] = field(default_factory=dict)  # prepare_data settings of the run
    model: str | None = None  # the run's model (runs fix the model)

    @property
    def trained(self) -> bool:
        return self.checkpoint is not None


def weights_from(
    checkpoint: str | Path | None = None, run_dir: str | Path | None = None, input_size: int = 256
) -> Weights:
    """The :class:`Weights` of ``--checkpoint`` / ``--run`` (neither: random init).

    A run folder must hold ``config.json`` and ``checkpoints/best.pt``; the model, its
    builder arguments, input size and scaling, threshold and split settings come from
    ``config.json``. Bad input raises ValueError naming the path.
    """
    if checkpoint is not None and run_dir is not None:
        raise ValueError("give --checkpoint or --run, not both")
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise ValueError(f"--checkpoint {path}: no such file")
        return Weights(label=f"checkpoint {path}", checkpoint=path, input_size=input_size)
    if run_dir is None:
        return Weights(input_size=input_size)
    run = Path(run_dir)
    from bench.core.io import read_json

    cfg_path, ckpt = run / "config.json", run / "checkpoints" / "best.pt"
    if not cfg_path.is_file():
        raise ValueError(f"--run {run}: no config.json (not a segbench run folder)")
    if not ckpt.is_file():
        raise ValueError(
            f"--run {run}: no checkpoints/best.pt (checkpoints are not committed; train the "
            "run here or copy its checkpoint)"
        )
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ValueError(f"{cfg_path}: not a segbench run configuration")
    split = {
        k: cfg[k]
        for k in ("data", "split_file", "split_seed", "val_fraction", "test_fraction")
        if cfg.get(k) is not None
    }
    return Weights(
        label=f"run {_run_name(run)} (best.pt, config {cfg.get('config_hash', '?')})",
        checkpoint=ckpt,
        # the kwargs the model was really built with: the recipe's per-model entry (e.g.
        # the paper recipe's untied MALUNet) under the run's own model_kwargs
        model_kwargs={
            **(cfg.get("per_model_kwargs") or {}).get(cfg["model"], {}),
            **(cfg.get("model_kwargs") or {}),
        },
        input_size=int(cfg.get("image_size", input_size)),
        scaling=str(cfg.get("input_scaling", "minmax255")),
        threshold=float(cfg.get("threshold", 0.5)),
        split=split,
        model=str(cfg["model"]),
    )


def named_weights(model: str, name: str) -> Weights:
    """The :class:`Weights` of committed weights ``model:name`` (``segbench weights list``),
    checked by sha256; the split settings of the run that trained them where its folder
    is present."""
    from models.weights import get_weights, load_state_dict

    entry = get_weights(model, name)
    load_state_dict(entry)  # refuses a missing or changed file before any work
    split: dict[str, Any] = {}
    cfg_path = Path(__file__).resolve().parents[2] / entry.meta.get("run", "") / "config.json"
    if entry.meta.get("run") and cfg_path.is_file():
        from bench.core.io import read_json

        cfg = read_json(cfg_path)
        keys = ("split_seed", "val_fraction", "test_fraction", "split_mode")
        split = {k: cfg[k] for k in keys if cfg.get(k) is not None}
    return Weights(
        label=f"weights {model}:{name} (sha256 {entry.sha256[:12]})",
        checkpoint=entry.path,
        model_kwargs=dict(entry.model_kwargs),
        input_size=entry.image_size,
        scaling=entry.input_scaling,
        threshold=entry.threshold,
        split=split,
        model=model,
    )


def _run_name(run: Path) -> str:
    """``runs/<dataset>/<model>/<experiment>/seed<k>`` of a run folder wherever it lies (a
    training worktree, a copy), so the label names the run, not this machine's paths."""
    parts = run.resolve().parts
    if "runs" in parts:
        at = len(parts) - 1 - parts[::-1].index("runs")
        return "/".join(parts[at:])
    return str(run)


# Indirection point: tests substitute tiny models without touching the registry.
def _create(name: str, **kwargs: Any) -> nn.Module:
    from models import create_model

    return create_model(name, **kwargs)


def build_model(name: str, weights: Weights) -> nn.Module:
    """The model in eval mode with ``weights`` loaded (random init seeded with 0)."""
    torch.manual_seed(0)
    model = _create(name, **weights.model_kwargs)
    if weights.checkpoint is not None:
        from bench.engine.checkpoints import load_weights

        load_weights(model, weights.checkpoint)
    return model.eval()


def _short(err: BaseException) -> str:
    from bench.deploy.export import error_reason

    return error_reason(err)


def run_export(
    models: Sequence[str],
    out_dir: str | Path = "results/deploy",
    *,
    weights: Weights | None = None,
    opset: int | None = None,
    dynamic_batch: bool = False,
    exporters: Sequence[str] = EXPORTERS,
    threads: int | None = None,
    write: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Export and check every model; one row each (see the module docstring)."""
    from bench.deploy.check import check_onnx
    from bench.deploy.export import export_model

    w = weights or Weights()
    out = Path(out_dir)
    rows = []
    for name in models:
        row: dict[str, Any] = {"model": name, "weights": w.label, "input_size": w.input_size}
        try:
            model = build_model(name, w)
        except Exception as err:  # a model that cannot be built (or loaded) is a row
            row.update(status="error", reason=f"build: {_short(err)}")
            rows.append(row)
            if on_row:
                on_row(row)
            continue
        row.update(
            export_model(
                name,
                out / "onnx",
                model=model,
                weights=w.label,
                input_size=w.input_size,
                exporters=exporters,
                opset=opset,
                dynamic_batch=dynamic_batch,
            )
        )
        row["attempts"] = json.dumps(row.get("attempts", {}))
        if row["status"] == "ok":
            try:
                res = check_onnx(
                    model,
                    row["path"],
                    name=name,
                    input_shape=(1, 3, w.input_size, w.input_size),
                    threads=threads,
                )
            except Exception as err:
                res = {"ok": False, "check_reason": f"check failed to run: {_short(err)}"}
            row.update(res)
            if not res["ok"]:
                row["status"] = "error"
                row["reason"] = "; ".join(
                    r for r in (f"output differs: {res['check_reason']}", row["reason"]) if r
                )
        rows.append(row)
        if on_row:
            on_row(row)
    df = pd.DataFrame(rows)
    if write:
        _merge_write(df, out / "export", EXPORT_KEY)
    return df


def _merge_write(df: pd.DataFrame, stem: Path, key: list[str]) -> None:
    """Merge ``df`` into ``<stem>.{csv,json}``: rows with the same ``key`` are replaced.

    Each new row is stamped with what produced it (commit, command, the host's
    ``device_name`` in ``cpu``, 1-minute load average), so rows merged from several
    commands keep their own provenance; the file's ``environment`` is the latest command's.
    One table holds one host: rows timed on another host (another ``cpu``) are dropped with
    a warning, never mixed with the new ones (latencies and speedups of two machines in one
    table read as one machine's).
    """
    from bench.core.env import command_line, environment
    from bench.core.io import read_json, write_csv, write_json

    env = environment("cpu")
    load = env.get("load_average") or [float("nan")]
    host = str(env.get("device_name") or "")
    df = df.assign(
        cpu=host,
        load_avg_1min=load[0],
        git_commit=env.get("git_commit"),
        command=command_line(),
    )

    json_path = stem.with_suffix(".json")
    old = pd.DataFrame()
    if json_path.exists():
        try:
            old = pd.DataFrame(read_json(json_path)["rows"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{json_path}: not a segbench export table ({err})") from err
    if len(old):
        other = old["cpu"].astype(str) != host if "cpu" in old else pd.Series(True, old.index)
        if other.any():
            hosts = sorted(set(old.loc[other, "cpu"].astype(str))) if "cpu" in old else ["?"]
            warnings.warn(
                f"{json_path}: dropped {int(other.sum())} row(s) measured on "
                f"{', '.join(hosts)}: one deployment table holds one host ({host})",
                stacklevel=3,
            )
            old = old[~other]
    if len(old) and all(k in old for k in key):
        new_keys = set(map(tuple, df[key].astype(str).values))
        old = old[[tuple(v) not in new_keys for v in old[key].astype(str).values]]
    merged = pd.concat([old, df], ignore_index=True) if len(old) else df
    merged = merged.sort_values(key, kind="stable").reset_index(drop=True)
    write_csv(stem.with_suffix(".csv"), merged)
    records = json.loads(merged.to_json(orient="records"))
    write_json(json_path, {"environment": env, "rows": records})


# --------------------------------------------------------------------------- precision
# latency: warmup forwards, then at least this many timed ones (the fewest a latency costs)
_WARMUP, _MIN_ITERS = 2, 5
MIN_LATENCY_FORWARDS = _WARMUP + _MIN_ITERS

# scoring budget per variant (seconds); see run_precision
MAX_VARIANT_S = 600.0


def _latency_ms(fn: Callable[[], Any], seconds: float) -> float:
    from bench.speed.timing import summarize, time_step

    times, _ = time_step(
        fn,
        "cpu",
        warmup=_WARMUP,
        min_time_s=seconds,
        min_iters=_MIN_ITERS,
        max_time_s=4 * seconds,
    )
    return summarize(times).median_ms


@dataclass
class _Variant:
    name: str
    backend: str
    precision: str
    module: nn.Module | None = None  # logits of a scaled NCHW float batch
    reason: str = ""  # why it was not scored (no module)
    size_mb: float = math.nan
    autocast: bool = False
    note: str = ""  # a warning about a scored variant, in full (the row's ``notes``)
    failed: bool = False  # not scored because something broke (an error, not a skip)


def _torch_module(model: nn.Module, bf16: bool) -> nn.Module:
    class _Eager(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                if bf16:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return self.model(x).float()
                return self.model(x).float()

    return _Eager().eval()


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
    from bench.deploy.backends import BackendUnavailable, SessionModule, make_session
    from bench.deploy.quantize import quantize_onnx

    def session(backend: str, path: Path, precision: str) -> nn.Module:
        return SessionModule(
            make_session(
                backend,
                path,
                threads=threads,
                precision=precision,
                input_shape=(1, 3, input_size, input_size),
            )
        )

    def runtime(backend: str, path: Path, variant: str, precision: str, size_mb: float,
                note: str = "") -> _Variant:  # fmt: skip
        v = _Variant(f"{backend} {variant}", backend, variant, size_mb=size_mb)
        try:
            v.module = session(backend, path, precision)
        except BackendUnavailable as err:  # this host cannot run it: a skip with the reason
            v.reason = str(err)
            return v
        except Exception as err:
            v.reason, v.failed = f"graph does not run: {_short(err)}", True
            return v
        v.note = note
        return v

    size = fp32_path.stat().st_size / 2**20
    # every runtime of `segbench speed` at each precision it can run (issue 24 item 15)
    vs = [
        _Variant("torch fp32", "torch", "fp32", _torch_module(model, False)),
        runtime("onnxruntime", fp32_path, "fp32", "fp32", size),
        runtime("openvino", fp32_path, "fp32", "fp32", size),
    ]
    for mode in int8:
        if mode == "static" and not calibration:
            for backend in ("onnxruntime", "openvino"):
                vs.append(_Variant(f"{backend} int8-{mode}", backend, f"int8-{mode}",
                                   reason="static int8 needs calibration images: give --data"))  # fmt: skip
            continue
        q = quantize_onnx(
            fp32_path,
            out / "onnx" / f"{name}.int8-{mode}.onnx",
            mode=mode,
            calibration=calibration,
        )
        for backend in ("onnxruntime", "openvino"):
            if q["status"] != "ok":
                vs.append(_Variant(f"{backend} int8-{mode}", backend, f"int8-{mode}",
                                   reason=q["reason"], failed=True))  # fmt: skip
                continue
            # the int8 graph's own ops run in int8; the hint covers the rest (fp32)
            vs.append(runtime(backend, Path(q["path"]), f"int8-{mode}", "fp32", q["size_mb"],
                              note=q["reason"]))  # fmt: skip
    if bf16:
        vs.append(_Variant("torch bf16", "torch", "bf16", _torch_module(model, True)))
        vs.append(runtime("openvino", fp32_path, "bf16", "bf16", size))
        vs.append(runtime("onnxruntime", fp32_path, "bf16", "bf16", size))
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
    from bench.deploy.check import compare_outputs, fixed_inputs
    from bench.deploy.export import export_model
    from bench.speed.steps import _num_threads

    w = weights or Weights()
    out = Path(out_dir)
    bad = [m for m in int8 if m not in ("dynamic", "static")]
    if bad:
        raise ValueError(f"--int8: modes are dynamic and static, got {bad}")
    prepared = _prepare(data, w, progress) if data is not None else None
    rows: list[dict[str, Any]] = []
    with _num_threads(threads) as n:
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
                rows.append({**base, "variant": "all", "status": "error", "reason": _short(err)})
                continue
            rows += _score(
                base, variants, test_x, prepared, split, w, latency_s, compare_outputs,
                max_variant_s,
            )  # fmt: skip
    df = pd.DataFrame(rows)
    if write:
        _merge_write(df, out / "precision", PRECISION_KEY)
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
    compare: Callable[..., dict[str, Any]],
    max_variant_s: float = math.inf,
) -> list[dict[str, Any]]:
    """Latency, agreement with eager fp32 and (trained + data) DSC of each variant."""
    from bench.core.device import cpu_bf16_native
    from bench.engine.evaluate import evaluate_split

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
            agree = compare(ref, outs, None)
            row.update(
                out_max_abs_diff=agree["max_abs_diff"],
                out_rel_max_diff=agree["rel_max_diff"],
                out_mask_diff=agree["mask_diff_fraction"],
                agree_images=len(singles),
            )
            row["latency_ms"] = _latency_ms(lambda m=v.module: m(singles[0]), latency_s)
            notes = [v.note] if v.note else []
            if prepared is not None and w.trained:
                res = evaluate_split(
                    v.module, prepared, split, device="cpu", batch_size=1,
                    scaling=w.scaling, threshold=w.threshold, compute_hd95=False,
                )  # fmt: skip
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
            row.update(status="error", reason=_short(err))
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
