"""The confirmation stage: which search trials it reruns, with which seeds, and a real (tiny)
search whose confirmation trials land in the same study and results file, marked, each run to
the full length, and continued rather than repeated by a resume."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
from ray.tune.search import Searcher

import search_spaces
from launch.confirm import chosen_trials, confirmation_plan, confirmation_seeds
from launch.experiment import run_search
from launch.export import build_table
from launch.results import ResultsTable
from launch.searcher import ConfirmationSearcher, StudySearcher, make_sampler
from launch.settings import SearchSettings
from launch.study import CONFIRM, SEARCH, SearchStudy, phase_of
from pico.errors import PicoError

TINY_TF = {"arch": "kv_transformer", "d_model": 16, "n_layer": 1, "n_head": 2}
TINY_LSTM = {"arch": "lstm", "d_model": 16, "n_layer": 1, "hidden_size": 16}
SHAPE = {"batch_size": 8, "block_size": 32, "warmup_steps": 0}


def record(table: ResultsTable, trial_id: str, arch: str, status: str, step: int, loss: float):
    entry = table.trial(trial_id, {"arch": arch, "lr": 0.01, "seed": 0})
    entry.status = status
    entry.add_eval({"step": step, "val_loss": loss})


def test_the_best_trials_of_each_architecture_are_chosen_full_runs_first():
    table = ResultsTable("exp", {})
    record(table, "00000", "lstm", "completed", 40, 2.0)
    record(table, "00001", "lstm", "early_stopped", 20, 1.0)  # lower, but a shorter run
    record(table, "00002", "lstm", "completed", 40, 1.5)
    record(table, "00003", "lstm", "errored", 40, 0.5)  # never confirmed
    record(table, "00004", "kv_transformer", "diverged", 40, 0.1)
    record(table, "00005", "kv_transformer", "early_stopped", 20, 1.2)
    assert [r.trial_id for r in chosen_trials(table, 2)] == ["00005", "00002", "00000"]
    assert [r.trial_id for r in chosen_trials(table, 1)] == ["00005", "00002"]

    seeds = confirmation_seeds(0, 3)
    assert seeds == [1, 2, 3]  # fresh: the search trained with seed 0
    plan = confirmation_plan(table, 1, seeds, asked={("00002", 1)})
    # Seed by seed, every chosen config with the same seeds; what was asked is not asked again.
    assert [(trial, config["seed"]) for trial, config in plan] == [
        ("00005", 1), ("00005", 2), ("00002", 2), ("00005", 3), ("00002", 3)
    ]  # fmt: skip
    assert all(config["lr"] == 0.01 for _, config in plan)


def test_confirmation_trials_are_their_own_phase_in_the_study(tmp_path):
    settings = SearchSettings(name="exp", storage=str(tmp_path), num_samples=2)
    (tmp_path / "exp").mkdir()
    study = SearchStudy.create(settings.study_location, "exp", ["minimize"], settings.to_dict(), {})
    study.use_sampler(make_sampler("random", seed=0))
    space = lambda trial: {"arch": "lstm", "lr": trial.suggest_float("lr", 1e-4, 1e-2)}  # noqa: E731
    search = StudySearcher(study, space, num_samples=2, continuing=[], metric="val_loss")
    first = search.suggest("a")
    search.suggest("b")
    assert search.suggest("c") == Searcher.FINISHED
    plan = [("00000", {**first, "seed": 7}), ("00000", {**first, "seed": 8})]
    plan = [(trial, {k: v for k, v in c.items() if k != "_pico"}) for trial, c in plan]
    confirm = ConfirmationSearcher(study, plan, continuing=[], metric="val_loss")
    assert confirm.trials_to_run() == 2
    suggested = confirm.suggest("d")
    assert suggested["_pico"] == {"trial_id": "00002", "confirms": "00000"}
    assert suggested["seed"] == 7 and suggested["lr"] == first["lr"]
    # The plan's next trial was asked ahead, as a confirmation too. The search phase's counts
    # leave confirmation trials out; the study knows each one.
    assert study.asked(SEARCH) == 2 and study.asked(CONFIRM) == 2
    assert study.confirmations() == {("00000", 7), ("00000", 8)}
    assert study.unfinished(CONFIRM) == [2, 3] and study.unfinished(SEARCH) == [0, 1]
    assert [phase_of(t) for t in study.trials()] == [SEARCH, SEARCH, CONFIRM, CONFIRM]
    # A resumed stage continues its unfinished trials, with what they confirm, and asks nothing.
    again = ConfirmationSearcher(study, [], continuing=[2, 3], metric="val_loss")
    assert again.suggest("e")["_pico"] == {"trial_id": "00002", "confirms": "00000"}
    assert again.suggest("f")["_pico"] == {"trial_id": "00003", "confirms": "00000"}
    assert again.suggest("g") == Searcher.FINISHED


@pytest.mark.parametrize(
    ("top", "seeds", "message"),
    [
        (1, 0, "go together"),
        (0, 3, "go together"),
        (-1, 3, "must be >= 0"),
        (2, 1, "at least 2"),
    ],
)
def test_bad_confirmation_settings_are_refused(top, seeds, message):
    from launch.settings import validate

    with pytest.raises(PicoError, match=message):
        validate(SearchSettings(confirm_top=top, confirm_seeds=seeds))


def two_architectures(trial: optuna.Trial) -> dict:
    """Trials 0 and 1 learn (a Transformer, an LSTM); 2 and 3 barely do."""
    arch = TINY_TF if trial.number % 2 == 0 else TINY_LSTM
    lr = 1e-2 if trial.number < 2 else 1e-6
    return {**arch, **SHAPE, "lr": lr, "min_lr": lr / 10}


@pytest.mark.slow
def test_a_search_then_its_confirmation_in_one_study_and_one_file(
    ray_session, monkeypatch, tmp_path
):
    monkeypatch.setitem(search_spaces.SPACES, "two_archs", two_architectures)
    settings = SearchSettings(
        space="two_archs", name="exp", storage=str(tmp_path / "experiments"), num_samples=4,
        max_steps=20, eval_interval=10, eval_tokens=256, scheduler="fifo", corpus="3seqs",
        tokenizer="char", sampler="random", max_concurrent=2, cpus_per_trial=1,
        confirm_top=1, confirm_seeds=2,
    )  # fmt: skip
    outcome = run_search(settings, verbosity=0)
    assert outcome.ended and outcome.unfinished == 0

    df = pd.read_parquet(settings.results_path)
    last = df[df.is_last].set_index("trial_id")
    search, confirm = last[last.phase == "search"], last[last.phase == "confirm"]
    assert len(search) == 4 and search.confirms.isna().all()
    # The best trial of each architecture (0 and 1), on the same two fresh seeds, to max_steps.
    assert sorted(confirm.confirms) == ["00000", "00000", "00001", "00001"]
    assert confirm.groupby("confirms").seed.apply(sorted).tolist() == [[1, 2], [1, 2]]
    assert (confirm.status == "completed").all() and (confirm.step == 20).all()
    for trial_id, row in confirm.iterrows():
        source = search.loc[row.confirms]
        for name in ("arch", "hp_lr", "hp_d_model", "hp_batch_size"):
            assert row[name] == source[name], (trial_id, name)
    # Seeds matter: two seeds of one config do not give the same loss.
    assert confirm.groupby("confirms").val_loss.nunique().eq(2).all()

    study = SearchStudy.load(settings.study_location, "exp")
    assert study.asked(SEARCH) == 4 and study.asked(CONFIRM) == 4
    assert pd.read_parquet(settings.results_path).equals(
        build_table(study, settings.store()).to_arrow().to_pandas()
    )

    # Resuming a finished search runs nothing again; a larger stage adds only what is new.
    again = run_search(settings, resume=True, verbosity=0)
    assert again.ended and len(again.table.trials) == 8
    bigger = SearchSettings(**{**settings.to_dict(), "confirm_seeds": 3})
    more = run_search(bigger, resume=True, verbosity=0)
    assert more.ended and len(more.table.trials) == 10
    new = pd.read_parquet(settings.results_path).query("is_last and phase == 'confirm'")
    assert sorted(new[new.seed == 3].confirms) == ["00000", "00001"]
    assert SearchStudy.load(settings.study_location, "exp").settings["confirm_seeds"] == 3


def test_no_confirm_contradicting_the_stage_flags_is_one_line_and_exit_2(repo_root, tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "launch/search.py", "--no-confirm", "--confirm-seeds", "4",
         "--storage", str(tmp_path / "exp")],
        cwd=repo_root, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "contradict" in result.stderr
    assert list(tmp_path.iterdir()) == []
