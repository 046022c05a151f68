"""Per-module breakdown of a count (the ``--breakdown`` tree)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.core.shapes import shape_label
from bench.cost.flops import Complexity


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


def write_breakdown(
    c: Complexity, out_dir: str | Path, name: str, input_shape: Sequence[int], command: str
) -> Path:
    """Write the full per-module tree of ``c`` to ``out_dir/breakdown-<name>.csv``."""
    from bench.core.io import write_csv

    full = c.breakdown(None)
    return write_csv(
        Path(out_dir) / f"breakdown-{name}.csv",
        full.assign(input_shape=shape_label(input_shape), command=command),
    )
