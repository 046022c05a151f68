"""Complexity analysis: parameters, exact MACs, cross-checks, resolution sweep, golden file.

The counter itself lives in :mod:`bench.flops` (``analyze``). This module runs it over the
registry, puts thop's, fvcore's and torch's FlopCounterMode's numbers beside it so readers can
reconcile papers (their "GFLOPs" are thop MACs), and keeps ``results/complexity/golden.json``,
the regression guard checked by ``tests/test_golden.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import math
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bench.flops import Complexity, ModuleCost, analyze, count_params

__all__ = [
    "COLUMNS",
    "GOLDEN_PATH",
    "GOLDEN_SHAPE",
    "Complexity",
    "CrossCheck",
    "ModuleCost",
    "analyze",
    "breakdown_table",
    "check_golden",
    "compare_golden",
    "count_params",
    "cross_checks",
    "display_table",
    "format_drift",
    "golden_entry",
    "load_golden",
    "parse_input_shape",
    "parse_sizes",
    "register",
    "resolution_sweep",
    "run_complexity",
    "update_golden",
]

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_PATH = ROOT / "results" / "complexity" / "golden.json"
GOLDEN_SHAPE = (1, 3, 256, 256)
GOLDEN_FIELDS = ("params_total", "params_unique", "macs")
UPDATE_HINT = (
    "regenerate results/complexity/golden.json with `segbench complexity --update-golden` "
    "(or `nox -s update-golden`) and commit it"
)

# Column -> meaning and unit, written into complexity.json so the CSV explains itself.
COLUMNS: dict[str, str] = {
    "model": "registry name",
    "input_shape": "input N x C x H x W",
    "params_total": "parameters, sum of numel (papers' convention)",
    "params_unique": "parameters, shared storage counted once",
    "params_trainable": "parameters with requires_grad",
    "macs": "segbench MACs: multiply-accumulates of conv/linear/matmul/einsum/attention "
    "(FLOPs = 2 x MACs)",
    "gmacs": "segbench MACs / 1e9, rounded to 3 decimals",
    "other_flops": "segbench other FLOPs: norms, activations, softmax, pooling, upsampling, "
    "elementwise, bias adds",
    "activation_bytes": "bytes of all tensors the forward's ops allocate (views excluded)",
    "module_output_bytes": "bytes of leaf-module outputs (torchinfo's convention)",
    "thop_macs": "thop 0.1.1 MACs (what papers print as GFLOPs x 1e9)",
    "thop_minus_macs": "thop MACs - segbench MACs",
    "fvcore_macs": "fvcore FlopCountAnalysis total (its 'flop' = one MAC; adds norms, "
    "upsampling, pooling)",
    "torch_flop_counter_macs": "torch.utils.flop_counter.FlopCounterMode total / 2",
    "reported_gflops": "GFLOPs printed in the model's paper (thop MACs / 1e9)",
    "reported_params_m": "parameters (M) printed in the model's paper",
    "unsupported_ops": "aten ops segbench has no rule for: name:calls",
    "fvcore_unsupported_ops": "ops fvcore skipped: name:calls",
    "status": "ok or error",
    "reason": "why a value is missing (error, or a cross-check tool failing)",
}

# Human headers for printed tables, each naming its unit.
DISPLAY_HEADERS = {
    "params_total": "params",
    "macs": "segbench MACs",
    "other_flops": "segbench other FLOPs",
    "activation_bytes": "activation MB",
    "thop_macs": "thop MACs (papers' GFLOPs)",
    "thop_minus_macs": "thop - segbench MACs",
    "fvcore_macs": "fvcore MACs",
    "torch_flop_counter_macs": "FlopCounterMode MACs (FLOPs/2)",
    "reported_gflops": "paper GFLOPs",
    "unsupported_ops": "unsupported ops",
}


# --- parsing --------------------------------------------------------------------------------


def parse_input_shape(text: str, arg: str = "--input") -> tuple[int, ...]:
    """``"1x3x256x256"`` -> ``(1, 3, 256, 256)``; a clear error names ``arg`` otherwise."""
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{arg}: expected NxCxHxW like 1x3x256x256, got {text!r}") from None
    if len(shape) < 3 or any(s <= 0 for s in shape):
        raise ValueError(f"{arg}: expected at least 3 positive sizes (NxCxHxW), got {text!r}")
    return shape


def parse_sizes(text: str, arg: str = "--sweep") -> list[int]:
    """``"128,256,512"`` -> ``[128, 256, 512]``."""
    try:
        sizes = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise ValueError(
            f"{arg}: expected comma-separated side lengths like 128,256,512, got {text!r}"
        ) from None
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"{arg}: expected positive side lengths, got {text!r}")
    return sizes


def _shape_label(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def _ops_label(ops: dict[str, int]) -> str:
    return "; ".join(f"{k}:{v}" for k, v in ops.items())


def _default_command() -> str:
    return (
        shlex.join(["segbench", *sys.argv[1:]])
        if Path(sys.argv[0]).name == "segbench"
        else shlex.join(sys.argv)
    )


# --- cross-checks ---------------------------------------------------------------------------


@dataclass
class CrossCheck:
    """One tool's count: ``macs`` is NaN when the tool failed (``reason`` says why)."""

    tool: str
    macs: float = math.nan
    reason: str = ""
    unsupported: dict[str, int] = field(default_factory=dict)


