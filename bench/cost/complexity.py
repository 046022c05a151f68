"""Complexity analysis: parameters, exact MACs, cross-checks, resolution sweep, golden file.

The counter itself lives in :mod:`bench.cost.flops` (``analyze``). This module runs it over the
registry, puts thop's, fvcore's and torch's FlopCounterMode's numbers beside it so readers can
reconcile papers (their "GFLOPs" are thop MACs), and keeps ``results/complexity/golden.json``,
the regression guard checked by ``tests/test_golden.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.core.env import command_line
from bench.core.progress import progress_bar
from bench.core.shapes import DEFAULT_SHAPE, shape_label
from bench.cost.crosscheck import cross_checks
from bench.cost.flops import analyze

# Column -> meaning and unit, written into complexity.json so the CSV explains itself.
COLUMNS: dict[str, str] = {
    "model": "registry name",
    "source": "where the model comes from: empty for segbench's own models, else the "
    "distribution and version, module or file that registered it (an external model)",
    "input_shape": "input N x C x H x W",
    "params_total": "parameters, sum of numel (papers' convention)",
    "params_unique": "parameters, shared storage counted once",
    "params_thop": "parameters as thop 0.1.1 counts them (only modules of a type it has a rule "
    "for; see params_note)",
    "params_note": "why params_thop differs from params_total",
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
    "unsupported_ops": "aten ops segbench has no rule for: name:calls (then status is "
    "incomplete and macs a lower bound)",
    "fvcore_unsupported_ops": "ops fvcore skipped: name:calls",
    "status": "ok; incomplete (ops without a rule ran: macs and other_flops are lower "
    "bounds); error (no count)",
    "reason": "why a value is missing or incomplete (error, ops without a rule, a cross-check "
    "tool failing), in full",
}


# Human headers for printed tables, each naming its unit.
DISPLAY_HEADERS = {
    "params_total": "params",
    "params_unique": "params (unique)",
    "params_thop": "params (thop)",
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


#: complexity row statuses whose counts are usable (incomplete: MACs are a lower bound)
COUNTED = ("ok", "incomplete")


def _one_line(text: str) -> str:
    """Whitespace runs (newlines of a traceback message) folded; never cut."""
    return " ".join(str(text).split())


def params_note(params_total: int, params_thop: float) -> str:
    """Why thop's parameter count differs from segbench's (empty when they agree)."""
    if params_thop is None or math.isnan(params_thop) or int(params_thop) == params_total:
        return ""
    diff = params_total - int(params_thop)
    if diff > 0:
        return (
            f"thop misses {diff:,} parameters: it counts only modules of a type it has a rule "
            "for (conv, linear, norm...) that ran, so bare nn.Parameter attributes of custom "
            "modules and unknown module types are left out"
        )
    return (
        f"thop counts {-diff:,} parameters more than sum(numel) over model.parameters(): a "
        "module reached twice or a parameter shared between modules counts each time"
    )


def ops_label(ops: dict[str, int]) -> str:
    """Ops without a counting rule as one cell, ``"aten.sort:2; aten.topk:1"`` (op: calls):
    the table's ``unsupported_ops`` column and ``segbench complexity``'s message."""
    return "; ".join(f"{k}:{v}" for k, v in ops.items())


def _provenance(device: str, command: str) -> dict[str, Any]:
    from bench.core.env import environment

    env = environment(device if device != "meta" else "cpu")
    return env | {"device": device, "command": command}


def complexity_row(
    name: str,
    input_shape: Sequence[int] = DEFAULT_SHAPE,
    cross_check: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """One table row for a registry model; errors become ``status="error"`` with a reason."""
    from models import create_model, model_info

    nan = math.nan
    row: dict[str, Any] = {"model": name, "input_shape": shape_label(input_shape)}
    try:
        info = model_info(name)
        row["source"] = getattr(info, "source", "")  # "" = shipped with segbench
        row["reported_gflops"] = info.reported.get("gflops", nan)
        row["reported_params_m"] = info.reported.get("params_m", nan)
        model = create_model(name, in_channels=input_shape[1])
        c = analyze(model, input_shape, device=device)
    except Exception as err:  # noqa: BLE001 - one broken model must not stop the table
        return row | {"status": "error", "reason": _one_line(f"{type(err).__name__}: {err}")}
    row |= {
        "params_total": c.params_total,
        "params_unique": c.params_unique,
        "params_trainable": c.params_trainable,
        "macs": c.macs,
        "gmacs": round(c.macs / 1e9, 3),
        "other_flops": c.other_flops,
        "activation_bytes": c.activation_bytes,
        "module_output_bytes": c.module_output_bytes,
        "unsupported_ops": ops_label(c.unsupported_ops),
        "status": "incomplete" if c.unsupported_ops else "ok",
        "reason": "",
    }
    reasons = []
    if c.unsupported_ops:
        reasons.append(
            f"segbench has no rule for {len(c.unsupported_ops)} op(s) "
            f"({ops_label(c.unsupported_ops)}): MACs and other FLOPs are lower bounds"
        )
    if cross_check:
        checks = cross_checks(model, input_shape)
        row["params_thop"] = checks["thop"].params
        row["params_note"] = params_note(c.params_total, checks["thop"].params)
        row["thop_macs"] = checks["thop"].macs
        row["thop_minus_macs"] = checks["thop"].macs - c.macs
        row["fvcore_macs"] = checks["fvcore"].macs
        row["fvcore_unsupported_ops"] = ops_label(checks["fvcore"].unsupported)
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
    return progress_bar(items, enabled=enabled, desc=desc, leave=False)


def run_complexity(
    models: list[str],
    input_shape: Sequence[int] = DEFAULT_SHAPE,
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

    from bench.core.io import read_json, write_csv, write_json

    if not models:
        raise ValueError("models: no model names given")
    input_shape = tuple(input_shape)
    command = command or command_line()
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
    label = shape_label(input_shape)
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
    "params_thop",
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
    import pandas as pd

    if v is None or pd.isna(v):
        return "n/a"
    return f"{int(v):,}"


def display_table(df: Any) -> Any:
    """The complexity table with unit-bearing headers and thousands separators, for printing.

    MACs of an ``incomplete`` row are shown as ``>= N`` (a lower bound). Notes and
    failure reasons are not in the table: :func:`notes` lists them in full.
    """
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
    if "status" in df and "segbench MACs" in out:
        low = (df["status"] == "incomplete").to_numpy()
        out.loc[low, "segbench MACs"] = ">= " + out.loc[low, "segbench MACs"]
    if "status" in df and (df["status"] != "ok").any():
        out["status"] = df["status"]
    return out


def notes(df: Any) -> list[str]:
    """``model: reason`` lines for every row with a reason or a thop parameter note, in full."""
    import pandas as pd

    lines = []
    for _, r in df.iterrows():
        for key in ("reason", "params_note"):
            text = r.get(key)
            if text is not None and not pd.isna(text) and str(text).strip():
                lines.append(f"{r['model']}: {_one_line(text)}")
    return lines
