"""Ray Tune's OptunaSearch, corrected for early stopping, and the samplers it can drive.

Ray's OptunaSearch (2.60) tells Optuna every trial that ends with a value as COMPLETE, so a trial
that ASHA stopped after a tenth of its budget enters TPE's model as if its partial loss were a
final one, and pulls the search towards whatever learns fastest in the first steps. Worse, it never
reports the result that made ASHA stop a trial (Tune withholds it from the searcher).

`PicoOptunaSearch` instead:
  * reports every evaluation to Optuna as an intermediate value at its optimizer step;
  * tells a trial that stopped before `max_steps` (ASHA, the time budget, an interrupt) as PRUNED,
    after reporting its last evaluation, so Optuna ranks it by how far it got and how well it did
    there (TPE orders pruned trials by last step, then value);
  * tells a diverged trial (NaN loss) and an errored one as FAIL, Optuna's convention for a NaN
    objective, and a trial that reached `max_steps` as COMPLETE with its final values;
  * returns exactly the config fields the space function returns, not Optuna's raw parameters.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)

STEP_KEY = "step"


def make_sampler(name: str, seed: int, n_objectives: int = 1) -> optuna.samplers.BaseSampler:
    """The Optuna sampler `name`, seeded."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "tpe":
        # group: conditional sub-spaces (one per architecture) are modelled jointly, not as
        # independent parameters; constant_liar: running trials count as mediocre, so that
        # concurrent trials spread out instead of all proposing the same point.
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=8
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES handles numbers only; categorical parameters fall back to random sampling.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    raise ValueError(f"unknown sampler {name!r}")


class PicoOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna early-stopped trials as PRUNED with their learning curves.

    `space` is a define-by-run function `(trial) -> dict of config fields`; `max_steps` is the
    training length of a trial that was not stopped early.
    """

    def __init__(
        self,
        space: Callable[[optuna.Trial], dict[str, Any]],
        *,
        metric: str | list[str],
        mode: str | list[str],
        max_steps: int,
        **kwargs: Any,
    ):
        super().__init__(space, metric=metric, mode=mode, **kwargs)
        self.max_steps = max_steps
        self._last_reported: dict[str, int] = {}  # trial id -> last step told to Optuna

    @property
    def study(self) -> optuna.Study:
        """The Optuna study every trial is told to."""
        return self._ot_study

    @property
    def _multi_objective(self) -> bool:
        return isinstance(self._metric, list)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Ask Optuna for a trial and return the config fields the space makes of it."""
        if trial_id not in self._ot_trials:
            ot_trial = self._ot_study.ask()
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            self._ot_trials[trial_id] = ot_trial
        return self._space(self._ot_trials[trial_id])

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Report the evaluation to Optuna as an intermediate value at its step."""
        if trial_id in self._completed_trials:
            return
        self._report(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Tell Optuna how the trial ended: COMPLETE, PRUNED or FAIL (see the module docstring)."""
        ot_trial = self._trial(trial_id)
        if trial_id in self._completed_trials or ot_trial is None:
            return
        self._completed_trials.add(trial_id)
        state, values = self._outcome(result, error)
        if state is not TrialState.FAIL:
            self._report(trial_id, result)  # Tune withholds the result that stopped the trial
        try:
            if result is not None:
                ot_trial.set_user_attr("last_step", result.get(STEP_KEY))
            self._ot_study.tell(ot_trial, values, state=state)
        except (ValueError, RuntimeError) as exc:  # e.g. the storage already holds it finished
            logger.warning("could not tell Optuna how trial %s ended: %s", trial_id, exc)

    def _outcome(
        self, result: dict[str, Any] | None, error: bool
    ) -> tuple[TrialState, list[float] | None]:
        """The Optuna state and values for a trial that ended with `result`."""
        if error or not result or result.get("diverged"):
            return TrialState.FAIL, None
        metrics = self._metric if self._multi_objective else [self._metric]
        values = [result.get(name) for name in metrics]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            return TrialState.FAIL, None
        if result.get(STEP_KEY, 0) < self.max_steps:
            return TrialState.PRUNED, None
        return TrialState.COMPLETE, [float(v) for v in values]

    def _report(self, trial_id: str, result: dict[str, Any] | None) -> None:
        # Optuna keeps intermediate values for single-objective studies only.
        ot_trial = self._trial(trial_id)
        if self._multi_objective or not result or ot_trial is None:
            return
        value, step = result.get(self._metric), result.get(STEP_KEY)
        if step is None or step <= self._last_reported.get(trial_id, -1):
            return  # Optuna keeps the first value reported at a step
        if not (isinstance(value, int | float) and math.isfinite(value)):
            return
        try:
            ot_trial.report(float(value), int(step))
        except RuntimeError as exc:  # the storage holds it finished: bookkeeping, not training
            logger.warning("could not report trial %s to Optuna: %s", trial_id, exc)
        self._last_reported[trial_id] = int(step)

    def _trial(self, trial_id: str) -> optuna.Trial | None:
        """The Optuna trial of a Tune trial. One this searcher does not know (its checkpoint is
        older than Tune's state after a crash) is found in the study by its Tune id."""
        if trial_id not in self._ot_trials:
            for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if frozen.user_attrs.get("tune_trial_id") == trial_id:
                    # Optuna's storage id; the trial number is not what Trial() takes.
                    self._ot_trials[trial_id] = optuna.Trial(self._ot_study, frozen._trial_id)
        return self._ot_trials.get(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        """Restore the searcher, keeping told what the study (newer than the checkpoint) says
        is finished: Tune may run such a trial once more from an older state."""
        super().restore(checkpoint_path)
        numbers = {t.number: tid for tid, t in self._ot_trials.items()}
        for trial in self._ot_study.get_trials(deepcopy=False):
            if trial.state != TrialState.RUNNING and trial.number in numbers:
                self._completed_trials.add(numbers[trial.number])
