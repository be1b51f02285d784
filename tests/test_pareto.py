"""The Pareto filter against a brute-force O(n²) definition of dominance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.pareto import directions, frontier, frontier_by_group, non_dominated


def brute_force(values: np.ndarray, maximize: list[bool]) -> np.ndarray:
    """Straight from the definition: kept unless some other point is >= everywhere and > once."""
    costs = values * np.where(maximize, -1.0, 1.0)
    finite = ~np.isnan(costs).any(axis=1)
    keep = np.zeros(len(costs), bool)
    for i in np.flatnonzero(finite):
        dominated = any(
            finite[j] and (costs[j] <= costs[i]).all() and (costs[j] < costs[i]).any()
            for j in range(len(costs))
        )
        keep[i] = not dominated
    return keep


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_with_ties_nans_and_mixed_directions(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 120)), int(rng.integers(2, 5))
    # Small integers make exact ties and duplicate points common.
    values = rng.integers(0, 6, size=(n, k)).astype(float)
    values[rng.random((n, k)) < 0.05] = np.nan
    maximize = list(rng.random(k) < 0.5)
    np.testing.assert_array_equal(non_dominated(values, maximize), brute_force(values, maximize))


def test_continuous_points_match_brute_force():
    rng = np.random.default_rng(42)
    values = rng.normal(size=(300, 3))
    np.testing.assert_array_equal(non_dominated(values), brute_force(values, [False] * 3))


def test_equal_points_are_all_kept():
    values = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [1.0, 1.0]])
    assert non_dominated(values).tolist() == [True, True, False, True]


def test_nan_points_are_excluded_and_dominate_nothing():
    values = np.array([[np.nan, 0.0], [1.0, 1.0], [0.5, np.nan]])
    assert non_dominated(values).tolist() == [False, True, False]


def test_keeps_concave_points_a_convex_hull_would_drop():
    # (2, 2) lies above the hull segment from (0, 3) to (3, 0) but nothing dominates it;
    # (3, 3) is dominated by (2, 2), though a hull-based "frontier" might include it.
    values = np.array([[0.0, 3.0], [2.0, 2.0], [3.0, 0.0], [3.0, 3.0]])
    assert non_dominated(values).tolist() == [True, True, True, False]


def test_maximise_flips_the_order():
    accuracy_and_params = np.array([[0.9, 100.0], [0.8, 50.0], [0.7, 80.0]])
    assert non_dominated(accuracy_and_params, [True, False]).tolist() == [True, True, False]


def test_rejects_non_matrix_input():
    with pytest.raises(ValueError, match="2-D"):
        non_dominated(np.zeros(3))


def test_directions_from_metadata_then_defaults():
    declared = {"n_params": "maximize"}
    assert directions(["val_loss", "n_params", "token_accuracy"], declared) == [False, True, True]


def test_frontier_within_groups():
    df = pd.DataFrame(
        {
            "arch": ["a", "a", "b", "b"],
            "loss": [1.0, 2.0, 3.0, 4.0],
            "size": [1.0, 2.0, 1.5, 1.4],
        },
        index=[10, 11, 12, 13],
    )
    overall = frontier(df, ["loss", "size"], [False, False])
    grouped = frontier_by_group(df, ["loss", "size"], [False, False], by="arch")
    # Trial a1 dominates everything over all; within b, both b trials trade loss for size.
    assert overall.tolist() == [True, False, False, False]
    assert grouped.tolist() == [True, False, True, True]
    assert grouped.index.tolist() == [10, 11, 12, 13]
