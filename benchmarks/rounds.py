"""A figure over alternating rounds: its median and spread, and whether it settles its goal.

On a shared machine a figure varies from one round to the next, and load from other work comes in
bursts. So a benchmark times its two sides in alternating rounds (A, B, A, B, ...), computes its
figure from each round's pair, and reports the median with the interquartile range and the range
of the rounds, never the best round. When the rounds spread wider than the median's margin to the
goal, the run cannot say on which side of the goal the figure lies, and `goal_line` says so.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """One figure's values over the rounds."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def quartiles(self) -> tuple[float, float]:
        """The first and third quartiles (both the value itself for one round)."""
        if len(self.values) == 1:
            return self.values[0], self.values[0]
        q1, _, q3 = statistics.quantiles(self.values, n=4, method="inclusive")
        return q1, q3

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def describe(self, fmt: str = ".3f") -> str:
        """E.g. `0.952 (IQR 0.931-0.978, range 0.910-1.090, 5 rounds)`."""
        q1, q3 = self.quartiles
        return (
            f"{self.median:{fmt}} (IQR {q1:{fmt}}-{q3:{fmt}}, "
            f"range {self.low:{fmt}}-{self.high:{fmt}}, {len(self.values)} rounds)"
        )


def spread(values: list[float]) -> Spread:
    """The Spread of one value per round (at least one)."""
    if not values:
        raise ValueError("a spread needs at least one round")
    return Spread(tuple(values))


def goal_line(figure: Spread, goal: float, at_least: bool, fmt: str = ".3f") -> str:
    """One line: whether the median meets the goal (`at_least` it, else at most it), in how many
    rounds the figure met it and, when the rounds' range is wider than the median's distance from
    the goal, that this run does not settle it."""
    bound = "at least" if at_least else "at most"
    meets = [v >= goal if at_least else v <= goal for v in (figure.median, *figure.values)]
    line = (
        f"goal {bound} {goal:{fmt}}: the median {'meets' if meets[0] else 'misses'} it "
        f"({sum(meets[1:])} of {len(figure.values)} rounds meet it)"
    )
    margin, width = abs(figure.median - goal), figure.high - figure.low
    if width > margin:
        line += (
            f", but the rounds spread wider ({width:{fmt}}, from {figure.low:{fmt}} to "
            f"{figure.high:{fmt}}) than the median's margin to the goal ({margin:{fmt}}): "
            "this run does not settle it"
        )
    return line
