"""The Optuna study: the one record of a search (docs/design.md).

It holds the search's settings and metadata (study user attributes, JSON), every trial with its
parameters and exact config (`config`), its Pico status (launch/status.py), its intermediate
values, final values, error and retries, and ASHA's rung records (`asha_rung_<step>`). Only the
driver writes it, through `SearchStudy`; trials write only their own folders (launch/storage.py).

A trial belongs to a phase: `search` (the sampler's, the default) or `confirm` (a rerun of a
search trial's config with a fresh seed, `confirms` naming that trial: launch/confirm.py). The
confirmation runs only after the search phase has asked for all its trials, so no sampler decision
ever sees a confirmation trial, and search-phase counts (`asked`) leave them out.

The study lives in Optuna's journal file inside the experiment folder (`study.journal`, one JSON
line per change, appended), or in the database that `--optuna-storage` names (PostgreSQL or MySQL
on a cluster; `sqlite:///...` works too). A location with `://` is a database URL, any other a
journal file: the form optuna-dashboard takes. An experiment made before the journal keeps its
`study.db`. A database URL's password is never stored or printed: `redact` shows it as `***`, and
the manifest keeps the URL without it, so that a resume takes the password from where the
database client looks for it (`PGPASSWORD`, `~/.pgpass`) or from `--optuna-storage` given again.

The driver's writes during a search (each result's intermediate value, ASHA's rung records,
retries, each trial's ending) are made in order by a thread of their own, a fifth of a second's
worth at a time, so that Tune's loop, which the trials wait on, never waits for the storage:
`ask` and every read first wait for the writes before them. A driver killed outright loses the
writes not yet made (under half a second's worth); what they said is in the trial folders
(launch/storage.py), and the trials they would have ended are continued from their last
checkpoint by `--resume`.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from launch import status
from launch.journal import BufferedJournal
from pico.errors import PicoError

STUDY_FILE = "study.journal"
WRITE_BATCH_S = 0.2  # the longest a write given to the write thread waits to be made
JOURNAL_BATCH_S = 0.2  # the longest a change the write thread made waits for the journal's file
LEGACY_STUDY_FILE = "study.db"
SETTINGS_ATTR = "settings"
METADATA_ATTR = "metadata"
ENDED_AT_ATTR = "ended_at"
CONFIG_ATTR = "config"
ERROR_ATTR = "error"
RETRIES_ATTR = "retries"
LAST_STEP_ATTR = "last_step"
RUNG_ATTR = "asha_rung_{:g}"
CONFIRMS_ATTR = "confirms"
SEARCH, CONFIRM = "search", "confirm"
_STARTED = tuple(state for state in TrialState if state != TrialState.WAITING)


def trial_id_of(number: int) -> str:
    """The trial id Pico shows (results file, trial folder) for Optuna trial `number`."""
    return f"{number:05d}"


def phase_of(trial: FrozenTrial) -> str:
    """The phase of a trial: `confirm` when it names the trial it confirms, else `search`."""
    return SEARCH if trial.user_attrs.get(CONFIRMS_ATTR) is None else CONFIRM


def number_of(trial_id: str) -> int:
    """The Optuna trial number of a Pico trial id."""
    return int(trial_id)


def _url_parts(url: str) -> Any:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except Exception:  # SQLAlchemy raises several kinds for a malformed URL
        return None


def redact(url: str) -> str:
    """`url` with its password (if any) shown as `***`."""
    parts = _url_parts(url)
    if parts is None or parts.password is None:
        return url
    return parts.render_as_string(hide_password=True)


def without_password(url: str) -> str:
    """`url` with no password at all (what the manifest keeps)."""
    parts = _url_parts(url)
    if parts is None or parts.password is None:
        return url
    from sqlalchemy.engine import URL

    bare = URL.create(
        parts.drivername, parts.username, None, parts.host, parts.port, parts.database, parts.query
    )
    return bare.render_as_string(hide_password=False)


def is_journal(location: str) -> bool:
    """Whether a study location is a journal file (else a database URL)."""
    return "://" not in location


def default_location(experiment_path: str) -> str:
    """Where a local experiment keeps its study: its journal file, or the SQLite file of an
    experiment made before the journal."""
    legacy = Path(experiment_path) / LEGACY_STUDY_FILE
    if legacy.is_file() and not (Path(experiment_path) / STUDY_FILE).exists():
        return f"sqlite:///{legacy}"
    return str(Path(experiment_path) / STUDY_FILE)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage at `url` (a database URL or a journal file); one PicoError line if it
    cannot be opened."""
    return _open(url)[0]


