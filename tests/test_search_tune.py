"""Real (tiny) Ray Tune searches in the shared Ray instance: ASHA, PRUNED trials, divergence,
wandb, retries from checkpoints that reproduce an uninterrupted run, reruns from results, budgets,
and resumes that keep ASHA's records and never unpickle what lies in the experiment folder."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

import search_spaces
from launch.experiment import run_search
from launch.export import build_table
from launch.results import load_trial_config, read_metadata
from launch.settings import SearchSettings
from launch.study import SearchStudy
from pico.data import prepare_data
from pico.train import train

TINY = {
    "arch": "kv_transformer",
    "d_model": 16,
    "n_layer": 1,
    "n_head": 2,
    "batch_size": 8,
    "block_size": 32,
    "warmup_steps": 0,
}
TIMING = ("tokens_per_s", "elapsed_s")


def alternating_space(trial: optuna.Trial) -> dict:
    """Trial 1 diverges (lr 1e3); odd trials barely learn, so ASHA stops them; even ones learn."""
    if trial.number == 1:
        return {**TINY, "lr": 1e3, "min_lr": 0.0}
    lr = 1e-2 if trial.number % 2 == 0 else 1e-6
    return {**TINY, "lr": lr, "min_lr": lr / 10}


def tiny_space(trial: optuna.Trial) -> dict:
    lr = trial.suggest_float("lr", 3e-3, 3e-2, log=True)
    return {**TINY, "lr": lr, "min_lr": lr / 10}


def good_then_poor_space(trial: optuna.Trial) -> dict:
    """The first two trials learn; the later ones barely do."""
    lr = 1e-2 if trial.number < 2 else 1e-6
    return {**TINY, "lr": lr, "min_lr": lr / 10}


@pytest.fixture
def spaces(monkeypatch):
    monkeypatch.setitem(search_spaces.SPACES, "alternating", alternating_space)
    monkeypatch.setitem(search_spaces.SPACES, "tiny", tiny_space)
    monkeypatch.setitem(search_spaces.SPACES, "good_then_poor", good_then_poor_space)


def tiny_settings(tmp_path, **changes) -> SearchSettings:
    values = {
        "space": "tiny",
        "name": "exp",
        "storage": str(tmp_path / "experiments"),
        "num_samples": 2,
        "max_steps": 40,
        "eval_interval": 10,
        "eval_tokens": 256,
        "grace_period": 10,
        "corpus": "3seqs",
        "tokenizer": "char",
        "sampler": "random",
        "max_concurrent": 2,
        "cpus_per_trial": 1,
        "confirm_top": 0,
        "confirm_seeds": 0,
    }
    return SearchSettings(**{**values, **changes})


def last_rows(path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    assert not df.duplicated(["trial_id", "step"]).any()
    return df[df.is_last].set_index("trial_id")


def test_search_with_asha_divergence_and_wandb(ray_session, spaces, tmp_path):
    settings = tiny_settings(tmp_path, space="alternating", num_samples=8, wandb="offline")
    run_search(settings, verbosity=0)
    path = settings.results_path

    last = last_rows(path)
    assert len(last) == 8
    statuses = last.status.value_counts().to_dict()
    assert statuses.get("diverged") == 1 and statuses.get("completed", 0) >= 3, statuses
    assert statuses.get("early_stopped", 0) >= 1, statuses
    assert set(statuses) <= {"completed", "early_stopped", "diverged"}
    stopped = last[last.status == "early_stopped"]
    assert (stopped.step < 40).all() and (stopped.rung >= 1).all()
    assert (last[last.status == "completed"].step == 40).all()
    assert last.checkpoint.map(os.path.isdir).all()
    assert (last.device == "cpu").all() and last.decode_latency_ms.gt(0).all()
    assert last.node_id.str.len().gt(0).all() and last.node.notna().all()
    meta = read_metadata(path)
    assert meta["scheduler"]["name"] == "asha" and meta["ended_at"]

    # The Optuna study, in the experiment's SQLite file, tells the truth about each trial.
    study = SearchStudy.load(settings.study_location, "exp").study
    states = {f"{t.number:05d}": t for t in study.trials}
    for trial_id, row in last.iterrows():
        trial = states[trial_id]
        expected = {
            "completed": TrialState.COMPLETE,
            "early_stopped": TrialState.PRUNED,
            "diverged": TrialState.FAIL,
        }[row.status]
        assert trial.state == expected, (trial_id, row.status)
        assert trial.user_attrs["status"] == row.status
        if row.status == "early_stopped":
            assert max(trial.intermediate_values) == row.step
            assert trial.intermediate_values[row.step] == pytest.approx(row.val_loss)

    runs = list((Path(settings.experiment_path) / "wandb").glob("offline-run-*"))
    assert len(runs) == 8 and all(list(run.glob("*.wandb")) for run in runs)


def test_failed_trials_resume_from_checkpoints_exactly(ray_session, spaces, tmp_path, repo_root):
    settings = tiny_settings(
        tmp_path, scheduler="fifo", max_steps=30, fail_at_step=10, max_failures=1
    )
    run_search(settings, verbosity=0)
    path = settings.results_path
    df = pd.read_parquet(path)
    last = last_rows(path)
    assert list(last.status) == ["completed", "completed"] and list(last.retries) == [1, 1]
    assert sorted(df.step.unique()) == [10, 20, 30] and len(df) == 6

    # An uninterrupted run of the same config gives exactly the same metrics.
    trial_id = last.index[0]
    cfg = load_trial_config(path, trial_id)
    threads = torch.get_num_threads()
    try:
        direct = train(cfg, prepare_data(cfg.corpus, cfg.tokenizer)).metrics
    finally:
        torch.set_num_threads(threads)
    for name, value in direct.items():
        if name in last.columns and name not in TIMING:
            assert last.loc[trial_id, name] == value, name

    # launch/train.py reruns it from the results file, with the same metrics.
    out = tmp_path / "rerun"
    command = [sys.executable, "launch/train.py", "--from-results", str(path), "--trial"]
    run = [*command, trial_id, "--out", str(out), "-q"]
    subprocess.run(run, check=True, timeout=120, cwd=repo_root)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    for name in ("val_loss", "train_loss", "token_accuracy", "val_bpb", "grad_norm"):
        assert summary[name] == last.loc[trial_id, name], name


def test_multi_objective_search_prints_a_pareto_set(ray_session, spaces, tmp_path):
    from launch.summary import summary_lines

    settings = tiny_settings(
        tmp_path, num_samples=4, sampler="nsga2", objectives=["val_loss", "n_params"]
    )
    outcome = run_search(settings, verbosity=0)
    study = SearchStudy.load(settings.study_location, "exp").study
    assert len(study.directions) == 2
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert completed and all(len(t.values) == 2 for t in completed)
    lines = summary_lines(settings, outcome.table)
    assert "Pareto set (completed trials): val_loss, n_params" in lines
    assert read_metadata(settings.results_path)["objectives"][1] == {
        "name": "n_params",
        "direction": "minimize",
    }


def test_a_time_budget_stops_the_search(ray_session, spaces, tmp_path):
    settings = tiny_settings(
        tmp_path, num_samples=50, max_steps=100_000, time_budget_s=20, scheduler="fifo"
    )
    run_search(settings, verbosity=0)
    last = last_rows(settings.results_path)
    assert set(last.status) == {"stopped"}, last.status.value_counts()
    study = SearchStudy.load(settings.study_location, "exp").study
    assert {t.state for t in study.trials} <= {TrialState.PRUNED, TrialState.FAIL}
    assert any(t.state == TrialState.PRUNED for t in study.trials)


def test_a_resumed_search_stops_trials_against_the_records_made_before(
    ray_session, spaces, tmp_path
):
    settings = tiny_settings(tmp_path, space="good_then_poor", num_samples=2, max_concurrent=1)
    run_search(settings, verbosity=0)
    # What an interrupt between trials leaves: two finished trials of four requested. (Changing
    # the stored request is the one way to stop a search between two trials without timing luck.)
    study = SearchStudy.load(settings.study_location, "exp")
    study.study.set_user_attr("settings", {**study.settings, "num_samples": 4})
    resumed = SearchSettings.from_dict({**study.settings, "num_samples": 4})

    outcome = run_search(resumed, resume=True, verbosity=0)
    status = {k: r.status for k, r in outcome.table.trials.items()}
    assert status["00000"] == status["00001"] == "completed"
    # The first trial after the resume meets the records of the two before it at step 10, and
    # loses: a scheduler that forgot them would have let it run (no record, no cutoff).
    assert status["00002"] == status["00003"] == "early_stopped"
    assert outcome.table.trials["00002"].last_step == 10


class Bomb:
    """A pickle that, when loaded, leaves a file behind."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_every_trial_starts_in_turn_though_the_scheduler_chooses_none(ray_session, tmp_path):
    """InOrderScheduler leaves starting trials to Tune's loop (launch/scheduler.py): one at a
    time, with actors reused as a search reuses them, every trial starts, in the order it was
    added, and a failed one is retried."""
    from ray import tune

    from launch.scheduler import InOrderScheduler

    started = tmp_path / "started.txt"

    def trainable(config: dict) -> None:
        with open(started, "a") as log:
            log.write(f"{config['i']}\n")
        failed_once = tmp_path / f"failed-{config['i']}"
        if config["i"] == 2 and not failed_once.exists():
            failed_once.touch()
            raise RuntimeError("the third trial fails once")
        tune.report({"i": config["i"]})

    grid = tune.Tuner(
        trainable,
        param_space={"i": tune.grid_search(list(range(6)))},
        tune_config=tune.TuneConfig(
            scheduler=InOrderScheduler(), max_concurrent_trials=1, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "tune"),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    ).fit()
    assert not grid.errors and sorted(r.metrics["i"] for r in grid) == list(range(6))
    order = [int(line) for line in started.read_text().split()]
    assert sorted(order) == [0, 1, 2, 2, 3, 4, 5]
    assert list(dict.fromkeys(order)) == list(range(6))  # first starts in the order added


