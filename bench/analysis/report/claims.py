"""Words the report derives from numbers, so that a claim follows from the row beside it.

- :func:`limiter_text`: what limits a model's speed, from its achieved GFLOP/s against
  both roofline bounds (compute: the machine's peak; memory: peak bandwidth x the
  model's arithmetic intensity). Below :data:`OVERHEAD_FRACTION` of both bounds neither
  compute nor memory traffic is the limit: per-operator overhead (dispatch, small
  kernels, layout changes) is, and the row says "overhead-bound".
- :func:`train_step_note`: a training-step row measured with too few iterations (stopped
  at the time cap) or flagged noisy is marked, so its img/s is not read as exact.
- :func:`thop_note`: where thop, whose MAC count is the papers' "GFLOPs" convention,
  skipped parameters (modules it has no rule for), its count misses their work.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

#: achieved share of both roofline bounds below which a model is called overhead-bound
OVERHEAD_FRACTION = 0.25


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def bound_fractions(row: pd.Series | dict[str, Any]) -> tuple[float, float]:
    """(achieved / compute bound, achieved / memory bound) of a speed row; NaN where the
    row lacks the peak, the bandwidth or the arithmetic intensity."""
    achieved = _f(row.get("achieved_gflops"))
    compute = _f(row.get("peak_tflops")) * 1000
    memory = _f(row.get("peak_gbps")) * _f(row.get("intensity_flop_per_byte"))
    fc = achieved / compute if compute > 0 else math.nan
    fm = achieved / memory if memory > 0 else math.nan
    return fc, fm


def limiter_text(row: pd.Series | dict[str, Any]) -> str:
    """``"overhead-bound (9% of memory bound, 4% of compute bound)"``,
    ``"compute-bound (73% of its bound)"`` or ``""`` when the row lacks the numbers.

    The tighter bound is the roofline's; a model reaching at least
    :data:`OVERHEAD_FRACTION` of it is called bound by that resource."""
    fc, fm = bound_fractions(row)
    if not (math.isfinite(fc) and math.isfinite(fm)):
        return ""
    if max(fc, fm) < OVERHEAD_FRACTION:
        return (
            f"overhead-bound ({100 * fm:.0f}% of memory bound, {100 * fc:.0f}% of compute "
            f"bound; below {100 * OVERHEAD_FRACTION:.0f}% of both)"
        )
    kind, frac = ("memory", fm) if fm >= fc else ("compute", fc)
    return f"{kind}-bound ({100 * frac:.0f}% of its bound)"


def train_step_note(row: pd.Series | dict[str, Any]) -> str:
    """Why a training-step row's img/s is approximate (``""`` when it is not): stopped at
    the time cap after fewer iterations than asked, and/or flagged noisy."""
    reason = str(row.get("reason") or "")
    reason = "" if reason.lower() == "nan" else reason
    notes = []
    if "max time" in reason.lower():
        notes.append(f"time-capped: {reason}")
    if str(row.get("noisy")).strip().lower() in ("true", "1", "1.0", "yes"):
        notes.append("noisy")
    return "; ".join(notes)


def thop_note(params_total: Any, params_thop: Any) -> str:
    """``"thop counted 2,283,377 of 5,839,309 parameters: its MACs miss the rest's work"`` when
    thop saw fewer parameters than the model has (more than 1% missing), else ``""``."""
    total, seen = _f(params_total), _f(params_thop)
    if not (math.isfinite(total) and math.isfinite(seen)) or total <= 0:
        return ""
    if seen >= 0.99 * total:
        return ""
    return f"thop counted {seen:,.0f} of {total:,.0f} parameters: its MACs miss the rest's work"
