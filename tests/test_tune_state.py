"""Repairs to Tune's saved experiment state, on files shaped as Ray 2.60 writes them."""

from __future__ import annotations

import json
from pathlib import Path

import ray.cloudpickle as cloudpickle

from launch.tune_state import repair_saved_state

SESSION, OLDER = "2026-01-02_03-04-05", "2026-01-01_00-00-00"


def write_state(folder: Path, trials: dict[str, str], session: str = SESSION) -> Path:
    """An experiment state holding `trials` (id -> Tune status)."""
    data = [[json.dumps({"trial_id": t, "status": s}), json.dumps({})] for t, s in trials.items()]
    path = folder / f"experiment_state-{session}.json"
    path.write_text(json.dumps({"trial_data": data, "runner_data": {}, "stats": {}}))
    return path


def write_generator(folder: Path, counter: int, live: set[str], session: str = SESSION) -> Path:
    """A search generator state: its trial count and its concurrency limiter's live trials."""
    state = {
        "counter": counter,
        "total_samples": 8,
        "finished": False,
        "name:ConcurrencyLimiter": {"live_trials": live, "num_unfinished_live_trials": len(live)},
    }
    path = folder / f"search_gen_state-{session}.json"
    path.write_bytes(cloudpickle.dumps(state))
    return path


def read_generator(path: Path) -> dict:
    return cloudpickle.loads(path.read_bytes())


def test_agreeing_files_are_left_as_they_are(tmp_path):
    write_state(tmp_path, {"a": "TERMINATED", "b": "RUNNING"})
    generator = write_generator(tmp_path, 2, {"b"})
    before = generator.read_bytes()
    assert repair_saved_state(tmp_path) == []
    assert generator.read_bytes() == before


def test_a_count_from_a_newer_snapshot_follows_the_trial_list(tmp_path):
    write_state(tmp_path, {"a": "TERMINATED", "b": "RUNNING"})
    generator = write_generator(tmp_path, 4, {"b", "c", "d"})  # c, d: after the trial list
    notes = repair_saved_state(tmp_path)
    assert len(notes) == 2 and "counted 4 trials" in notes[0] and "c, d" in notes[1]
    state = read_generator(generator)
    assert state["counter"] == 2 and state["total_samples"] == 8
    limiter = state["name:ConcurrencyLimiter"]
    assert limiter["live_trials"] == {"b"} and limiter["num_unfinished_live_trials"] == 1
    assert repair_saved_state(tmp_path) == []  # repaired for good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_file_cut_short_is_set_aside_for_the_previous_one(tmp_path):
    write_state(tmp_path, {"a": "TERMINATED"}, session=OLDER)
    newest = write_state(tmp_path, {"a": "TERMINATED", "b": "RUNNING"})
    newest.write_text(newest.read_text()[:40])  # the kill came mid-copy
    generator = write_generator(tmp_path, 2, {"b"})
    notes = repair_saved_state(tmp_path)
    assert "set aside experiment_state-" in notes[0] and "unreadable" in notes[0]
    assert (tmp_path / (newest.name + ".unreadable")).exists() and not newest.exists()
    assert read_generator(generator)["counter"] == 1  # the older trial list holds one trial


def test_files_of_an_unknown_shape_are_not_touched(tmp_path):
    write_state(tmp_path, {"a": "TERMINATED"})
    generator = tmp_path / f"search_gen_state-{SESSION}.json"
    generator.write_bytes(cloudpickle.dumps({"something": "else"}))
    assert repair_saved_state(tmp_path) == []
    assert read_generator(generator) == {"something": "else"}
    assert repair_saved_state(tmp_path / "missing") == []


def test_a_spare_tuner_replaces_one_cut_short(tmp_path):
    tuner = tmp_path / "tuner.pkl"
    tuner.write_bytes(cloudpickle.dumps({"tuner": "settings"}))
    assert repair_saved_state(tmp_path) == []  # readable: a spare is kept
    assert (tmp_path / "pico" / "tuner.pkl").read_bytes() == tuner.read_bytes()
    tuner.write_bytes(tuner.read_bytes()[:10])  # the next kill came mid-copy
    [note] = repair_saved_state(tmp_path)
    assert "replaced tuner.pkl" in note
    assert cloudpickle.loads(tuner.read_bytes()) == {"tuner": "settings"}
    assert (tmp_path / "tuner.pkl.unreadable").exists()
