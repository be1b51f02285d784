"""Weights & Biases tracking: one wandb run per trial, grouped by experiment, from the driver.

The runs live in the driver (`reinit="create_new"` keeps one per live trial), so trials need no
wandb of their own and a retried or resumed trial continues the same run (its id is derived from
the trial id). The API key comes only from the environment (WANDB_API_KEY or `wandb login`).
wandb is optional: the first failure logs one warning and turns tracking off; the search goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from launch import status
from launch.results import METRIC_NAMES
from launch.trainable import pico_trial_id, trial_config

logger = logging.getLogger(__name__)

# Per-evaluation fields logged besides the metrics.
EXTRA_FIELDS = ("diverged", "decode_latency_ms")


class WandbTracker(Callback):
    """Mirror every trial into wandb: config at start, metrics at each evaluation, summary."""

    def __init__(self, mode: str, experiment: str, project: str = "pico", folder: str = "."):
        self.mode = mode
        self.experiment = experiment
        self.project = project
        self.folder = folder
        self.failed = False
        self._runs: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment; live runs stay in this process.
        return {**self.__dict__, "_runs": {}}

    def _guard(self, what: str, fn, *args: Any) -> Any:
        """Call fn; on any failure warn once and stop tracking."""
        if self.failed:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # wandb may fail in many ways; none may stop the search
            self.failed = True
            logger.warning("wandb %s failed, tracking is off for this search: %s", what, exc)
            return None

    def _run(self, trial: Trial) -> Any:
        trial_id = pico_trial_id(trial.config)
        if trial_id not in self._runs:
            self._runs[trial_id] = self._guard("init", self._init, trial)
        return self._runs[trial_id]

    def _init(self, trial: Trial) -> Any:
        import wandb

        Path(self.folder).mkdir(parents=True, exist_ok=True)
        cfg = trial_config(trial.config)
        trial_id = pico_trial_id(trial.config)
        return wandb.init(
            project=self.project,
            group=self.experiment,
            name=f"{cfg.arch}-{trial_id}",
            id=f"{self.experiment}-{trial_id}".replace("/", "-")[-64:],
            resume="allow",
            reinit="create_new",
            config={**cfg.to_dict(), "trial_id": trial_id, "fingerprint": cfg.fingerprint()},
            dir=self.folder,
            mode=self.mode,
            job_type="trial",
        )

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self._run(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result, **info):
        run = self._run(trial)
        if run is not None:
            values = {k: result[k] for k in (*METRIC_NAMES, *EXTRA_FIELDS) if k in result}
            self._guard("log", run.log, values, int(result.get("step", 0)))

    def _finish(self, trial: Trial, outcome: str) -> None:
        run = self._runs.pop(pico_trial_id(trial.config), None)
        if run is None:
            return
        summary = {k: v for k, v in trial.last_result.items() if k in METRIC_NAMES}
        self._guard("summary", run.summary.update, {**summary, "status": outcome})
        self._guard("finish", run.finish, 1 if outcome == status.ERRORED else 0)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        max_steps = trial_config(trial.config).max_steps
        self._finish(trial, status.ending(trial.last_result, max_steps))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self._finish(trial, status.ERRORED)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        for trial in trials:  # trials a budget or an interrupt left unfinished
            self._finish(trial, status.RUNNING)
