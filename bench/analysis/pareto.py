"""Pareto front of (cost, accuracy) points: minimise cost, maximise accuracy.

A dozen points need no library (and none of the well-kept ones is installed):
sort by cost and sweep, keeping the best accuracy seen so far.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pareto_front", "pareto_order"]


def pareto_front(cost: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """Boolean mask of the points no other point dominates.

    A point is dominated when another costs no more and is at least as accurate,
    with at least one of the two strictly better. Consequences:

    - equal cost, different accuracy: only the more accurate point is on the front;
    - equal accuracy, different cost: only the cheaper point is on the front;
    - exact duplicates (same cost and accuracy): neither dominates the other, so all
      copies are on the front (or none, when something else dominates them);
    - a point with NaN (or inf) cost or accuracy is never on the front and never
      dominates another.
    """
    c = np.asarray(cost, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    if c.shape != a.shape or c.ndim != 1:
        raise ValueError(
            f"cost and accuracy must be 1-D and of equal length, got {c.shape} and {a.shape}"
        )
    on_front = np.zeros(c.shape, dtype=bool)
    valid = np.flatnonzero(np.isfinite(c) & np.isfinite(a))
    # Cheapest first; among equal costs the most accurate first.
    order = valid[np.lexsort((-a[valid], c[valid]))]
    best_acc, best_cost = -np.inf, np.nan
    for i in order:
        if a[i] > best_acc:
            on_front[i] = True
            best_acc, best_cost = a[i], c[i]
        elif a[i] == best_acc and c[i] == best_cost:  # an exact duplicate of a front point
            on_front[i] = True
    return on_front


def pareto_order(cost: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """Indices of the front's points, cheapest first (the order to draw the step line)."""
    mask = pareto_front(cost, accuracy)
    idx = np.flatnonzero(mask)
    c = np.asarray(cost, dtype=float)[idx]
    a = np.asarray(accuracy, dtype=float)[idx]
    return idx[np.lexsort((a, c))]
