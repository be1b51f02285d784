"""The Tune callbacks and stopper on their own, fed the events Tune would send."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pyarrow.parquet as pq
from ray.tune.experiment import Trial

from launch.experiment import ComputeBudget
from launch.export import ResultsExporter
from launch.results import ResultsTable, read_trials
from launch.tracking import WandbTracker
from pico.config import TrainConfig

MAX_STEPS = 40


def fake_trial(trial_id: str, status: str = Trial.RUNNING, **last) -> SimpleNamespace:
    config = {**TrainConfig(arch="lstm").to_dict(), "_pico": {"data_dir": "/x"}}
    return SimpleNamespace(
        trial_id=trial_id, config=config, status=status, last_result=last, num_failures=0
    )


def result(step: int, **extra) -> dict:
    return {"step": step, "val_loss": 3.0 - step / 100, "train_flops": 1e9 * step, **extra}


def exporter(tmp_path) -> ResultsExporter:
    table = ResultsTable(tmp_path / "results.parquet", "exp", {})
    return ResultsExporter(table, MAX_STEPS, milestones=[10, 20, 40], min_interval_s=3600)


def statuses(path) -> dict[str, str]:
    return {r.trial_id: r.status for r in read_trials(path)}


def test_exporter_records_how_each_trial_ends(tmp_path):
    export = exporter(tmp_path)
    a, b = fake_trial("a"), fake_trial("b")
    export.on_step_begin(0, [a, b])
    export.on_trial_result(0, [], a, result(10))  # the first result is written at once
    export.on_trial_result(0, [], b, result(10))  # the next waits (min_interval_s)
    assert statuses(export.table.path) == {"a": "running"}
    export.on_trial_result(0, [], b, result(20, done=True))  # ASHA stops b at its second rung
    assert statuses(export.table.path) == {"a": "running", "b": "early_stopped"}
    assert export.table.trials["b"].rung == 2
    export.on_trial_result(0, [], a, result(40, done=True))
    a.last_result = result(40, done=True)
    export.on_trial_complete(0, [], a)
    assert statuses(export.table.path) == {"a": "completed", "b": "early_stopped"}
    rows = pq.read_table(export.table.path).to_pandas()
    assert list(rows.step) == [10, 40, 10, 20]


def test_a_resumed_exporter_reconciles_with_the_restored_trials(tmp_path):
    first = exporter(tmp_path)
    for name in "abcd":
        first.on_trial_result(0, [], fake_trial(name), result(10))
    first._write(force=True)  # what an interrupted search leaves: four running trials

    resumed = exporter(tmp_path)
    restored = [
        fake_trial("a", Trial.TERMINATED, **result(20, done=True)),
        fake_trial("b", Trial.PENDING, **result(10)),
        fake_trial("c", Trial.PENDING, **result(10, done=True)),  # a stop Tune had not done
        fake_trial("e", Trial.PENDING, **result(10)),  # reported after the file's last write
        # "d" is unknown to Tune: it started after Tune last saved its state
    ]
    # Tune's own log of results: what the file missed is recovered from it.
    for trial, steps in zip(restored, ([10, 20], [10], [10], [10]), strict=True):
        trial.local_path = tmp_path / trial.trial_id
        trial.local_path.mkdir()
        lines = [json.dumps(result(step)) for step in steps]
        (trial.local_path / "result.json").write_text("\n".join(lines) + "\n{cut")
    resumed.on_step_begin(0, restored)
    assert {k: r.status for k, r in resumed.table.trials.items()} == {
        "a": "early_stopped",
        "b": "running",
        "c": "running",
        "d": "lost",  # kept, with its evaluations: Tune will not continue it
        "e": "running",
    }
    assert resumed.table.metadata["untracked_trials"] == ["d"]
    assert sorted(resumed.table.trials["d"].evals) == [10]
    assert sorted(resumed.table.trials["a"].evals) == [10, 20]
    assert sorted(resumed.table.trials["e"].evals) == [10]
    c = restored[2]
    resumed.on_trial_result(0, [], c, result(10))  # rerun from scratch, then stopped by Tune
    c.last_result = result(10)
    resumed.on_trial_complete(0, [], c)
    assert resumed.table.trials["c"].status == "early_stopped"


def test_wandb_failure_warns_once_and_never_raises(tmp_path, monkeypatch, caplog):
    import wandb

    calls = []

    def broken_init(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    tracker = WandbTracker("online", "exp", folder=str(tmp_path))
    trial = fake_trial("a", **result(10))
    with caplog.at_level(logging.WARNING):
        tracker.on_trial_start(0, [], trial)
        tracker.on_trial_result(0, [], trial, result(10))
        tracker.on_trial_start(0, [], fake_trial("b"))
        tracker.on_trial_complete(0, [], trial)
    assert len(calls) == 1 and tracker.failed
    assert sum("wandb" in r.getMessage() for r in caplog.records) == 1


def test_compute_budget_stops_once_spent():
    stop = ComputeBudget(5e10)
    assert not stop("a", result(20)) and not stop.stop_all()
    stop("b", result(20))
    stop("a", result(30))  # a trial's latest count replaces its earlier one
    assert stop.spent == {"a": 3e10, "b": 2e10} and stop.stop_all()


def test_an_errored_trial_keeps_its_error_line(tmp_path):
    export = exporter(tmp_path)
    trial = fake_trial("a")
    trial.num_failures = 3
    trial.get_error = lambda: "Traceback (most recent call last):\n  ...\nValueError: boom\n"
    export.on_trial_error(0, [], trial)  # failed before its first evaluation
    (record,) = read_trials(export.table.path)
    assert (record.status, record.error, record.retries) == ("errored", "ValueError: boom", 3)
    assert record.evals == {}


def test_a_trial_that_ended_before_a_crash_keeps_its_ending(tmp_path):
    first = exporter(tmp_path)
    trial = fake_trial("a")
    first.on_trial_result(0, [], trial, result(MAX_STEPS, done=True))
    assert statuses(first.table.path) == {"a": "completed"}

    # Tune's saved state predates the ending: it reruns the trial, whose checkpoint is gone.
    resumed = exporter(tmp_path)
    restored = fake_trial("a", Trial.PENDING, **result(20))
    restored.num_failures = 3
    restored.get_error = lambda: "ValueError: Could not recover from checkpoint"
    resumed.on_step_begin(0, [restored])
    resumed.on_trial_error(0, [], restored)
    resumed.on_experiment_end([restored])
    (record,) = read_trials(resumed.table.path)
    assert (record.status, record.error, record.retries) == ("completed", None, 0)
    assert record.last_step == MAX_STEPS
