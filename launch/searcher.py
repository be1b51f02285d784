"""The Tune searcher: hands Tune the study's trials, the unfinished ones first.

The Optuna study decides what runs (docs/design.md). `StudySearcher.suggest` first hands out the
trials the study holds as running (cut short by an interrupt or a crash: each continues from its
newest checkpoint), then asks the study's sampler for new ones until the study holds
`num_samples`. It keeps no state of its own worth saving: a new run of the search builds a new
searcher from the study. Recording what happens to the trials is `launch/recorder.py`'s job.

With `ask_ahead`, the next new trial is asked as soon as one is handed out, behind the study's
writes (launch/study.py), so that Tune's loop finds it ready instead of waiting for the storage.
That is for what does not learn from results: the random sampler, and the plans of the ladder and
the confirmation stage. A sampler that learns (TPE, GP, CMA-ES, NSGA-II) is asked when Tune asks,
after every result told so far. A trial asked ahead when the search stops (a budget, an interrupt)
is in the study unrun: it ends `stopped` with a spent budget, and `--resume` runs it.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import optuna
from ray.tune.search import Searcher

from launch.study import SearchStudy, trial_id_of
from launch.trainable import SETTINGS_KEY

ConfigMaker = Callable[[optuna.Trial], dict[str, Any]]


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


class StudySearcher(Searcher):
    """Suggests the study's unfinished trials, then new ones from its sampler (module docstring).

    `make_config(trial)` samples a trial's full TrainConfig dict; `continuing` are the numbers of
    the trials to continue; `num_samples` is how many trials the study should hold in the end;
    `ask_ahead`: see the module docstring.
    """

    def __init__(
        self,
        study: SearchStudy,
        make_config: ConfigMaker | None,
        *,
        num_samples: int,
        continuing: list[int],
        metric: str,
        ask_ahead: bool = False,
    ):
        super().__init__(metric=metric, mode="min")
        self.study = study
        self.make_config = make_config
        self.num_samples = num_samples
        self.continuing = deque(continuing)
        self.created = study.asked()  # enqueued trials wait for `ask` to run them
        self.ask_ahead = ask_ahead
        self._ahead: tuple[Future, str | None] | None = None

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        """The config of the next trial to run, or FINISHED."""
        if self.continuing:
            number = self.continuing.popleft()
            config, confirms = self.study.config(number), self.study.confirms(number)
        else:
            new = self.new_trial()
            if new is None:
                return Searcher.FINISHED
            number, config, confirms = new
        return {**config, SETTINGS_KEY: {"trial_id": trial_id_of(number), "confirms": confirms}}

    def trials_to_run(self) -> int:
        """How many trials this searcher will hand out (before it has handed out any)."""
        return len(self.continuing) + max(0, self.num_samples - self.created)

    def new_trial(self) -> tuple[int, dict[str, Any], str | None] | None:
        """The next new trial (its number, config and the trial it confirms), the one asked
        ahead if there is one; else None."""
        if self._ahead is not None:
            (asked, confirms), self._ahead = self._ahead, None
            number, config = self.study.take(asked)
        else:
            request = self.next_request()
            if request is None:
                return None
            make_config, confirms = request
            number, config = self.study.ask(make_config, confirms=confirms)
        if self.ask_ahead and (request := self.next_request()) is not None:
            make_config, ahead_confirms = request
            asked = self.study.ask_behind(make_config, confirms=ahead_confirms)
            self._ahead = (asked, ahead_confirms)
        return number, config, confirms

    def next_request(self) -> tuple[ConfigMaker, str | None] | None:
        """How to make the next new trial's config, and the trial it confirms (none): the
        sampler's, until the study holds `num_samples`; else None."""
        if self.created >= self.num_samples:
            return None
        self.created += 1
        return self.make_config, None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        """Nothing to do: the recorder tells the study how trials end."""

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study is the searcher's state, and Tune's copy is never read."""

    def restore(self, checkpoint_path: str) -> None:
        """Never called: a resumed search builds a new searcher from the study."""
        raise NotImplementedError("a resumed search builds a new searcher from the study")


class ConfirmationSearcher(StudySearcher):
    """Suggests the confirmation stage's unfinished trials, then those of `plan` not yet asked:
    (confirmed trial id, config with its fresh seed) pairs (launch/confirm.py). The sampler is
    never asked."""

    def __init__(
        self,
        study: SearchStudy,
        plan: list[tuple[str, dict[str, Any]]],
        *,
        continuing: list[int],
        metric: str,
    ):
        super().__init__(
            study, None, num_samples=0, continuing=continuing, metric=metric, ask_ahead=True
        )
        self.plan = deque(plan)

    def trials_to_run(self) -> int:
        """How many trials this searcher will hand out (before it has handed out any)."""
        return len(self.continuing) + len(self.plan)

    def next_request(self) -> tuple[ConfigMaker, str | None] | None:
        """The plan's next trial, asked as a confirmation of its search trial; else None."""
        if not self.plan:
            return None
        confirms, config = self.plan.popleft()
        return (lambda trial: config), confirms


class LadderSearcher(StudySearcher):
    """Suggests the ladder's unfinished runs, then its planned runs not yet asked
    (launch/ladder.py): the study has asked the plan's first `asked()` runs, in order. The
    sampler is never asked."""

    def __init__(
        self,
        study: SearchStudy,
        plan: list[dict[str, Any]],
        *,
        continuing: list[int],
        metric: str,
    ):
        super().__init__(
            study,
            None,
            num_samples=len(plan),
            continuing=continuing,
            metric=metric,
            ask_ahead=True,
        )
        self.plan = plan

    def next_request(self) -> tuple[ConfigMaker, str | None] | None:
        """The plan's next run, asked as a search trial; else None."""
        if self.created >= self.num_samples:
            return None
        config = self.plan[self.created]
        self.created += 1
        return (lambda trial: config), None
