"""Repairs to the experiment state Ray Tune saved, made before `Tuner.restore` reads it.

Tune (2.60) writes its state to a staging folder, then copies it to the experiment's storage in a
background thread: several files at once, each overwritten in place. A driver killed during that
copy can leave a file cut short, or files from two snapshots: the trial list from one and the
search generator's count of created trials from the other. Restored as is, Tune fails to start,
creates too few trials (and the search never reaches its end), or too many, or waits forever for
concurrency slots held by trials it no longer has. The copy also rewrites `tuner.pkl`, which a
resume cannot do without. `repair_saved_state` makes the newest files agree and keeps a spare
`tuner.pkl`. It reads and rewrites Tune's own files, so it checks their shape and leaves any it
does not recognise alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.cloudpickle as cloudpickle

from pico.files import write_atomic

EXPERIMENT_STATE = "experiment_state-*.json"  # the trials: TuneController.save_to_dir
SEARCH_STATE = "search_gen_state-*.json"  # the trial count (a pickle, despite the name)
SEARCHER_STATE = "searcher-state-*.pkl"  # the searcher itself
TUNER = "tuner.pkl"  # the Tuner's own settings, written once, then copied with the state
SPARE_TUNER = "pico/tuner.pkl"  # outside the copy: Tune only copies top-level files
ENDED = ("TERMINATED", "ERROR")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _read_pickle(path: Path) -> Any:
    with path.open("rb") as f:
        return cloudpickle.load(f)


def newest_readable(
    folder: Path, pattern: str, read: Callable[[Path], Any], notes: list[str]
) -> tuple[Path, Any] | None:
    """The newest file matching `pattern` (by name, as Tune picks it) that `read` can load.

    Newer files that cannot be read are renamed to `<name>.unreadable`: Tune then skips them
    too, and nothing is deleted.
    """
    for path in sorted(folder.glob(pattern), reverse=True):
        try:
            return path, read(path)
        except Exception as exc:  # a file cut short fails in json, pickle or zlib: any of them
            path.rename(path.with_name(path.name + ".unreadable"))
            notes.append(f"set aside {path.name}, which a crash left unreadable ({exc})")
    return None


def saved_trials(state: dict[str, Any]) -> dict[str, str]:
    """Trial id -> Tune status, from an experiment state."""
    trials = {}
    for trial_json, _ in state["trial_data"]:
        trial = json.loads(trial_json)
        trials[trial["trial_id"]] = trial["status"]
    return trials


def repair_saved_state(folder: str | Path) -> list[str]:
    """Make the newest Tune state files in experiment `folder` agree; return what was changed,
    a sentence each (an empty list when they already agree)."""
    folder, notes = Path(folder), []
    keep_spare_tuner(folder, notes)
    experiment = newest_readable(folder, EXPERIMENT_STATE, _read_json, notes)
    search = newest_readable(folder, SEARCH_STATE, _read_pickle, notes)
    newest_readable(folder, SEARCHER_STATE, _read_pickle, notes)
    if experiment is None or search is None:
        return notes
    try:
        trials = saved_trials(experiment[1])
    except (KeyError, TypeError, ValueError):
        return notes  # not a shape this version knows
    path, generator = search
    if not isinstance(generator, dict) or not isinstance(generator.get("counter"), int):
        return notes
    repaired = len(notes)
    if generator["counter"] != len(trials):
        # Tune saves both at the same moment, when they are equal: the trial list is the truth,
        # and Tune creates the missing trials (or no extra ones) from this count.
        notes.append(
            f"{path.name} counted {generator['counter']} trials created, but Tune's saved "
            f"state holds {len(trials)}: set to {len(trials)}"
        )
        generator["counter"] = len(trials)
    limiter = generator.get("name:ConcurrencyLimiter")
    if isinstance(limiter, dict) and isinstance(limiter.get("live_trials"), set):
        unfinished = {t for t, status in trials.items() if status not in ENDED}
        ghosts = limiter["live_trials"] - unfinished
        if ghosts:
            notes.append(
                f"{path.name} held concurrency slots for trials Tune no longer runs "
                f"({', '.join(sorted(ghosts))}): released"
            )
            limiter["live_trials"] -= ghosts
            limiter["num_unfinished_live_trials"] = len(limiter["live_trials"])
    if len(notes) > repaired:
        write_atomic(path, cloudpickle.dumps(generator))
    return notes


def keep_spare_tuner(folder: Path, notes: list[str]) -> None:
    """Copy a readable `tuner.pkl` aside, or put the spare back in place of an unreadable one."""
    tuner, spare = folder / TUNER, folder / SPARE_TUNER
    if not tuner.exists():
        return
    try:
        _read_pickle(tuner)
    except Exception as exc:  # cut short mid-copy
        if spare.exists():
            os.replace(tuner, tuner.with_name(TUNER + ".unreadable"))
            write_atomic(tuner, spare.read_bytes())
            notes.append(f"replaced {TUNER}, which a crash left unreadable ({exc}), by its spare")
        return
    write_atomic(spare, tuner.read_bytes())
