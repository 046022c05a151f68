"""Per-module breakdown of a count (the ``--breakdown`` tree)."""

from __future__ import annotations

from typing import Any

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