def _quiet_copy(model: nn.Module) -> nn.Module:
    # Every tool runs on its own CPU copy: thop registers buffers and hooks on the modules it
    # sees, fvcore traces; the caller's model must not notice.
    return copy.deepcopy(model).cpu().eval()


@contextlib.contextmanager
def _silenced():
    loggers = [logging.getLogger(n) for n in ("fvcore", "iopath", "root")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def _thop(model: nn.Module, x: torch.Tensor) -> CrossCheck:
    with _silenced():
        import thop

        macs, _ = thop.profile(_quiet_copy(model), inputs=(x,), verbose=False)
    return CrossCheck("thop", float(round(float(macs))))


def _fvcore(model: nn.Module, x: torch.Tensor) -> CrossCheck:
    with _silenced():
        from fvcore.nn import FlopCountAnalysis

        fca = FlopCountAnalysis(_quiet_copy(model), (x,))
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        fca.tracer_warnings("none")
        with torch.no_grad():
            total = fca.total()
        unsupported = dict(fca.unsupported_ops().most_common())
    return CrossCheck("fvcore", float(total), unsupported=unsupported)


def _torch_counter(model: nn.Module, x: torch.Tensor) -> CrossCheck:
    from torch.utils.flop_counter import FlopCounterMode

    work = _quiet_copy(model)
    with _silenced(), torch.no_grad(), FlopCounterMode(display=False) as counter:
        work(x)
    return CrossCheck("torch", float(counter.get_total_flops() // 2))


CROSS_CHECK_TOOLS: dict[str, Callable[[nn.Module, torch.Tensor], CrossCheck]] = {
    "thop": _thop,
    "fvcore": _fvcore,
    "torch": _torch_counter,
}


def cross_checks(
    model: nn.Module,
    input_shape: Sequence[int] = GOLDEN_SHAPE,
    tools: Sequence[str] = ("thop", "fvcore", "torch"),
) -> dict[str, CrossCheck]:
    """thop / fvcore / FlopCounterMode counts of ``model`` on CPU; a failing tool gives NaN."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(input_shape), generator=gen)
    out = {}
    for tool in tools:
        try:
            out[tool] = CROSS_CHECK_TOOLS[tool](model, x)
        except Exception as err:  # noqa: BLE001 - any tool failure becomes NaN + reason
            msg = " ".join(str(err).split())[:200]
            out[tool] = CrossCheck(tool, reason=f"{tool} failed: {type(err).__name__}: {msg}")
    return out


# --- the per-model table --------------------------------------------------------------------


def _provenance(device: str, command: str) -> dict[str, Any]:
    from bench.env import environment

    env = environment(device if device != "meta" else "cpu")
    return env | {"device": device, "command": command}


def complexity_row(
    name: str,
    input_shape: Sequence[int] = GOLDEN_SHAPE,
    cross_check: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """One table row for a registry model; errors become ``status="error"`` with a reason."""
    from models import create_model, model_info

    nan = math.nan
    row: dict[str, Any] = {"model": name, "input_shape": _shape_label(input_shape)}
    try:
        info = model_info(name)
        row["reported_gflops"] = info.reported.get("gflops", nan)
        row["reported_params_m"] = info.reported.get("params_m", nan)
        model = create_model(name, in_channels=input_shape[1])
        c = analyze(model, input_shape, device=device)
    except Exception as err:  # noqa: BLE001 - one broken model must not stop the table
        return row | {"status": "error", "reason": f"{type(err).__name__}: {err}"[:500]}
    row |= {
        "params_total": c.params_total,
        "params_unique": c.params_unique,
        "params_trainable": c.params_trainable,
        "macs": c.macs,
        "gmacs": round(c.macs / 1e9, 3),
        "other_flops": c.other_flops,
        "activation_bytes": c.activation_bytes,
        "module_output_bytes": c.module_output_bytes,
        "unsupported_ops": _ops_label(c.unsupported_ops),
        "status": "ok",
        "reason": "",
    }
    reasons = []
    if c.unsupported_ops:
        reasons.append(f"segbench has no rule for {len(c.unsupported_ops)} op(s)")
    if cross_check:
        checks = cross_checks(model, input_shape)
        row["thop_macs"] = checks["thop"].macs
        row["thop_minus_macs"] = checks["thop"].macs - c.macs
        row["fvcore_macs"] = checks["fvcore"].macs
        row["fvcore_unsupported_ops"] = _ops_label(checks["fvcore"].unsupported)
        row["torch_flop_counter_macs"] = checks["torch"].macs
        reasons += [ch.reason for ch in checks.values() if ch.reason]
    row["reason"] = "; ".join(reasons)
    row["_detail"] = {
        "macs_by_op": c.macs_by_op,
        "other_flops_by_op": c.other_flops_by_op,
        "unsupported_ops": c.unsupported_ops,
    }
    return row


def _progress(items: Sequence[Any], desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled, leave=False, file=sys.stderr)


def run_complexity(
    models: list[str],
    input_shape: Sequence[int] = GOLDEN_SHAPE,
    out_dir: str | Path = "results/complexity",
    cross_check: bool = True,
    progress: bool = True,
    device: str = "cpu",
    command: str | None = None,
) -> Any:
    """Count every model, write ``complexity.{csv,json}`` under ``out_dir``, return the table.

    Rows for models not in ``models`` already in the files (same input shape) are kept, so a
    pattern run refreshes its rows without dropping the others.
    """
    import pandas as pd

    from bench.io import read_json, write_csv, write_json

    if not models:
        raise ValueError("models: no model names given")
    input_shape = tuple(input_shape)
    command = command or _default_command()
    prov = _provenance(device, command)
    rows = []
    bar = _progress(models, "complexity", progress)
    for name in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(name)
        row = complexity_row(name, input_shape, cross_check=cross_check, device=device)
        row |= {
            "device": device,
            "device_name": prov["device_name"],
            "torch_version": torch.__version__,
            "git_commit": prov["git_commit"],
            "command": command,
        }
        rows.append(row)
    details = {r["model"]: r.pop("_detail", {}) for r in rows}

    out = Path(out_dir)
    json_path = out / "complexity.json"
    label = _shape_label(input_shape)
    kept: list[dict[str, Any]] = []
    if json_path.exists():
        try:
            old = read_json(json_path)
            kept = [
                r
                for r in old.get("rows", [])
                if r.get("model") not in details and r.get("input_shape") == label
            ]
        except (ValueError, OSError, AttributeError):
            kept = []  # an unreadable old file is simply replaced
    all_rows = sorted(
        kept + [r | {"detail": details[r["model"]]} for r in rows], key=lambda r: r["model"]
    )
    order = [c for c in COLUMNS if c in {k for r in all_rows for k in r}]
    extra = ["device", "device_name", "torch_version", "git_commit", "command"]
    df = _int_columns(pd.DataFrame([{k: r.get(k) for k in order + extra} for r in all_rows]))
    write_json(
        json_path,
        {
            "command": command,
            "environment": prov,
            "input_shape": label,
            "columns": COLUMNS,
            "rows": [_json_safe(r) for r in all_rows],
        },
    )
    write_csv(out / "complexity.csv", df)
    return df[df["model"].isin(details)].reset_index(drop=True)


_INT_COLUMNS = (
    "params_total",
    "params_unique",
    "params_trainable",
    "macs",
    "other_flops",
    "activation_bytes",
    "module_output_bytes",
    "thop_macs",
    "thop_minus_macs",
    "fvcore_macs",
    "torch_flop_counter_macs",
)


def _int_columns(df: Any) -> Any:
    # Counts are exact integers; a NaN (failed tool) would otherwise turn a column to floats.
    import pandas as pd

    for col in _INT_COLUMNS:
        if col in df:
            vals = pd.to_numeric(df[col], errors="coerce")
            if (vals.dropna() % 1 == 0).all():
                df[col] = vals.round().astype("Int64")
    return df


def _json_safe(obj: Any) -> Any:
    # NaN is not JSON; a missing cross-check value becomes null (its reason says why).
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    return obj


def _fmt_int(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{int(v):,}"


def display_table(df: Any) -> Any:
    """The complexity table with unit-bearing headers and thousands separators, for printing."""
    import pandas as pd

    out = pd.DataFrame({"model": df["model"]})
    for col, head in DISPLAY_HEADERS.items():
        if col not in df:
            continue
        if col == "activation_bytes":
            out[head] = [("n/a" if pd.isna(v) else f"{v / 2**20:,.1f}") for v in df[col]]
        elif col == "reported_gflops":
            out[head] = ["" if pd.isna(v) else f"{v:g}" for v in df[col]]
        elif col == "unsupported_ops":
            out[head] = df[col].fillna("").replace("", "-")
        else:
            out[head] = [_fmt_int(v) for v in df[col]]
    if "status" in df and (df["status"] != "ok").any():
        out["status"] = df["status"]
    if "reason" in df and df["reason"].fillna("").astype(bool).any():
        out["note"] = df["reason"].fillna("").str.slice(0, 80)
    return out


# --- per-module breakdown -------------------------------------------------------------------


def breakdown_table(c: Complexity, depth: int | None = 2) -> Any:
    """The per-module tree of ``c`` down to ``depth`` with printable numbers."""
    df = c.breakdown(depth)
    width = int(df["module"].str.len().max())
    return df.assign(
        module=df["module"].str.ljust(width),  # keep the tree indentation when printed
        params=[f"{v:,}" for v in df["params"]],
        MACs=[f"{v:,}" for v in df["MACs"]],
        **{
            "% MACs": [f"{v:.1f}" for v in df["% MACs"]],
            "other FLOPs": [f"{v:,}" for v in df["other FLOPs"]],
            "output MB": [f"{v / 2**20:.2f}" for v in df["output bytes"]],
        },
    ).drop(columns=["name", "output bytes"])


# --- resolution sweep -----------------------------------------------------------------------


def resolution_sweep(
    models: list[str],
    sizes: Sequence[int] = (128, 256, 512, 1024),
    batch: int = 1,
    channels: int = 3,
    device: str = "cpu",
    progress: bool = True,
    builder: Callable[[str], nn.Module] | None = None,
) -> Any:
    """MACs and activation memory of each model at each square side length.

    Sizes a model cannot take (its registry input constraint, or a forward that fails) give
    a ``skipped`` row with the reason instead of an error.
    """
    import pandas as pd

    from models import InputSizeError, check_input_size, create_model, model_info

    rows = []
    jobs = [(m, s) for m in models for s in sizes]
    cache: dict[str, nn.Module] = {}
    for name, size in _progress(jobs, "sweep", progress):
        row: dict[str, Any] = {
            "model": name,
            "size": size,
            "input_shape": _shape_label((batch, channels, size, size)),
        }
        try:
            if builder is None:
                info = model_info(name)
                check_input_size(size, size, info.input_multiple, info.min_input, model=name)
            if name not in cache:
                cache[name] = (builder or (lambda n: create_model(n, in_channels=channels)))(name)
            c = analyze(cache[name], (batch, channels, size, size), device=device)
        except InputSizeError as err:
            rows.append(row | {"status": "skipped", "reason": str(err)})
            continue
        except Exception as err:  # noqa: BLE001 - e.g. a size the forward cannot handle
            rows.append(
                row
                | {
                    "status": "skipped",
                    "reason": f"forward failed: {type(err).__name__}: {err}"[:300],
                }
            )
            continue
        rows.append(
            row
            | {
                "macs": c.macs,
                "gmacs": round(c.macs / 1e9, 3),
                "other_flops": c.other_flops,
                "activation_bytes": c.activation_bytes,
                "activation_mb": round(c.activation_bytes / 2**20, 2),
                "module_output_bytes": c.module_output_bytes,
                "status": "ok",
                "reason": "",
            }
        )
    cols = [
        "model",
        "size",
        "input_shape",
        "macs",
        "gmacs",
        "other_flops",
        "activation_bytes",
        "activation_mb",
        "module_output_bytes",
        "status",
        "reason",
    ]
    return _int_columns(pd.DataFrame(rows).reindex(columns=cols))


# --- golden file ----------------------------------------------------------------------------


def golden_entry(c: Complexity) -> dict[str, Any]:
    """The golden record of one count: exact ints plus a rounded GMACs field for humans."""
    return {
        "params_total": c.params_total,
        "params_unique": c.params_unique,
        "macs": c.macs,
        "gmacs": round(c.macs / 1e9, 3),
    }


def load_golden(path: str | Path = GOLDEN_PATH) -> dict[str, dict[str, Any]]:
    """Model -> golden entry; a clear error when the file is missing or malformed."""
    from bench.io import read_json

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"golden file {path} does not exist: {UPDATE_HINT}")
    try:
        data = read_json(path)
    except ValueError as err:
        raise ValueError(f"golden file {path} is not valid JSON ({err}): {UPDATE_HINT}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f"golden file {path} has no 'models' mapping: {UPDATE_HINT}")
    return models


def _count_for_golden(model: nn.Module, device: str) -> dict[str, Any]:
    return golden_entry(analyze(model, GOLDEN_SHAPE, device=device))


def compare_golden(
    golden: dict[str, dict[str, Any] | None], current: dict[str, dict[str, Any] | str]
) -> list[dict[str, Any]]:
    """Differences between golden entries and current counts, one dict per (model, field).

    ``current`` maps a model to its entry, or to an error message when counting failed.
    A model without a golden entry is a difference too (with how to add it).
    """
    drifts = []
    for name, now in current.items():
        ref = golden.get(name)
        if isinstance(now, str):
            drifts.append(
                {
                    "model": name,
                    "field": "(count failed)",
                    "golden": None,
                    "now": None,
                    "change %": None,
                    "note": now,
                }
            )
        elif ref is None:
            drifts.append(
                {
                    "model": name,
                    "field": "(no golden entry)",
                    "golden": None,
                    "now": now.get("macs"),
                    "change %": None,
                    "note": f"no golden entry for this model: add it with `segbench complexity "
                    f"--update-golden --models {name}` (or `nox -s update-golden`) and commit "
                    "results/complexity/golden.json",
                }
            )
        else:
            for fld in GOLDEN_FIELDS:
                g, n = ref.get(fld), now[fld]
                if g != n:
                    pct = (100.0 * (n - g) / g) if isinstance(g, int) and g else None
                    drifts.append(
                        {
                            "model": name,
                            "field": fld,
                            "golden": g,
                            "now": n,
                            "change %": pct,
                            "note": "",
                        }
                    )
    return drifts


def format_drift(drifts: list[dict[str, Any]]) -> str:
    """A readable table of differences plus how to accept them."""
    if not drifts:
        return "golden counts match"
    lines = [f"{'model':<28} {'field':<18} {'golden':>16} {'now':>16} {'change %':>9}"]
    for d in drifts:
        g = "-" if d["golden"] is None else f"{d['golden']:,}"
        n = "-" if d["now"] is None else f"{d['now']:,}"
        pct = "-" if d["change %"] is None else f"{d['change %']:+.3f}"
        lines.append(f"{d['model']:<28} {d['field']:<18} {g:>16} {n:>16} {pct:>9}")
        if d.get("note"):
            lines.append(f"    {d['note']}")
    lines.append(f"If the change is intended, {UPDATE_HINT}.")
    return "\n".join(lines)


def check_golden(
    names: Sequence[str], golden: dict[str, dict[str, Any]], device: str = "meta"
) -> list[dict[str, Any]]:
    """Recount ``names`` and compare with ``golden``.

    Counting on the meta device takes shapes only (seconds for the whole registry); a model
    that fails or differs there is recounted on CPU, the path the golden file records, so a
    meta-only artefact never reads as a model change.
    """
    from models import create_model

    current: dict[str, dict[str, Any] | str] = {}
    for name in names:
        try:
            model = create_model(name)
        except Exception as err:  # noqa: BLE001
            current[name] = f"create_model failed: {type(err).__name__}: {err}"
            continue
        try:
            now: dict[str, Any] | str = _count_for_golden(model, device)
        except Exception as err:  # noqa: BLE001
            now = f"{type(err).__name__}: {err}"
        ref = golden.get(name)
        if (
            device != "cpu"
            and ref is not None
            and (isinstance(now, str) or any(now[f] != ref.get(f) for f in GOLDEN_FIELDS))
        ):
            try:
                now = _count_for_golden(model, "cpu")
            except Exception as err:  # noqa: BLE001
                now = f"{type(err).__name__}: {err}"
        current[name] = now
    return compare_golden(golden, current)


def update_golden(
    names: Sequence[str],
    path: str | Path = GOLDEN_PATH,
    device: str = "cpu",
    command: str | None = None,
    prune: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Recount ``names`` at 1x3x256x256 and write them into the golden file.

    Entries of other models are kept, unless ``prune`` (a full regeneration) drops those no
    longer in the registry.
    """
    from bench.io import write_json
    from models import create_model, list_models

    path = Path(path)
    try:
        entries = load_golden(path)
    except (FileNotFoundError, ValueError):
        entries = {}
    if prune:
        registered = set(list_models())
        entries = {k: v for k, v in entries.items() if k in registered}
    for name in _progress(list(names), "golden", progress):
        try:
            entries[name] = _count_for_golden(create_model(name), device)
        except Exception as err:
            # Nothing is written: a golden file with a hole would hide the broken model.
            raise RuntimeError(
                f"{name}: cannot count it ({type(err).__name__}: {err}); "
                f"golden file {path} left unchanged"
            ) from err
    command = command or _default_command()
    write_json(
        path,
        {
            "about": "Exact parameter and MAC counts of every registry model at "
            f"{_shape_label(GOLDEN_SHAPE)}, checked by tests/test_golden.py. After a "
            f"deliberate model change, {UPDATE_HINT}.",
            "input_shape": _shape_label(GOLDEN_SHAPE),
            "fields": {
                "params_total": COLUMNS["params_total"],
                "params_unique": COLUMNS["params_unique"],
                "macs": COLUMNS["macs"],
                "gmacs": COLUMNS["gmacs"],
            },
            "command": command,
            "environment": _provenance(device, command),
            "models": dict(sorted(entries.items())),
        },
    )
    return entries


# --- command line ---------------------------------------------------------------------------


def _print(df: Any) -> None:
    print(df.to_string(index=False))


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device: expected cpu, cuda[:N] or meta, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"--device: expected cpu, cuda[:N] or meta, got {device!r}")


def _cmd(args: argparse.Namespace) -> int:
    from bench.io import write_csv, write_json
    from models import create_model, list_models

    try:
        shape = parse_input_shape(args.input)
        sizes = parse_sizes(args.sweep) if args.sweep else None
        _check_device(args.device)
    except ValueError as err:
        print(f"segbench complexity: {err}", file=sys.stderr)
        return 2
    names = list_models(args.models)
    if not names:
        print(
            f"segbench complexity: --models {args.models!r} matches no registered model "
            f"(known: {', '.join(list_models())})",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    command = _default_command()
    progress = not args.quiet
    only_table = not (args.breakdown or sizes or args.update_golden)

    if args.update_golden:
        if shape != GOLDEN_SHAPE:
            print(
                f"segbench complexity: the golden file is at {_shape_label(GOLDEN_SHAPE)}; "
                f"drop --input {args.input}",
                file=sys.stderr,
            )
            return 2
        path = out / "golden.json"
        try:
            entries = update_golden(
                names,
                path,
                device=args.device,
                command=command,
                prune=args.models is None,
                progress=progress,
            )
        except RuntimeError as err:
            print(f"segbench complexity --update-golden: {err}", file=sys.stderr)
            return 1
        print(f"wrote {path} ({len(entries)} models: {', '.join(sorted(entries))})")

    if args.breakdown:
        try:
            model = create_model(args.breakdown, in_channels=shape[1])
        except KeyError as err:
            print(f"segbench complexity: --breakdown: {err}", file=sys.stderr)
            return 2
        c = analyze(model, shape, device=args.device)
        table = breakdown_table(c, args.depth)
        print(
            f"{args.breakdown} at {_shape_label(shape)}: {c.params_total:,} params, "
            f"{c.macs:,} MACs, {c.other_flops:,} other FLOPs, "
            f"{c.activation_bytes / 2**20:,.1f} MB activations"
        )
        _print(table)
        if c.unsupported_ops:
            print(f"ops without a rule: {_ops_label(c.unsupported_ops)}")
        full = c.breakdown(None)
        path = write_csv(
            out / f"breakdown-{args.breakdown}.csv",
            full.assign(input_shape=_shape_label(shape), command=command),
        )
        print(f"wrote {path}")

    if sizes:
        df = resolution_sweep(
            names, sizes, batch=shape[0], channels=shape[1], device=args.device, progress=progress
        )
        prov = _provenance(args.device, command)
        df = df.assign(
            device=args.device,
            device_name=prov["device_name"],
            torch_version=torch.__version__,
            git_commit=prov["git_commit"],
            command=command,
        )
        write_csv(out / "sweep.csv", df)
        write_json(
            out / "sweep.json",
            {
                "command": command,
                "environment": prov,
                "sizes": sizes,
                "rows": [_json_safe(r) for r in df.to_dict("records")],
            },
        )
        show = df[["model", "size", "gmacs", "activation_mb", "status", "reason"]].rename(
            columns={"gmacs": "segbench GMACs", "activation_mb": "activation MB"}
        )
        _print(show.assign(reason=show["reason"].fillna("").str.slice(0, 60)))
        print(f"wrote {out / 'sweep.csv'} and {out / 'sweep.json'}")

    if only_table:
        df = run_complexity(
            names,
            shape,
            out,
            cross_check=not args.no_cross_check,
            progress=progress,
            device=args.device,
            command=command,
        )
        _print(display_table(df))
        print(f"wrote {out / 'complexity.csv'} and {out / 'complexity.json'}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``segbench complexity``."""
    p = subparsers.add_parser(
        "complexity",
        help="parameters, exact MACs, thop/fvcore cross-checks, sweep, golden file",
        description="Count parameters and exact MACs (conv, linear, matmul, einsum, attention) "
        "at the aten dispatch level, with other FLOPs and activation memory, beside thop's "
        "(the papers' 'GFLOPs'), fvcore's and torch FlopCounterMode's counts. Writes "
        "complexity.{csv,json} under --out. With --breakdown, --sweep or --update-golden only "
        "those are done.",
    )
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated names or wildcard patterns (default: all models)",
    )
    p.add_argument(
        "--input", default="1x3x256x256", help="input shape NxCxHxW (default: 1x3x256x256)"
    )
    p.add_argument(
        "--breakdown",
        metavar="MODEL",
        default=None,
        help="print the per-module tree of one model (writes breakdown-MODEL.csv)",
    )
    p.add_argument("--depth", type=int, default=2, help="tree depth for --breakdown (default: 2)")
    p.add_argument(
        "--sweep",
        metavar="SIZES",
        default=None,
        help="comma-separated square sizes for a resolution sweep, e.g. "
        "128,256,512,1024 (writes sweep.{csv,json})",
    )
    p.add_argument(
        "--no-cross-check",
        action="store_true",
        help="skip thop, fvcore and FlopCounterMode (faster)",
    )
    p.add_argument(
        "--update-golden",
        action="store_true",
        help="recount and rewrite golden.json under --out (all models, or --models)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where the forward runs: cpu, cuda, or meta (shapes only, no compute; "
        "same MACs, attention may take another kernel path; default: cpu)",
    )
    p.add_argument(
        "--out", default="results/complexity", help="output folder (default: results/complexity)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)
