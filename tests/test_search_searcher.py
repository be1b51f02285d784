"""The searcher tells Optuna the truth: early-stopped trials are PRUNED with their curves."""

from __future__ import annotations

import pickle

import optuna
import pytest
from optuna.trial import TrialState

from launch.searcher import PicoOptunaSearch, make_sampler
from launch.settings import SAMPLERS
from search_spaces import get_space

MAX_STEPS = 40


def searcher(**kwargs) -> PicoOptunaSearch:
    return PicoOptunaSearch(
        get_space("kv_transformer"),
        metric=kwargs.pop("metric", "val_loss"),
        mode=kwargs.pop("mode", "min"),
        max_steps=MAX_STEPS,
        sampler=optuna.samplers.RandomSampler(seed=0),
        **kwargs,
    )


def run(search: PicoOptunaSearch, trial_id: str, losses: list[float], **last) -> dict:
    """Suggest, report every evaluation but the last, and return the last result: the one Tune
    withholds from the searcher when the scheduler stops the trial there."""
    config = search.suggest(trial_id)
    assert config["arch"] == "kv_transformer" and "lr" in config
    results = [
        {"step": 10 * (i + 1), "val_loss": loss, "n_params": 1000} for i, loss in enumerate(losses)
    ]
    for result in results[:-1]:
        search.on_trial_result(trial_id, result)
    return {**results[-1], **last}


def test_completed_pruned_diverged_and_errored_trials():
    search = searcher()
    completed = run(search, "a", [3.0, 2.5, 2.2, 2.0])
    stopped = run(search, "b", [3.5, 3.2], done=True)  # ASHA stopped it at step 20
    diverged = run(search, "c", [3.0, float("nan")], diverged=True)
    run(search, "d", [3.0])
    search.on_trial_complete("a", completed)
    search.on_trial_complete("b", stopped)
    search.on_trial_complete("c", diverged)
    search.on_trial_complete("d", error=True)
    trials = {t.user_attrs["tune_trial_id"]: t for t in search.study.trials}

    assert trials["a"].state == TrialState.COMPLETE and trials["a"].value == 2.0
    assert trials["a"].intermediate_values == {10: 3.0, 20: 2.5, 30: 2.2, 40: 2.0}
    # The early-stopped trial: PRUNED, its whole curve reported (the stopping result included),
    # its value the last intermediate one -- not COMPLETE as Ray's OptunaSearch would tell it.
    assert trials["b"].state == TrialState.PRUNED
    assert trials["b"].intermediate_values == {10: 3.5, 20: 3.2}
    assert trials["b"].value == 3.2 and trials["b"].user_attrs["last_step"] == 20
    assert trials["c"].state == TrialState.FAIL
    assert trials["c"].intermediate_values == {10: 3.0}  # NaN is never reported
    assert trials["d"].state == TrialState.FAIL

    search.on_trial_complete("a", completed)  # a second completion changes nothing
    assert search.study.trials[0].state == TrialState.COMPLETE


def test_multi_objective_values_and_pruning():
    search = searcher(metric=["val_loss", "n_params"], mode=["min", "min"])
    search.on_trial_complete("a", run(search, "a", [3.0, 2.0, 1.9, 1.8]))
    search.on_trial_complete("b", run(search, "b", [3.0], done=True))
    a, b = search.study.trials
    assert a.state == TrialState.COMPLETE and a.values == [1.8, 1000.0]
    assert b.state == TrialState.PRUNED


def test_warm_start_points_are_enqueued():
    from search_spaces import NAMED_CONFIGS, warm_start_points

    search = searcher(points_to_evaluate=warm_start_points("kv_transformer"))
    first = search.suggest("x")
    expected = next(c for c in NAMED_CONFIGS.values() if c["arch"] == "kv_transformer")
    assert first == expected


def test_restore_reconciles_with_a_newer_study(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    search = searcher(storage=storage, study_name="exp")
    search.suggest("a")
    search.suggest("c")
    search.save(str(tmp_path / "searcher.pkl"))
    search.suggest("b")  # asked, then the driver died before the next checkpoint
    search.on_trial_complete("c", run(search, "c", [3.0, 2.5], done=True))  # told, likewise
    restored = pickle.loads(pickle.dumps(searcher(storage=storage, study_name="exp")))
    restored.restore(str(tmp_path / "searcher.pkl"))
    states = [t.state for t in restored.study.trials]
    assert states == [TrialState.RUNNING, TrialState.PRUNED, TrialState.RUNNING]
    # Tune runs "c" once more from its older state: Optuna keeps what it was told.
    restored.on_trial_result("c", {"step": 30, "val_loss": 2.0})
    restored.on_trial_complete("c", {"step": 40, "val_loss": 1.9})
    # Tune's state knew "b" (newer than the searcher's checkpoint): found by its Tune id.
    restored.on_trial_result("b", {"step": 10, "val_loss": 2.5})
    restored.on_trial_complete("b", {"step": 40, "val_loss": 1.5})
    restored.on_trial_complete("a", run(restored, "a", [2.0, 1.9, 1.8, 1.7]))
    a, c, b = restored.study.trials
    assert (a.state, b.state, c.state) == (TrialState.COMPLETE,) * 2 + (TrialState.PRUNED,)
    assert b.intermediate_values == {10: 2.5, 40: 1.5} and b.value == 1.5


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_samples_the_all_space(name):
    if name == "cmaes":
        pytest.importorskip("cmaes")
    n_obj = 2 if name == "nsga2" else 1
    study = optuna.create_study(
        sampler=make_sampler(name, seed=0, n_objectives=n_obj), directions=["minimize"] * n_obj
    )
    space = get_space("all")
    for i in range(10):
        trial = study.ask()
        space(trial)
        study.tell(trial, [float(i)] * n_obj if n_obj > 1 else float(i))
    assert len(study.trials) == 10
