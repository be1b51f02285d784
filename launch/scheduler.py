"""ASHA whose rung records live in the study, so that a resumed search keeps them.

Asynchronous successive halving (Li et al., "A System for Massively Parallel Hyperparameter
Tuning", 2020), decided as Ray Tune's `AsyncHyperBandScheduler` (2.60) decides it with one
bracket: when a trial first reaches a milestone (`grace_period * reduction_factor**k` steps), it is
compared with every result recorded at that milestone before it, recorded, and stopped if it is
worse than the best `1 / reduction_factor` of them. A trial already recorded at the highest
milestone it has passed continues without a new decision.

Ray's scheduler keeps its records in memory only, so a resumed search forgot them; and it
computes each cutoff with `np.nanpercentile` over every record at the milestone, O(records) per
result (0.55 ms at 10,000 records here). This one keeps each milestone's losses sorted as well,
and reads the same percentile off them in O(1) (`linear_percentile`). This one writes
each record to the study (trial user attribute `asha_rung_<step>`) as it makes it, before the
decision takes effect, and a new run starts from the records the study holds: after a resume, a
trial is still compared with every result recorded before the interruption.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from launch.study import RUNG_ATTR, SearchStudy, number_of, rung_records
from launch.trainable import pico_trial_id


def linear_percentile(ordered: list[float], percent: float) -> float:
    """`np.percentile(ordered, percent)` of sorted values, computed as NumPy's default (linear)
    method computes it, to the last bit."""
    index = percent / 100 * (len(ordered) - 1)
    below = math.floor(index)
    low, high = ordered[below], ordered[min(below + 1, len(ordered) - 1)]
    weight = index - below
    if weight >= 0.5:
        return high - (high - low) * (1 - weight)
    return low + (high - low) * weight


def asha_milestones(grace_period: int, max_t: int, reduction_factor: float) -> list[float]:
    """The steps at which ASHA compares trials: Ray's formula for its single bracket."""
    n_rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(n_rungs)]


class InOrderScheduler(FIFOScheduler):
    """Tune's FIFOScheduler, choosing no trial to run: Tune's loop starts its pending trials
    itself, in the order they were added, from a list of its own (Pico's schedulers never pause
    a trial, the other kind FIFOScheduler chooses).

    `FIFOScheduler.choose_trial_to_run` looks among all the search's trials, finished ones
    included, at every step of Tune's loop: O(trials), about 1 ms at 10,000 trials here. With
    Ray's ASHA choosing as FIFOScheduler does, Tune's loop took 20.7 ms per result of trials
    that train nothing at 10,000 trials, against 9.1 ms choosing none
    (docs/benchmarks.md#search-driver).
    """

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        return None


class StudyASHA(InOrderScheduler):
    """ASHA minimising `metric` by `time_attr`, its rung records kept in `study`."""

    def __init__(
        self,
        study: SearchStudy,
        *,
        metric: str,
        time_attr: str,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
    ):
        super().__init__()
        self.set_search_properties(metric, "min")
        self.study = study
        self.time_attr = time_attr
        self.reduction_factor = reduction_factor
        self.milestones = asha_milestones(grace_period, max_t, reduction_factor)
        self.records = rung_records(study.trials(), self.milestones)
        self._ordered = {m: sorted(records.values()) for m, records in self.records.items()}

    def cutoff(self, milestone: float) -> float | None:
        """The loss a trial must not exceed at `milestone` (None before the first record)."""
        ordered = self._ordered[milestone]
        if not ordered:
            return None
        return linear_percentile(ordered, 100 / self.reduction_factor)

    def decide(self, trial_id: str, step: float, value: float) -> str:
        """CONTINUE or STOP for `trial_id`'s result `value` at `step`, recording it at the
        highest milestone it has reached (see the module docstring)."""
        for milestone in reversed(self.milestones):
            if step < milestone:
                continue
            if trial_id in self.records[milestone]:
                return TrialScheduler.CONTINUE
            cutoff = self.cutoff(milestone)
            self.study.set_attr(number_of(trial_id), RUNG_ATTR.format(milestone), value)
            self.records[milestone][trial_id] = value
            bisect.insort(self._ordered[milestone], value)
            if cutoff is not None and value > cutoff:
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        value = result.get(self.metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return TrialScheduler.CONTINUE  # a diverged trial ends by itself
        return self.decide(pico_trial_id(trial.config), result[self.time_attr], float(value))

    def debug_string(self) -> str:
        cutoffs = ", ".join(f"{m:g}: {self.cutoff(m)}" for m in self.milestones)
        return f"ASHA cutoffs by step: {cutoffs}"
