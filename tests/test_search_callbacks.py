"""The Tune callbacks, stopper and scheduler on their own, fed the events Tune would send, with a
real study in its journal file."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from launch.experiment import ComputeBudget
from launch.export import ResultsWriter
from launch.recorder import Recorder
from launch.results import ResultsTable
from launch.scheduler import StudyASHA, linear_percentile
from launch.settings import SearchSettings
from launch.study import SearchStudy
from launch.tracking import WandbTracker
from pico.config import TrainConfig

MAX_STEPS = 40


def make_study(tmp_path, trials: int = 0) -> SearchStudy:
    """A study holding `trials` running trials."""
    settings = SearchSettings(name="exp", storage=str(tmp_path), max_steps=MAX_STEPS)
    (tmp_path / "exp").mkdir(exist_ok=True)
    study = SearchStudy.create(settings.study_location, "exp", ["minimize"], settings.to_dict(), {})
    for _ in range(trials):
        study.ask(lambda trial: TrainConfig(arch="lstm").to_dict())
    return study


def fake_trial(trial_id: str, **last) -> SimpleNamespace:
    config = {
        **TrainConfig(arch="lstm", max_steps=MAX_STEPS).to_dict(),
        "_pico": {"trial_id": trial_id},
    }
    return SimpleNamespace(trial_id=f"tune_{trial_id}", config=config, last_result=last)


def result(step: int, **extra) -> dict:
    return {"step": step, "val_loss": 3.0 - step / 100, "train_flops": 1e9 * step, **extra}


@pytest.fixture
def recorded(tmp_path):
    """A recorder over a study of four running trials, its writer closed at the end."""
    study = make_study(tmp_path, trials=4)
    writer = ResultsWriter(ResultsTable("exp", {}), str(tmp_path / "results.parquet"))
    yield study, Recorder(study, writer, metrics=["val_loss"], milestones=[10, 20, 40])
    writer.close()


def test_the_recorder_tells_the_study_how_each_trial_ends(recorded):
    study, recorder = recorded
    a, b, c, d = (fake_trial(f"0000{i}") for i in range(4))
    for trial in (a, b, c, d):
        recorder.on_trial_result(0, [], trial, result(10))
    recorder.on_trial_result(0, [], b, result(20, done=True))  # ASHA stops b at its second rung
    recorder.on_trial_complete(0, [], b)  # then Tune completes it: nothing more to tell
    recorder.on_trial_result(0, [], a, result(40))
    a.last_result = result(40, done=True)
    recorder.on_trial_complete(0, [], a)
    recorder.on_trial_result(0, [], c, result(20, diverged=True))
    d.num_failures, d.last_result = 3, result(10)
    d.get_error = lambda: "Traceback (most recent call last):\n  ...\nValueError: boom\n"
    recorder.on_trial_error(0, [], d)

    trials = study.trials()
    assert [t.user_attrs["status"] for t in trials] == [
        "completed", "early_stopped", "diverged", "errored"
    ]  # fmt: skip
    assert [t.state for t in trials] == [
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL
    ]  # fmt: skip
    assert trials[0].value == pytest.approx(2.6)
    assert trials[1].intermediate_values == {10: 2.9, 20: 2.8}
    assert [t.user_attrs["last_step"] for t in trials] == [40, 20, 20, 10]
    assert trials[3].user_attrs["error"] == "ValueError: boom"
    assert trials[3].user_attrs["retries"] == 3
    # The live table says the same.
    table = recorder.writer.table
    assert {k: r.status for k, r in table.trials.items()} == {
        "00000": "completed", "00001": "early_stopped", "00002": "diverged", "00003": "errored"
    }  # fmt: skip
    assert table.trials["00001"].rung == 2 and table.trials["00003"].error == "ValueError: boom"


def test_an_interrupted_trial_stays_running_in_the_study(recorded):
    study, recorder = recorded
    recorder.on_trial_result(0, [], fake_trial("00000"), result(10))
    # Tune ends the run on Ctrl+C without telling callbacks: the trial is left to resume.
    assert study.trials()[0].state == TrialState.RUNNING
    assert recorder.writer.table.trials["00000"].status == "running"


def test_asha_starts_from_the_records_in_the_study(tmp_path):
    study = make_study(tmp_path, trials=6)
    asha = StudyASHA(study, metric="val_loss", time_attr="step", max_t=40, grace_period=10,
                     reduction_factor=2)  # fmt: skip
    for trial_id, loss in zip(
        ["00000", "00001", "00002", "00003"], [1.0, 1.1, 1.2, 5.0], strict=True
    ):
        asha.decide(trial_id, 10, loss)
    assert asha.decide("00003", 20, 0.5) == TrialScheduler.CONTINUE  # first at rung 20

    # A new run (after an interrupt) reads the records back: a poor trial is stopped at once.
    resumed = StudyASHA(study, metric="val_loss", time_attr="step", max_t=40, grace_period=10,
                        reduction_factor=2)  # fmt: skip
    assert resumed.records == asha.records
    assert resumed.decide("00004", 10, 3.0) == TrialScheduler.STOP
    assert resumed.decide("00005", 10, 1.05) == TrialScheduler.CONTINUE
    # A trial recorded at its highest rung before the interrupt is not judged there again.
    assert resumed.decide("00003", 30, 9.9) == TrialScheduler.CONTINUE


def test_asha_cutoffs_are_numpys_percentiles_to_the_last_bit():
    """The sorted records give what `np.nanpercentile` over them gives (Ray's ASHA's cutoff),
    bit for bit, for the reduction factors a search takes."""
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 7, 100, 1001):
        values = sorted(rng.lognormal(size=size).tolist())
        for factor in (1.5, 2, 3, 4, 7):
            expected = float(np.nanpercentile(values, 100 / factor))
            assert linear_percentile(values, 100 / factor) == expected


def test_wandb_failure_warns_once_and_never_raises(tmp_path, monkeypatch, caplog):
    import wandb

    calls = []

    def broken_init(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    tracker = WandbTracker("online", "exp", folder=str(tmp_path))
    trial = fake_trial("00000", **result(10))
    with caplog.at_level(logging.WARNING):
        tracker.on_trial_start(0, [], trial)
        tracker.on_trial_result(0, [], trial, result(10))
        tracker.on_trial_start(0, [], fake_trial("00001"))
        tracker.on_trial_complete(0, [], trial)
    assert len(calls) == 1 and tracker.failed
    assert sum("wandb" in r.getMessage() for r in caplog.records) == 1


def test_compute_budget_counts_each_trial_once_across_runs():
    def of(trial_id: str, step: int) -> dict:
        return {**result(step), "config": {"_pico": {"trial_id": trial_id}}}

    stop = ComputeBudget(6e10, spent={"a": 2e10})  # trial a used 2e10 before an interrupt
    assert not stop("t1", of("b", 20)) and not stop.stop_all()
    stop("t2", of("a", 10))  # a continues from an older checkpoint: its count does not drop
    assert stop.spent == {"a": 2e10, "b": 2e10} and not stop.stop_all()
    stop("t2", of("a", 40))
    assert stop.spent == {"a": 4e10, "b": 2e10} and stop.stop_all()
