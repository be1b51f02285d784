"""The results file, derived from the study and the trial folders.

`build_table` is the whole derivation: each trial of the study (its config, status, error and
retries) with the evaluations its folder logged, up to the step where it ended. `export` writes it;
`python launch/search.py --name X --export` runs it from storage alone. During a search the
recorder (launch/recorder.py) applies the same events to the same table as they happen, and a
`ResultsWriter` thread writes it every few seconds, away from the loop that trials wait on.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from launch import status
from launch.results import ResultsTable
from launch.storage import ExperimentStore, is_uri
from launch.study import (
    CONFIG_ATTR,
    CONFIRMS_ATTR,
    ERROR_ATTR,
    LAST_STEP_ATTR,
    RETRIES_ATTR,
    SearchStudy,
    trial_id_of,
)
from pico.files import write_atomic

logger = logging.getLogger(__name__)


def utc_now() -> str:
    """The current time, ISO 8601 in UTC."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def milestones_of(settings: dict[str, Any]) -> list[float]:
    """The steps at which ASHA compares trials (none without ASHA), from stored settings."""
    from launch.settings import SearchSettings

    return SearchSettings.from_dict(settings).asha_milestones()


def build_table(study: SearchStudy, store: ExperimentStore) -> ResultsTable:
    """The results of the experiment, from its study and trial folders alone."""
    settings = study.settings
    milestones = milestones_of(settings)
    table = ResultsTable(settings["name"], study.metadata)
    for trial in study.trials():
        if CONFIG_ATTR not in trial.user_attrs:
            continue  # asked, but the driver stopped before storing its config: never ran
        trial_id = trial_id_of(trial.number)
        attrs = trial.user_attrs
        record = table.trial(trial_id, attrs[CONFIG_ATTR], confirms=attrs.get(CONFIRMS_ATTR))
        ended_at = trial.user_attrs.get(LAST_STEP_ATTR)
        for evaluation in store.read_evals(trial_id):
            if ended_at is None or evaluation["step"] <= ended_at:
                record.add_eval(evaluation)
        steps = store.checkpoint_steps(trial_id)
        record.checkpoint = store.checkpoint_uri(trial_id, steps[-1]) if steps else None
        apply_study_state(record, trial.user_attrs, status.status_of(trial), milestones)
    return table


def apply_study_state(record: Any, attrs: dict[str, Any], outcome: str, milestones: list) -> None:
    """Copy what the study knows of a trial into its record."""
    record.status = outcome
    record.error = attrs.get(ERROR_ATTR)
    record.retries = attrs.get(RETRIES_ATTR, 0)
    last_step = record.last_step
    record.rung = sum(1 for m in milestones if last_step >= m)


def write_results(data: pa.Table, path: str) -> None:
    """Write a results table whole to `path`: a reader sees the old file or the new one."""
    sink = pa.BufferOutputStream()
    pq.write_table(data, sink)
    blob = sink.getvalue().to_pybytes()
    if is_uri(path):
        folder, name = path.rsplit("/", 1)
        ExperimentStore(folder).write_bytes(blob, name)
    else:
        write_atomic(Path(path), blob)


def export(study: SearchStudy, store: ExperimentStore, path: str) -> ResultsTable:
    """Rebuild the results file at `path` from storage; returns the table."""
    table = build_table(study, store)
    write_results(table.to_arrow(), path)
    return table


class ResultsWriter:
    """Writes a live table to its file in a thread of its own, at most every `interval_s`
    seconds and never taking more than a twentieth of the time (a large file is written less
    often). Each write is the whole file, and costs the driver's CPU: docs/benchmarks.md's search
    driver section measures it.

    `lock` guards the table: hold it while changing the table.
    """

    def __init__(self, table: ResultsTable, path: str, interval_s: float = 5.0):
        self.table, self.path, self.interval_s = table, path, interval_s
        self.lock = threading.Lock()
        self._changed = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="pico-results", daemon=True)
        self._thread.start()

    def changed(self) -> None:
        """Ask for a write soon."""
        self._changed.set()

    def _run(self) -> None:
        pause = self.interval_s
        while not self._closing:
            self._changed.wait()
            time.sleep(pause)
            if self._closing:
                return
            self._changed.clear()
            start = time.monotonic()
            self._write()
            pause = max(self.interval_s, 20 * (time.monotonic() - start))

    def _write(self) -> None:
        with self.lock:
            data = self.table.to_arrow()  # the trials' encoded rows, not yet copied together
        try:
            # One chunk per column: Parquet writes a table of many small chunks far slower.
            write_results(data.combine_chunks(), self.path)
        except OSError as exc:  # a full disk must not stop the search; the old file stays
            logger.warning("could not write %s: %s", self.path, exc)

    def close(self) -> None:
        """Stop the thread and write the table one last time."""
        self._closing = True
        self._changed.set()
        self._thread.join()
        self._write()
