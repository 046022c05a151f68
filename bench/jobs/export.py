"""``segbench export``: ONNX files of registered models, checked, and (opt-in) int8 / bf16 costs.

**Export** (:func:`run_export`): per model, the weights (random init, a checkpoint file, or a
training run's ``checkpoints/best.pt`` with the run's model arguments), then
:func:`bench.deploy.export.export_model` (dynamo, then TorchScript) and
:func:`bench.deploy.check.check_onnx` (the graph on onnxruntime against the PyTorch model on
seeded inputs, with the model's tolerance). A row per model; an export failure or a check
outside the tolerance is a row with ``status="error"`` and the reason, never the end of the
run. ``<out>/onnx/<model>.onnx`` (git-ignored) and the table ``<out>/export.{csv,json}``
(rows of earlier runs for other models are kept, a model's row is replaced).

**Reduced precision** (``--int8`` / ``--bf16``): :mod:`bench.jobs.precision`, on the
weights chosen here (:class:`Weights`, :func:`build_model`). Both tables are written by
:func:`bench.jobs.deploy_table.merge_write`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from bench.deploy.export import EXPORTERS
from bench.jobs.deploy_table import merge_write

RANDOM_INIT = "random init (untrained)"
EXPORT_KEY = ["model"]


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
    from models.weights import get_weights, verified_path

    entry = get_weights(model, name)
    path = verified_path(entry)  # refuses a missing or changed file before any work
    split: dict[str, Any] = {}
    cfg_path = Path(__file__).resolve().parents[2] / entry.meta.get("run", "") / "config.json"
    if entry.meta.get("run") and cfg_path.is_file():
        from bench.core.io import read_json

        cfg = read_json(cfg_path)
        keys = ("split_seed", "val_fraction", "test_fraction", "split_mode")
        split = {k: cfg[k] for k in keys if cfg.get(k) is not None}
    return Weights(
        label=f"weights {model}:{name} (sha256 {entry.sha256[:12]})",
        checkpoint=path,
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
        merge_write(df, out / "export", EXPORT_KEY)
    return df