def _open(url: str) -> tuple[optuna.storages.BaseStorage, BufferedJournal | None]:
    """The storage at `url`, and its journal if it is a journal file."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if is_journal(url):
        return _open_journal(url)
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy and the database drivers raise many kinds
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if url.startswith("sqlite") else " (a password goes in PGPASSWORD or ~/.pgpass)"
        raise PicoError(f"cannot open the Optuna storage {redact(url)}: {reason}{hint}") from None
    if url.startswith("sqlite"):
        _sync_less_often(storage.engine)
    return storage, None


def _open_journal(path: str) -> tuple[optuna.storages.JournalStorage, BufferedJournal]:
    """The journal file at `path`, read into memory (Optuna replays it), with its appends
    gathered while the study's write thread holds it (launch/journal.py). The lock is Optuna's
    default, a symbolic link beside the file, which works on NFS too."""
    try:
        journal = BufferedJournal(path)
        return optuna.storages.JournalStorage(journal), journal
    except (ValueError, UnicodeDecodeError) as exc:  # json's errors are ValueErrors
        raise PicoError(
            f"the study file {path} is damaged ({type(exc).__name__}: {exc}): restore it from a "
            "backup, or start a new experiment"
        ) from None
    except OSError as exc:
        raise PicoError(f"cannot open the study file {path}: {exc.strerror or exc}") from None


def _sync_less_often(engine: Any) -> None:
    """SQLite's default waits for the disk at every commit, several times: about 10 ms on this
    project's machines, per intermediate value. `synchronous=NORMAL` syncs at the journal's
    critical moments only, which keeps the database consistent after a crash of the process or
    the machine (the last transactions may be lost on power failure). The journal mode stays the
    default, which works on shared file systems, unlike WAL."""
    from sqlalchemy import event

    def on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections made before the listener get it when they are made again


class WriteBehind:
    """Runs writes in the order given, on a thread of its own (started at the first write).

    `submit` only appends a write to a list: the thread wakes every `WRITE_BATCH_S`, or when a
    caller waits for it (`request`, `flush`, `close`), and makes every write given since, in
    order. Waking it at each write, about three times per result, cost Tune's loop more than the
    writes themselves (docs/benchmarks.md#search-driver). A write that fails fails every later
    call (PicoError naming it): the writes after it are not made, since they may depend on it.
    With a `journal`, the thread holds it while it writes, and appends what it holds at most
    `JOURNAL_BATCH_S` after the first change it kept (launch/journal.py), or at `flush`.
    """

    def __init__(self, journal: BufferedJournal | None = None) -> None:
        # deque's append and popleft are atomic: the driver appends, the thread pops.
        self._writes: deque[tuple[Callable[[], Any], Future | None]] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._failure: str | None = None
        self._journal = journal

    def submit(self, write: Callable[[], Any]) -> None:
        """Give `write`, to be made within `WRITE_BATCH_S`."""
        self._give(write, None)

    def request(self, write: Callable[[], Any]) -> Future:
        """Give `write` and wake the thread: the future holds what it returns once it has run."""
        future: Future = Future()
        self._give(write, future)
        self._wake.set()
        return future

    def _give(self, write: Callable[[], Any], future: Future | None) -> None:
        self._check()
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="pico-study", daemon=True)
            self._thread.start()
        self._writes.append((write, future))

    def result(self, future: Future) -> Any:
        """What a requested write returned, once it has run."""
        value = future.result()  # None for a failed write: `_check` raises its error
        self._check()
        return value

    def _run(self) -> None:
        append_by = math.inf  # when the journal's batch must be appended
        while True:
            self._wake.wait(timeout=max(0.0, min(WRITE_BATCH_S, append_by - time.monotonic())))
            self._wake.clear()
            closing = self._closing  # read before the last writes: none is given after it
            while self._writes:
                write, future = self._writes.popleft()
                made = self._guarded(write)
                if future is not None:
                    future.set_result(made)
            if self._journal is not None and self._journal.pending and append_by == math.inf:
                append_by = time.monotonic() + JOURNAL_BATCH_S
            if closing or time.monotonic() >= append_by:
                self._guarded(self._append_batch)
                append_by = math.inf
            if closing:
                return

    def _guarded(self, write: Callable[[], Any]) -> Any:
        """Make one write, holding the journal (nothing after a failure)."""
        if self._failure is not None:
            return None
        try:
            if self._journal is not None:
                self._journal.hold()
            return write()
        except Exception as exc:  # the storage's errors are many kinds; shown at `_check`
            lines = str(exc).strip().splitlines() or [""]
            self._failure = f"{type(exc).__name__}: {lines[0]}"
            return None

    def _append_batch(self) -> None:
        if self._journal is not None:
            self._journal.flush()

    def flush(self) -> None:
        """Wait until the writes given so far are made, and in the storage's file."""
        if self._thread is not None:  # else nothing was given since the last `close`
            self.result(self.request(self._append_batch))
        self._check()

    def close(self) -> None:
        """Make the writes given, append the journal's batch and stop the thread."""
        if self._thread is not None:
            self._closing = True
            self._wake.set()
            self._thread.join()
            self._thread = None
        self._check()

    def _check(self) -> None:
        if self._failure is not None:
            raise PicoError(f"could not write the Optuna study: {self._failure}")


class SearchStudy:
    """The study of one experiment, and every write the driver makes to it (module docstring:
    the search's own writes are made behind it; every read waits for them)."""

    def __init__(
        self,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        location: str,
        journal: BufferedJournal | None = None,
    ):
        self.study = study
        self.storage = storage
        self.location = location
        self._writes = WriteBehind(journal)
        self._study_id = storage.get_study_id_from_name(study.study_name)
        self._trial_ids: dict[int, int] = {}  # trial number -> storage id
        # The driver is the study's only writer, so it knows without asking the database which
        # trials it has ended and which steps it has reported.
        self._ended: set[int] = set()
        self._reported: set[tuple[int, int]] = set()
        self._unconfigured: list[int] | None = None  # read at the first `ask`
        self._waiting = 0  # enqueued trials not yet asked, counted at the first `ask`
        self.multi_objective = len(study.directions) > 1

    def __getstate__(self) -> dict[str, Any]:
        """A pickle keeps where the study is, without the password, and no connection or
        thread: Tune pickles its searcher, scheduler and callbacks into its scratch state (never
        read back, and left behind by a killed driver), where the storage would carry the
        password."""
        where = without_password(self.location)
        return {**self.__dict__, "study": None, "storage": None, "_writes": None, "location": where}

    def flush(self) -> None:
        """Wait until the writes made so far are in the storage."""
        self._writes.flush()

    def close(self) -> None:
        """Flush the writes and stop their thread (a later write starts it again)."""
        self._writes.close()

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(
        cls,
        url: str,
        name: str,
        directions: list[str],
        settings: dict[str, Any],
        metadata: dict[str, Any],
        enqueue: list[dict[str, Any]] = (),
    ) -> SearchStudy:
        """A new study holding the settings and metadata; PicoError if the name is taken.

        A study of that name that never started a trial is what a driver killed while creating
        the experiment leaves (the manifest, written next, says an experiment exists): it is
        replaced.
        """
        storage, journal = _open(url)
        try:
            study = optuna.create_study(study_name=name, storage=storage, directions=directions)
        except optuna.exceptions.DuplicatedStudyError:
            old = optuna.load_study(study_name=name, storage=storage)
            started = old.get_trials(deepcopy=False, states=_STARTED)
            if started or SETTINGS_ATTR not in old.user_attrs:
                raise PicoError(
                    f"the Optuna storage {redact(url)} already holds a study {name!r}: choose "
                    "another --name"
                ) from None
            optuna.delete_study(study_name=name, storage=storage)
            study = optuna.create_study(study_name=name, storage=storage, directions=directions)
        study.set_user_attr(SETTINGS_ATTR, settings)
        study.set_user_attr(METADATA_ATTR, metadata)
        for params in enqueue:
            study.enqueue_trial(params)
        return cls(study, storage, url, journal)

    @classmethod
    def load(cls, url: str, name: str) -> SearchStudy:
        """The existing study `name` at `url`; PicoError if there is none."""
        if is_journal(url):
            study_file = url
        else:
            study_file = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
        if study_file and not Path(study_file).is_file():  # both would make an empty one
            raise PicoError(f"the study file {study_file} is missing: no study {name!r} to load")
        storage, journal = _open(url)
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise PicoError(f"the Optuna storage {redact(url)} holds no study {name!r}") from None
        return cls(study, storage, url, journal)

    def use_sampler(self, sampler: optuna.samplers.BaseSampler) -> None:
        """Sample new trials with `sampler` (samplers keep no state that needs saving)."""
        self.study.sampler = sampler

    @property
    def settings(self) -> dict[str, Any]:
        """The search settings the study was created with."""
        self.flush()
        return self.study.user_attrs[SETTINGS_ATTR]

    @property
    def metadata(self) -> dict[str, Any]:
        """The experiment metadata, with `ended_at` once the search has ended."""
        self.flush()
        attrs = self.study.user_attrs
        return {**attrs.get(METADATA_ATTR, {}), ENDED_AT_ATTR: attrs.get(ENDED_AT_ATTR)}

    def save_settings(self, settings: dict[str, Any]) -> None:
        """Replace the stored settings (a resume that asks for a confirmation stage)."""
        self.flush()
        self.study.set_user_attr(SETTINGS_ATTR, settings)

    def mark_ended(self, when: str) -> None:
        """Record that the search has ended (every trial finished, or a budget ran out)."""
        self.flush()
        self.study.set_user_attr(ENDED_AT_ATTR, when)

    # ------------------------------------------------------------------ trials

    def trials(self) -> list[FrozenTrial]:
        """Every trial, in order of creation."""
        self.flush()
        return self.study.get_trials(deepcopy=False)

    def asked(self, phase: str = SEARCH) -> int:
        """How many trials of `phase` were created with a config (enqueued ones wait until
        asked)."""
        return sum(CONFIG_ATTR in t.user_attrs and phase_of(t) == phase for t in self.trials())

    def unfinished(self, phase: str | None = None) -> list[int]:
        """Numbers of the trials (of `phase`, or all) that were given a config and have not
        ended."""
        self.flush()
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [
            t.number
            for t in running
            if CONFIG_ATTR in t.user_attrs and phase in (None, phase_of(t))
        ]

    def confirms(self, number: int) -> str | None:
        """The trial id that trial `number` confirms (None for a search trial)."""
        self.flush()
        return self.storage.get_trial_user_attrs(self._storage_id(number)).get(CONFIRMS_ATTR)

    def confirmations(self) -> set[tuple[str, int]]:
        """(confirmed trial id, seed) of every confirmation trial asked so far."""
        return {
            (t.user_attrs[CONFIRMS_ATTR], t.user_attrs[CONFIG_ATTR]["seed"])
            for t in self.trials()
            if CONFIG_ATTR in t.user_attrs and phase_of(t) == CONFIRM
        }

    def unconfigured(self) -> list[int]:
        """Numbers of the trials created without a config: the driver died between creating a
        trial and storing its config, so it never ran."""
        self.flush()
        return self._unconfigured_now()

    def _unconfigured_now(self) -> list[int]:
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [t.number for t in running if CONFIG_ATTR not in t.user_attrs]

    def ask(
        self,
        make_config: Callable[[optuna.Trial], dict[str, Any]],
        *,
        confirms: str | None = None,
    ) -> tuple[int, dict]:
        """Create a trial (an enqueued one first) and store its exact config; returns its number
        and config. With `confirms` (a trial id) it is a confirmation trial of that trial. A
        trial left without its config (`unconfigured`) gets one first, in its own place, so that
        it does not stay in the study beside the trial that replaces it. The sampler sees every
        write made before (they are flushed first)."""
        self.flush()
        return self._ask(make_config, confirms, reads_trials=True)

    def ask_behind(
        self,
        make_config: Callable[[optuna.Trial], dict[str, Any]],
        *,
        confirms: str | None = None,
    ) -> Future:
        """`ask`, made behind like the writes (after those given before it, not waiting for
        them): the future holds its (number, config), for `take`. For what does not read the
        results told so far: the random sampler, a plan."""
        return self._writes.request(lambda: self._ask(make_config, confirms, reads_trials=False))

    def take(self, asked: Future) -> tuple[int, dict]:
        """The (number, config) of a trial asked with `ask_behind`, once it is in the study."""
        return self._writes.result(asked)

    def _ask(
        self,
        make_config: Callable[[optuna.Trial], dict[str, Any]],
        confirms: str | None,
        *,
        reads_trials: bool,
    ) -> tuple[int, dict]:
        """`reads_trials`: whether `make_config` may read the trials (a sampler that learns)."""
        if self._unconfigured is None:
            self._unconfigured = self._unconfigured_now()
            self._waiting = len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        reused = bool(self._unconfigured)
        if reused:
            trial = optuna.Trial(self.study, self._storage_id(self._unconfigured.pop(0)))
        elif reads_trials or self._waiting:
            trial = self.study.ask()
            self._waiting = max(0, self._waiting - 1)
        else:
            # Study.ask scans every trial of the study for an enqueued one, and clears the
            # sampler's cached copy of the trials: a cost per trial that grows with the study
            # (4 ms at 10,000 trials in a journal). With none enqueued and nothing that reads
            # the trials, the new trial is created as Study.ask would create it.
            trial = optuna.Trial(self.study, self.storage.create_new_trial(self._study_id))
        if confirms is not None or reused:  # the phase first: the config marks it complete
            trial.set_user_attr(CONFIRMS_ATTR, confirms)
        config = make_config(trial)
        trial.set_user_attr(CONFIG_ATTR, config)
        return trial.number, config

    def _storage_id(self, number: int) -> int:
        if number not in self._trial_ids:
            self._trial_ids[number] = self.storage.get_trial_id_from_study_id_trial_number(
                self._study_id, number
            )
        return self._trial_ids[number]

    def config(self, number: int) -> dict[str, Any]:
        """The exact config trial `number` trains with."""
        self.flush()
        return self.storage.get_trial_user_attrs(self._storage_id(number))[CONFIG_ATTR]

    def set_attr(self, number: int, key: str, value: Any) -> None:
        """Set a user attribute of a running trial (written behind)."""
        self._writes.submit(
            lambda: self.storage.set_trial_user_attr(self._storage_id(number), key, value)
        )

    def report(self, number: int, step: int, value: float) -> None:
        """Record an intermediate value of a running trial (single-objective studies keep them).
        A trial continued from a checkpoint reports some steps again, with the same values.
        Written behind."""
        if self.multi_objective or not math.isfinite(value) or number in self._ended:
            return
        if (number, step) not in self._reported:
            self._reported.add((number, step))
            self._writes.submit(
                lambda: self.storage.set_trial_intermediate_value(
                    self._storage_id(number), step, value
                )
            )

    def finish(
        self,
        number: int,
        outcome: str,
        *,
        last_step: int | None,
        values: list[float] | None = None,
        error: str | None = None,
    ) -> bool:
        """Tell the study how a trial ended (a Pico status) and at which step (None: before its
        first evaluation); False if it had already ended. Written behind: only running trials
        are handed out or stopped, and the driver is the study's only writer, so it knows which
        have ended without asking the storage."""
        if number in self._ended:
            return False
        self._ended.add(number)
        state = status.OPTUNA_STATE[outcome]

        def write() -> None:
            trial_id = self._storage_id(number)
            self.storage.set_trial_user_attr(trial_id, status.STATUS_ATTR, outcome)
            self.storage.set_trial_user_attr(trial_id, LAST_STEP_ATTR, last_step or 0)
            if error is not None:
                self.storage.set_trial_user_attr(trial_id, ERROR_ATTR, error)
            self.study.tell(number, values if state == TrialState.COMPLETE else None, state=state)

        self._writes.submit(write)
        return True


def rung_records(trials: list[FrozenTrial], milestones: list[float]) -> dict[float, dict]:
    """ASHA's records, milestone -> {trial id: val_loss}, as stored in the trials."""
    records: dict[float, dict[str, float]] = {m: {} for m in milestones}
    for trial in trials:
        for milestone in milestones:
            value = trial.user_attrs.get(RUNG_ATTR.format(milestone))
            if value is not None:
                records[milestone][trial_id_of(trial.number)] = float(value)
    return records
