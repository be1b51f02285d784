"""The one vocabulary for how a trial stands, and its mapping to Optuna's and Tune's.

The Optuna study is the record of every trial (docs/design.md). Optuna has four states for a
trial that Pico tells apart more finely, so the Pico status of a finished trial is kept beside
Optuna's state as the user attribute `status`; `status_of` reads it back. Nothing else in Pico
decides what a trial's status is.

| Pico status | Optuna state | meaning |
| --- | --- | --- |
| running | RUNNING | training, or cut short by an interrupt or a crash: `--resume` continues it |
| completed | COMPLETE | ran to `max_steps` |
| early_stopped | PRUNED | stopped by ASHA at a rung |
| stopped | PRUNED | ended before `max_steps` by the time or compute budget |
| diverged | FAIL | its loss became NaN or infinite |
| errored | FAIL | raised after every retry |
"""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial, TrialState

RUNNING = "running"
COMPLETED = "completed"
EARLY_STOPPED = "early_stopped"
STOPPED = "stopped"
DIVERGED = "diverged"
ERRORED = "errored"

STATUSES = (COMPLETED, EARLY_STOPPED, STOPPED, ERRORED, DIVERGED, RUNNING)
ENDED = frozenset({COMPLETED, EARLY_STOPPED, STOPPED, DIVERGED, ERRORED})
OPTUNA_STATE = {
    RUNNING: TrialState.RUNNING,
    COMPLETED: TrialState.COMPLETE,
    EARLY_STOPPED: TrialState.PRUNED,
    STOPPED: TrialState.PRUNED,
    DIVERGED: TrialState.FAIL,
    ERRORED: TrialState.FAIL,
}
# A trial finished by another tool (optuna-dashboard, a script) has no Pico status attribute.
_FROM_OPTUNA = {
    TrialState.RUNNING: RUNNING,
    TrialState.WAITING: RUNNING,
    TrialState.COMPLETE: COMPLETED,
    TrialState.PRUNED: EARLY_STOPPED,
    TrialState.FAIL: ERRORED,
}
STATUS_ATTR = "status"


def status_of(trial: FrozenTrial) -> str:
    """The Pico status of a study trial."""
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        return RUNNING
    return trial.user_attrs.get(STATUS_ATTR) or _FROM_OPTUNA[trial.state]


def ending(result: dict[str, Any] | None, max_steps: int) -> str:
    """How a trial that Tune reports finished (its function returned, or ASHA stopped it) ended,
    from its last result."""
    if not result or result.get("diverged"):
        return DIVERGED if result else ERRORED
    return COMPLETED if result.get("step", 0) >= max_steps else EARLY_STOPPED
