"""The best deployment variant per model, from ``deploy/precision.csv`` (issue 24 item 14).

On a host with fast int8 / bf16 units (an Intel Xeon with AMX: UNet OpenVINO bf16 at 8.6x
eager fp32) the reduced-precision rows are the headline, so the report names, per model,
the fastest variant that was scored, its speedup over eager fp32 and what it costs in DSC.
A variant is eligible when its status is ``ok`` and it has a latency; among those the
fastest whose DSC change is known and no worse than ``max_dsc_loss_pts`` wins. Without
any DSC (untrained weights) the fastest is named and the row says its accuracy change was
not measured, rather than presenting it as free.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.analysis.report.load import Results

#: A variant losing more DSC than this (points) is not called the best.
MAX_DSC_LOSS_PTS = 0.5


def best_variants(deploy: pd.DataFrame, max_dsc_loss_pts: float = MAX_DSC_LOSS_PTS) -> pd.DataFrame:
    """One row per model: ``model``, ``best_variant``, ``latency_ms``,
    ``speedup_vs_eager_fp32``, ``dsc_change_pts`` (NaN: not measured), ``accuracy``
    (a sentence), ``host`` (the table's ``cpu``)."""
    cols = ["model", "best_variant", "latency_ms", "speedup_vs_eager_fp32", "dsc_change_pts",
            "accuracy", "host"]  # fmt: skip
    if deploy.empty or "variant" not in deploy:
        return pd.DataFrame(columns=cols)
    d = deploy.copy()
    for c in ("latency_ms", "speedup_vs_eager_fp32", "dsc_change_pts"):
        d[c] = pd.to_numeric(d[c], errors="coerce") if c in d else math.nan
    d = d[(d["status"].astype(str) == "ok") & d["latency_ms"].notna()]
    rows = []
    for model, g in d.groupby("model", sort=True):
        measured = g[g["dsc_change_pts"].notna()]
        if not measured.empty:
            fine = measured[measured["dsc_change_pts"] >= -max_dsc_loss_pts]
            pick = (fine if not fine.empty else measured).sort_values("latency_ms").iloc[0]
            change = float(pick["dsc_change_pts"])
            # a change that rounds to zero is printed as such, not as "-0.00"
            shown = f"{change:+.2f}" if round(change, 2) != 0 else f"±0.00 ({change:+.1g})"
            accuracy = f"DSC {shown} pts vs eager fp32"
            if fine.empty:
                accuracy += f" (every variant loses more than {max_dsc_loss_pts:g} pts)"
        else:
            pick = g.sort_values("latency_ms").iloc[0]
            change = math.nan
            accuracy = "DSC change not measured (untrained weights or no --data)"
        rows.append(
            {
                "model": model,
                "best_variant": str(pick["variant"]),
                "latency_ms": float(pick["latency_ms"]),
                "speedup_vs_eager_fp32": float(pick["speedup_vs_eager_fp32"]),
                "dsc_change_pts": change,
                "accuracy": accuracy,
                "host": str(pick.get("cpu", "") or ""),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def best_variant_lines(res: Results, shown: bool) -> list[str]:
    """Under the deployment table (when ``shown``): the fastest scored variant per model
    and its DSC cost (:func:`best_variants`), as README lines."""
    if not shown or res.deploy is None or res.deploy.empty:
        return []
    best = best_variants(res.deploy)
    if best.empty:
        return []
    lines = [
        "Fastest scored variant per model (its speedup over eager fp32, and its accuracy):",
        "",
    ]
    for _, r in best.iterrows():
        lines.append(
            f"- {r['model']}: {r['best_variant']}, {r['latency_ms']:.1f} ms "
            f"({r['speedup_vs_eager_fp32']:.2f}x eager fp32); {r['accuracy']}"
        )
    return [*lines, ""]
