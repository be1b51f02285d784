"""The study's writes made behind Tune's loop (launch/study.py): in order, all in the storage at
the next read, failures shown, asking ahead giving the trials asking in turn would, and the
journal gathering a batch's appends into one (launch/journal.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from launch import status
from launch.journal import BufferedJournal
from launch.searcher import StudySearcher, make_sampler
from launch.settings import SearchSettings
from launch.study import LEGACY_STUDY_FILE, STUDY_FILE, SearchStudy, WriteBehind, open_storage
from pico.errors import PicoError


def new_study(tmp_path, name: str = "exp") -> tuple[SearchSettings, SearchStudy]:
    settings = SearchSettings(name=name, storage=str(tmp_path), num_samples=4)
    (tmp_path / name).mkdir(exist_ok=True)
    study = SearchStudy.create(settings.study_location, name, ["minimize"], settings.to_dict(), {})
    return settings, study


def space(trial: optuna.Trial) -> dict:
    return {"arch": "lstm", "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True)}


def test_writes_made_behind_are_in_the_storage_at_the_next_read(tmp_path):
    settings, study = new_study(tmp_path)
    assert settings.study_location == str(tmp_path / "exp" / STUDY_FILE)
    number, _ = study.ask(space)
    study.report(number, 10, 2.5)
    study.set_attr(number, "asha_rung_10", 2.5)
    assert study.finish(number, status.COMPLETED, last_step=10, values=[2.5])
    assert not study.finish(number, status.COMPLETED, last_step=10, values=[2.5])  # once
    study.close()
    # Another process's view: the journal file alone.
    trial = SearchStudy.load(settings.study_location, "exp").trials()[0]
    assert trial.state == TrialState.COMPLETE and trial.value == 2.5
    assert trial.intermediate_values == {10: 2.5}
    assert trial.user_attrs["asha_rung_10"] == 2.5 and trial.user_attrs["last_step"] == 10
    assert trial.user_attrs[status.STATUS_ATTR] == status.COMPLETED


def test_a_failed_write_fails_every_later_call_and_stops_the_writes_after_it():
    writes = WriteBehind()
    done = []
    writes.submit(lambda: done.append(1))
    writes.submit(lambda: 1 / 0)
    writes.submit(lambda: done.append(2))
    later = writes.request(lambda: done.append(3))
    with pytest.raises(PicoError, match=r"could not write the Optuna study: ZeroDivisionError"):
        writes.flush()
    with pytest.raises(PicoError, match="ZeroDivisionError"):
        writes.submit(lambda: done.append(4))
    with pytest.raises(PicoError, match="ZeroDivisionError"):
        writes.result(later)
    with pytest.raises(PicoError, match="ZeroDivisionError"):
        writes.close()
    assert done == [1]


def test_asking_ahead_gives_the_trials_asking_in_turn_would(tmp_path):
    """The random sampler, asked ahead: the same trials, numbers and configs, as when each is
    asked as Tune asks (reproducible from the seed)."""
    configs = {}
    for ahead in (False, True):
        _, study = new_study(tmp_path, f"ahead_{ahead}")
        study.use_sampler(make_sampler("random", seed=3))
        searcher = StudySearcher(
            study, space, num_samples=4, continuing=[], metric="val_loss", ask_ahead=ahead
        )
        configs[ahead] = [searcher.suggest(f"t{i}") for i in range(5)]
        assert configs[ahead][-1] == StudySearcher.FINISHED
        assert study.asked() == 4  # nothing asked past num_samples
        study.close()
    assert configs[True] == configs[False]


def test_asking_behind_runs_the_enqueued_trials_then_creates_without_scanning(tmp_path):
    """Asked behind, enqueued trials come first; after them a new trial is created without a
    scan of the study's trials for enqueued ones (Study.ask's, which grows with the study)."""
    settings = SearchSettings(name="queued", storage=str(tmp_path), num_samples=6)
    (tmp_path / "queued").mkdir()
    study = SearchStudy.create(
        settings.study_location, "queued", ["minimize"], settings.to_dict(), {},
        enqueue=[{"lr": 1e-3}, {"lr": 2e-3}],
    )  # fmt: skip
    study.use_sampler(make_sampler("random", seed=3))
    scans = []
    get_all_trials = study.storage.get_all_trials

    def counted(study_id, deepcopy=True, states=None):
        scans.append(states is not None and TrialState.WAITING in states)
        return get_all_trials(study_id, deepcopy=deepcopy, states=states)

    study.storage.get_all_trials = counted
    asked = [study.take(study.ask_behind(space)) for _ in range(3)]
    first_three = sum(scans)
    asked += [study.take(study.ask_behind(space)) for _ in range(20)]
    assert sum(scans) == first_three  # no scan for enqueued trials once none is left
    assert [number for number, _ in asked] == list(range(23))
    assert [config["lr"] for _, config in asked[:2]] == [1e-3, 2e-3]
    assert len({config["lr"] for _, config in asked}) == 23  # sampled
    study.close()
    again = SearchStudy.load(settings.study_location, "queued").trials()
    assert [t.state for t in again] == [TrialState.RUNNING] * 23
    assert [t.user_attrs["config"]["lr"] for t in again] == [c["lr"] for _, c in asked]


def test_a_pickled_study_has_no_thread_connection_or_password(tmp_path):
    _, study = new_study(tmp_path)
    number, _ = study.ask(space)
    study.report(number, 10, 2.5)  # the write thread is running
    study.location = "postgresql://pico:s3cret@db.example:5432/pico"
    blob = pickle.dumps(study)
    assert b"s3cret" not in blob
    copy = pickle.loads(blob)
    assert copy.study is None and copy.storage is None and copy._writes is None
    assert copy.location == "postgresql://pico@db.example:5432/pico"
    study.close()


def test_an_experiment_made_before_the_journal_keeps_its_sqlite_study(tmp_path):
    settings = SearchSettings(name="old", storage=str(tmp_path))
    (tmp_path / "old").mkdir()
    url = f"sqlite:///{tmp_path / 'old' / LEGACY_STUDY_FILE}"
    SearchStudy.create(url, "old", ["minimize"], settings.to_dict(), {}).close()
    assert settings.study_location == url
    assert SearchStudy.load(settings.study_location, "old").settings["name"] == "old"


def test_the_journal_gathers_the_appends_of_a_hold_into_one(tmp_path):
    path = str(tmp_path / STUDY_FILE)
    journal = BufferedJournal(path)
    storage = optuna.storages.JournalStorage(journal)
    study = optuna.create_study(study_name="s", storage=storage)  # outside a hold: appended
    lines = Path(path).read_text().count("\n")
    assert lines == 1
    journal.hold()
    trial = study.ask()
    trial.set_user_attr("config", {"lr": 0.01})
    study.tell(trial, 1.5)
    # The storage sees every change at once; the file, and another reader, none yet.
    assert study.trials[0].value == 1.5
    assert Path(path).read_text().count("\n") == lines
    assert optuna.load_study(study_name="s", storage=open_storage(path)).trials == []
    journal.flush()
    assert Path(path).read_text().count("\n") == lines + 3
    (again,) = optuna.load_study(study_name="s", storage=open_storage(path)).trials
    assert again.value == 1.5 and again.user_attrs["config"] == {"lr": 0.01}
    # After the hold, appends go to the file at once again, and the storage reads them back.
    study.set_user_attr("ended_at", "now")
    assert Path(path).read_text().count("\n") == lines + 4
    assert study.user_attrs["ended_at"] == "now"
