"""A true non-dominated (Pareto) filter over any number of objectives.

Point a dominates point b when a is at least as good as b in every objective and strictly better
in at least one. The frontier is every point that no other point dominates. Two consequences
worth stating: equal points never dominate each other, so all copies of a frontier point are
kept; and a point with a NaN in any objective is never on the frontier (nor dominates anything).
Unlike a convex hull, this keeps points in the hull's concave dents and drops dominated ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MAXIMIZE_BY_DEFAULT = ("token_accuracy", "tokens_per_s")


def non_dominated(values: np.ndarray, maximize: Sequence[bool] | None = None) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `values` (n points x k objectives).

    `maximize[j]` says objective j is to be maximised (default: all minimised). Rows with a NaN
    are never kept. Runs in O(n log n + n * f * k) for a frontier of f points.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (points x objectives), got shape {values.shape}")
    if maximize is None:
        maximize = [False] * values.shape[1]
    costs = values * np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)  # all minimised now
    keep = np.zeros(len(costs), dtype=bool)
    candidates = np.flatnonzero(~np.isnan(costs).any(axis=1))
    # In lexicographic order a point can only be dominated by points before it, and if it is
    # dominated at all, some frontier point dominates it (dominance is transitive). So one pass
    # that compares each point with the frontier found so far is exact.
    order = candidates[np.lexsort(costs[candidates].T[::-1])]
    found = np.empty((len(order), costs.shape[1]))
    n_found = 0
    for i in order:
        front, point = found[:n_found], costs[i]
        dominated = (front <= point).all(axis=1) & (front < point).any(axis=1)
        if not dominated.any():
            keep[i] = True
            found[n_found] = point
            n_found += 1
    return keep


def directions(objectives: Sequence[str], declared: dict[str, str] | None = None) -> list[bool]:
    """Whether to maximise each objective: from the file's metadata, else a sensible default."""
    declared = declared or {}
    return [
        declared.get(name, "maximize" if name in MAXIMIZE_BY_DEFAULT else "minimize") == "maximize"
        for name in objectives
    ]


def frontier(df: pd.DataFrame, objectives: Sequence[str], maximize: Sequence[bool]) -> pd.Series:
    """Boolean Series: which rows of `df` are non-dominated over the `objectives` columns."""
    values = df[list(objectives)].astype(float).to_numpy()
    return pd.Series(non_dominated(values, maximize), index=df.index)


def frontier_by_group(
    df: pd.DataFrame, objectives: Sequence[str], maximize: Sequence[bool], by: str
) -> pd.Series:
    """Boolean Series: which rows are non-dominated within their own `by` group."""
    keep = pd.Series(False, index=df.index)
    for _, group in df.groupby(by, sort=False):
        keep[group.index] = frontier(group, objectives, maximize)
    return keep
