"""The Tune callback that records in the study what happens to the trials, and keeps the live
results table in step with it.

Each result becomes an intermediate value in the study (single-objective studies) and a row of
the live table; each ending (completed, early_stopped, diverged, errored) is told to the study as
it happens, with its Pico status (launch/status.py). A trial that an interrupt or a crash cuts
short is told nothing: the study keeps it running, and `--resume` continues it. Budgets end trials
without Tune telling callbacks; `launch/experiment.py` records those endings.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from launch import status
from launch.export import ResultsWriter, apply_study_state
from launch.study import ERROR_ATTR, RETRIES_ATTR, SearchStudy, number_of
from launch.trainable import SETTINGS_KEY, pico_trial_id


class Recorder(Callback):
    """See the module docstring. `metrics` are the objectives' result keys, in order."""

    def __init__(
        self,
        study: SearchStudy,
        writer: ResultsWriter,
        *,
        metrics: list[str],
        milestones: list[float],
    ):
        self.study = study
        self.writer = writer
        self.metrics = metrics
        self.milestones = milestones
        self.retries: dict[str, int] = {}
        self.errors: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the Tuner (and never reads them back here): the live
        # table and its writer thread stay in this process.
        return {**self.__dict__, "writer": None}

    def _update(self, trial: Trial, outcome: str | None = None, result: dict | None = None):
        """Apply a result and the study's view of the trial to its row of the live table."""
        trial_id = pico_trial_id(trial.config)
        config = {k: v for k, v in trial.config.items() if k != SETTINGS_KEY}
        confirms = trial.config[SETTINGS_KEY].get("confirms")
        with self.writer.lock:
            record = self.writer.table.trial(trial_id, config, confirms)
            if result is not None:
                record.add_eval(result)
            attrs = {RETRIES_ATTR: self.retries.get(trial_id, record.retries)}
            if trial_id in self.errors:
                attrs[ERROR_ATTR] = self.errors[trial_id]
            apply_study_state(record, attrs, outcome or record.status, self.milestones)
        self.writer.changed()

    def _end(self, trial: Trial, result: dict[str, Any] | None, error: str | None = None):
        """Tell the study how the trial ended, once."""
        trial_id = pico_trial_id(trial.config)
        # A trial's config is a whole TrainConfig dict (launch/searcher.py).
        outcome = status.ERRORED if error else status.ending(result, trial.config["max_steps"])
        values = None
        if outcome == status.COMPLETED:
            values = [result.get(name) for name in self.metrics]
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                outcome, values = status.DIVERGED, None
        last_step = (result or {}).get("step")
        if error:
            self.errors[trial_id] = error
        if self.study.finish(
            number_of(trial_id), outcome, last_step=last_step, values=values, error=error
        ):
            self._update(trial, outcome)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result, **info):
        value, step = result.get(self.metrics[0]), result.get("step")
        if isinstance(value, int | float) and step is not None:
            self.study.report(number_of(pico_trial_id(trial.config)), int(step), float(value))
        self._update(trial, result=result)
        # A result ASHA stopped the trial at, or a diverged one, is the trial's last.
        if result.get("done") or result.get("diverged"):
            self._end(trial, result)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info):
        self._end(trial, trial.last_result)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info):
        trial_id = pico_trial_id(trial.config)
        self.retries[trial_id] = trial.num_failures
        self.study.set_attr(number_of(trial_id), RETRIES_ATTR, trial.num_failures)
        self._update(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info):
        trial_id = pico_trial_id(trial.config)
        self.retries[trial_id] = trial.num_failures
        self.study.set_attr(number_of(trial_id), RETRIES_ATTR, trial.num_failures)
        error = _last_line(trial.get_error() or "") or "error (no message)"
        self._end(trial, trial.last_result, error=error)


def _last_line(text: str) -> str:
    """The last non-empty line of a traceback: the exception and its message."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""
