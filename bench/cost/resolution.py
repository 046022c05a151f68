"""Resolution sweep: MACs and activation memory of every model over square input sizes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn

from bench.core.shapes import shape_label
from bench.cost.complexity import _int_columns, _json_safe, _progress, _provenance
from bench.cost.flops import analyze


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
            "input_shape": shape_label((batch, channels, size, size)),
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


def write_resolution_sweep(
    df: Any, out_dir: str | Path, sizes: Sequence[int], device: str, command: str
) -> tuple[Path, Path]:
    """Write a :func:`resolution_sweep` table with provenance to ``sweep.{csv,json}``."""
    import torch

    from bench.core.io import write_csv, write_json

    out = Path(out_dir)
    prov = _provenance(device, command)
    df = df.assign(
        device=device,
        device_name=prov["device_name"],
        torch_version=torch.__version__,
        git_commit=prov["git_commit"],
        command=command,
    )
    csv = write_csv(out / "sweep.csv", df)
    js = write_json(
        out / "sweep.json",
        {
            "command": command,
            "environment": prov,
            "sizes": list(sizes),
            "rows": [_json_safe(r) for r in df.to_dict("records")],
        },
    )
    return csv, js
