"""A Tune callback that keeps the results Parquet file up to date while the search runs.

Every result, checkpoint, retry and ending updates the trial's record; the file is rewritten
atomically at most every `min_interval_s` seconds, and at once when a trial ends and when the
experiment does. A crash therefore leaves the last good file, and a resumed search starts from
it: the first step reloads its trials and aligns them with those Tune restored, and a trial
re-reporting steps after a retry replaces its rows from that step on, so every trial appears
exactly once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from launch.results import ResultsTable, TrialRecord
from launch.trainable import trial_config

logger = logging.getLogger(__name__)

# Endings that a later error cannot undo: the trial had reported its last evaluation.
ENDED = ("completed", "early_stopped", "diverged")


def asha_milestones(grace_period: int, max_t: int, reduction_factor: float) -> list[float]:
    """The steps at which ASHA compares trials: Ray's formula for its single bracket."""
    n_rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(n_rungs)]


def final_status(result: dict[str, Any], max_steps: int) -> str:
    """How a trial that Tune reports as finished ended, from its last result.

    Tune marks a result `done` when the trial's function returned or when the scheduler decided
    to stop it there; a trial stopped from outside (time budget, interrupt) has no such mark.
    """
    if result.get("diverged"):
        return "diverged"
    if result.get("step", 0) >= max_steps:
        return "completed"
    return "early_stopped" if result.get("done") else "stopped"


def logged_results(trial: Trial) -> list[dict[str, Any]]:
    """The evaluations Tune logged for `trial` (its `result.json`), oldest first."""
    folders = [getattr(trial, "local_path", None), getattr(trial, "path", None)]
    for folder in filter(None, folders):
        path = Path(folder) / "result.json"
        if path.is_file():
            lines = path.read_text().splitlines()
            results = []
            for line in lines:
                with contextlib.suppress(json.JSONDecodeError):  # a line cut by a crash
                    results.append(json.loads(line))
            return [r for r in results if isinstance(r, dict) and "step" in r]
    return []


def utc_now() -> str:
    """The current time, ISO 8601 in UTC."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class ResultsExporter(Callback):
    """Feeds a `ResultsTable` from Tune's events and writes it (see the module docstring)."""

    def __init__(
        self,
        table: ResultsTable,
        max_steps: int,
        milestones: list[float] | None = None,
        min_interval_s: float = 2.0,
        budgets: tuple[float | None, float | None] = (None, None),
    ):
        self.table = table
        self.max_steps = max_steps
        self.milestones = milestones or []
        self.min_interval_s = min_interval_s
        self.time_budget_s, self.compute_budget = budgets
        self._started = math.inf
        self._loaded = False
        self._stopping: set[str] = set()
        self._dirty = False
        self._last_write = -math.inf  # the first result is written at once

    def _record(self, trial: Trial) -> TrialRecord:
        return self.table.trial(trial.trial_id, trial_config(trial.config).to_dict())

    def _write(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_write < self.min_interval_s:
            self._dirty = True
            return
        try:
            self.table.write()
        except OSError as exc:  # a full disk must not stop the search; the old file stays
            logger.warning("could not write %s: %s", self.table.path, exc)
        self._dirty, self._last_write = False, time.monotonic()

    def setup(self, **info: Any) -> None:
        self._started = time.monotonic()

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if not self._loaded:  # first step: a resumed search continues from the last file
            self._loaded = True
            self.table.load()
            self._keep_untracked({t.trial_id for t in trials})
            for trial in trials:
                self._reconcile(trial)

    def _keep_untracked(self, known: set[str]) -> None:
        """Keep the trials that Tune's restored state does not know, and say which they are.

        Tune saves its state every few seconds, and this file is written as results arrive, so a
        driver killed in between leaves trials here (and in the Optuna study) that Tune never
        recorded. Tune will not continue them: it samples new trials in their place. Their
        evaluations are real, so they stay, listed in the metadata; one that was running is
        `lost`, its curve ending where the crash cut it.
        """
        untracked = sorted(set(self.table.trials) - known)
        for trial_id in untracked:
            record = self.table.trials[trial_id]
            if record.status == "running":
                record.status = "lost"
        self.table.metadata["untracked_trials"] = untracked

    def _reconcile(self, trial: Trial) -> None:
        """Align a restored trial's record with the state Tune restored it in, and recover the
        evaluations it reported after the file was last written (from Tune's log of results:
        the trial resumes from a checkpoint past them, so it will not report them again)."""
        logged = logged_results(trial)
        if trial.trial_id not in self.table.trials and not logged:
            return
        record = self._record(trial)
        for result in logged:
            record.backfill(result)
        if trial.status == Trial.ERROR:
            record.status = "errored"
        elif trial.status == Trial.TERMINATED and record.status == "running":
            record.status = final_status(trial.last_result, self.max_steps)
        elif trial.last_result.get("done"):
            # Stopped by ASHA just before the interrupt, before Tune carried the stop out: Tune
            # runs it once more from its checkpoint, then carries out the stop it remembers.
            self._stopping.add(trial.trial_id)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if self._dirty:
            self._write()

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result, **info):
        record = self._record(trial)
        record.add_eval(result)
        # A result Tune marks done is the trial's last: record how it ended at once.
        done = bool(result.get("done"))
        ended = done or result.get("diverged")
        record.status = final_status(result, self.max_steps) if ended else "running"
        record.rung = sum(1 for m in self.milestones if record.last_step >= m)
        record.node = result.get("node_ip", record.node)
        record.node_id = result.get("node_id", record.node_id)
        record.device = result.get("device", record.device)
        record.decode_latency_ms = result.get("decode_latency_ms", record.decode_latency_ms)
        record.retries = trial.num_failures
        self._write(force=done)

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint, **info):
        fs = checkpoint.filesystem.type_name
        path = checkpoint.path if fs == "local" else f"{fs}://{checkpoint.path}"
        self._record(trial).checkpoint = path
        self._dirty = True

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info):
        self._record(trial).retries = trial.num_failures

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info):
        record = self._record(trial)
        record.status = final_status(trial.last_result, self.max_steps)
        if record.status == "stopped" and trial.trial_id in self._stopping:
            record.status = "early_stopped"
        self._write(force=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info):
        record = self._record(trial)
        if record.status in ENDED:
            # It ended before a crash that Tune's saved state predates, so Tune ran it again from
            # an older checkpoint, which may be gone. The first ending stands.
            logger.warning("trial %s ended as %s before it failed again", trial, record.status)
            return
        record.status, record.retries = "errored", trial.num_failures
        record.error = _last_line(trial.get_error() or "") or "error (no message)"
        self._write(force=True)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # A budget stops the trials still running without telling callbacks; an interrupt
        # leaves them running too, but they continue on --resume, so they stay "running".
        if self._budget_spent():
            for trial in trials:
                record = self.table.trials.get(trial.trial_id)
                if record is not None and record.status == "running":
                    record.status = final_status(trial.last_result, self.max_steps)
        self.table.metadata["ended_at"] = utc_now()
        self._write(force=True)

    def _budget_spent(self) -> bool:
        """Whether the time or compute budget (if any) has run out."""
        # Tune's clock starts a moment before ours: allow for it.
        elapsed = time.monotonic() - self._started
        if self.time_budget_s is not None and elapsed >= 0.95 * self.time_budget_s:
            return True
        flops = sum(
            max(r["train_flops"] or 0 for r in t.evals.values())
            for t in self.table.trials.values()
            if t.evals
        )
        return self.compute_budget is not None and flops >= self.compute_budget


def _last_line(text: str) -> str:
    """The last non-empty line of a traceback: the exception and its message."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""