def test_resume_never_unpickles_anything_in_the_experiment_folder(ray_session, spaces, tmp_path):
    import shutil

    settings = tiny_settings(tmp_path, num_samples=2, max_concurrent=1, scheduler="fifo")
    run_search(settings, verbosity=0)
    # A third trial the driver had started when it died, and a fourth it never asked for.
    study = SearchStudy.load(settings.study_location, "exp")
    study.study.set_user_attr("settings", {**study.settings, "num_samples": 4})
    resumed = SearchSettings.from_dict({**study.settings, "num_samples": 4})
    study.ask(lambda trial: {**settings.fixed_fields(), **tiny_space(trial)})
    folder = Path(settings.experiment_path)
    [step] = sorted((folder / "trials" / "00000" / "checkpoints").glob("step-*"))[-1:]
    checkpoint = folder / "trials" / "00002" / "checkpoints" / "step-000000010"
    shutil.copytree(step, checkpoint)
    # Crafted pickles wherever a Tune or Pico version ever kept state, and in that checkpoint.
    marker = tmp_path / "marker"
    bomb = pickle.dumps(Bomb(marker))
    for name in (
        "tuner.pkl",
        "searcher-state-0.pkl",
        "search_gen_state-0.json",
        "experiment_state-0.json",
        "pico/tuner.pkl",
        "trials/00000/params.pkl",
    ):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(bomb)  # fmt: skip
    (checkpoint / "trainer.pt").write_bytes(bomb)

    outcome = run_search(resumed, resume=True, verbosity=0)
    assert not marker.exists()
    trials = outcome.table.trials
    assert trials["00002"].status == "errored"  # torch refused the checkpoint's pickle
    assert "a safe load refuses" in trials["00002"].error, trials["00002"].error
    assert trials["00003"].status == "completed" and outcome.ended


def test_the_results_file_is_a_function_of_the_study_and_the_trial_folders(
    ray_session, spaces, tmp_path
):
    import pyarrow.parquet as pq

    settings = tiny_settings(tmp_path, space="alternating", num_samples=4)
    run_search(settings, verbosity=0)
    rebuilt = build_table(SearchStudy.load(settings.study_location, "exp"), settings.store())
    live, derived = pq.read_table(settings.results_path), rebuilt.to_arrow()
    assert live.schema.equals(derived.schema, check_metadata=True)
    assert live.to_pandas().equals(derived.to_pandas())  # NaN (the diverged trial) equals NaN
