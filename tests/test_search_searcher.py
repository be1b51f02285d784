"""The searcher hands Tune the study's unfinished trials first, then asks its sampler for new
ones until the study holds the requested number; every sampler samples every space."""

from __future__ import annotations

import optuna
import pytest
from ray.tune.search import Searcher

from launch.searcher import StudySearcher, make_sampler
from launch.settings import SAMPLERS, SearchSettings
from launch.study import CONFIG_ATTR, SearchStudy
from search_spaces import get_space


def tiny_config(trial: optuna.Trial) -> dict:
    return {"arch": "lstm", "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True)}


def test_unfinished_trials_first_then_new_ones_up_to_the_number_requested(tmp_path):
    settings = SearchSettings(name="exp", storage=str(tmp_path))
    (tmp_path / "exp").mkdir()
    study = SearchStudy.create(settings.study_location, "exp", ["minimize"], settings.to_dict(), {})
    study.use_sampler(make_sampler("random", seed=0))
    for _ in range(3):
        study.ask(tiny_config)
    study.finish(0, "completed", last_step=40, values=[1.0])
    # Trials 1 and 2 were cut short by an interrupt: the new run continues them first.
    searcher = StudySearcher(
        study, tiny_config, num_samples=5, continuing=[1, 2], metric="val_loss"
    )
    suggested = [searcher.suggest(f"tune_{i}") for i in range(4)]
    assert [c["_pico"]["trial_id"] for c in suggested] == ["00001", "00002", "00003", "00004"]
    stored = [t.user_attrs[CONFIG_ATTR] for t in study.trials()]
    assert [{k: v for k, v in c.items() if k != "_pico"} for c in suggested] == stored[1:]
    assert searcher.suggest("tune_4") == Searcher.FINISHED
    assert len(study.trials()) == 5


def test_enqueued_configs_come_first_and_count_once(tmp_path):
    settings = SearchSettings(name="exp", storage=str(tmp_path))
    (tmp_path / "exp").mkdir()
    points = [{"lr": 5e-3}, {"lr": 7e-3}]  # as --warm-start and --space seed22 enqueue them
    study = SearchStudy.create(
        settings.study_location, "exp", ["minimize"], settings.to_dict(), {}, enqueue=points
    )
    searcher = StudySearcher(study, tiny_config, num_samples=2, continuing=[], metric="val_loss")
    assert [searcher.suggest(f"tune_{i}")["lr"] for i in range(2)] == [5e-3, 7e-3]
    assert searcher.suggest("tune_2") == Searcher.FINISHED


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


def test_a_resumed_search_draws_new_configs_not_the_first_runs_again(tmp_path):
    from launch.experiment import make_searcher

    settings = SearchSettings(
        name="exp", storage=str(tmp_path), space="tiny", sampler="random", num_samples=5
    )
    (tmp_path / "exp").mkdir()
    study = SearchStudy.create(settings.study_location, "exp", ["minimize"], settings.to_dict(), {})
    first = make_searcher(settings, study, continuing=[])
    before = [first.suggest(f"tune_{i}") for i in range(2)]
    study.close()  # an interrupt ends the run: the study's writes are made
    # A resume: a new searcher from the study, after the trials it holds (the random sampler's
    # third was asked ahead).
    reopened = SearchStudy.load(settings.study_location, "exp")
    assert reopened.asked() == 3
    resumed = make_searcher(settings, reopened, continuing=[])
    after = [resumed.suggest(f"tune_{i}") for i in range(2, 4)]
    params = [{k: v for k, v in c.items() if k != "_pico"} for c in before + after]
    assert len({repr(sorted(p.items())) for p in params}) == 4
    assert [c["_pico"]["trial_id"] for c in after] == ["00003", "00004"]


def test_a_trial_left_without_its_config_gets_one_in_its_own_place(tmp_path):
    settings = SearchSettings(name="exp", storage=str(tmp_path))
    (tmp_path / "exp").mkdir()
    study = SearchStudy.create(settings.study_location, "exp", ["minimize"], settings.to_dict(), {})
    study.study.ask()  # the driver died right after creating trial 0, before storing its config
    resumed = SearchStudy.load(settings.study_location, "exp")
    searcher = StudySearcher(resumed, tiny_config, num_samples=2, continuing=[], metric="val_loss")
    ids = [searcher.suggest(f"tune_{i}")["_pico"]["trial_id"] for i in range(2)]
    assert ids == ["00000", "00001"] and searcher.suggest("tune_2") == Searcher.FINISHED
    assert [CONFIG_ATTR in t.user_attrs for t in resumed.trials()] == [True, True]
