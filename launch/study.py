"""The Optuna study: the one record of a search (docs/design.md).

It holds the search's settings and metadata (study user attributes, JSON), every trial with its
parameters and exact config (`config`), its Pico status (launch/status.py), its intermediate
values, final values, error and retries, and ASHA's rung records (`asha_rung_<step>`). Only the
driver writes it, through `SearchStudy`; trials write only their own folders (launch/storage.py).

A trial belongs to a phase: `search` (the sampler's, the default) or `confirm` (a rerun of a
search trial's config with a fresh seed, `confirms` naming that trial: launch/confirm.py). The
confirmation runs only after the search phase has asked for all its trials, so no sampler decision
ever sees a confirmation trial, and search-phase counts (`asked`) leave them out.

The study lives in SQLite inside the experiment folder (`study.db`), or in the database that
`--optuna-storage` names (PostgreSQL or MySQL on a cluster). A database URL's password is never
stored or printed: `redact` shows it as `***`, and the manifest keeps the URL without it, so that a
resume takes the password from where the database client looks for it (`PGPASSWORD`, `~/.pgpass`)
or from `--optuna-storage` given again.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from launch import status
from pico.errors import PicoError

STUDY_FILE = "study.db"
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


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna storage at `url`; one PicoError line if it cannot be opened."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy and the database drivers raise many kinds
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if url.startswith("sqlite") else " (a password goes in PGPASSWORD or ~/.pgpass)"
        raise PicoError(f"cannot open the Optuna storage {redact(url)}: {reason}{hint}") from None
    if url.startswith("sqlite"):
        _sync_less_often(storage.engine)
    return storage


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


class SearchStudy:
    """The study of one experiment, and every write the driver makes to it."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage):
        self.study = study
        self.storage = storage
        self._study_id = storage.get_study_id_from_name(study.study_name)
        self._trial_ids: dict[int, int] = {}  # trial number -> storage id
        # The driver is the study's only writer, so it knows without asking the database which
        # trials it has ended and which steps it has reported.
        self._ended: set[int] = set()
        self._reported: set[tuple[int, int]] = set()
        self._unconfigured: list[int] | None = None  # read at the first `ask`
        self.multi_objective = len(study.directions) > 1

    def __getstate__(self) -> dict[str, Any]:
        """A pickle keeps where the study is, without the password, and no connection: Tune
        pickles its searcher, scheduler and callbacks into its scratch state (never read back,
        and left behind by a killed driver), where the storage would carry the password."""
        url = getattr(self.storage, "url", None)
        where = without_password(url) if isinstance(url, str) else None
        return {**self.__dict__, "study": None, "storage": None, "where": where}

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
        storage = open_storage(url)
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
        return cls(study, storage)

    @classmethod
    def load(cls, url: str, name: str) -> SearchStudy:
        """The existing study `name` at `url`; PicoError if there is none."""
        sqlite_file = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
        if sqlite_file and not Path(sqlite_file).is_file():  # SQLite would make an empty one
            raise PicoError(f"the study file {sqlite_file} is missing: no study {name!r} to load")
        storage = open_storage(url)
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise PicoError(f"the Optuna storage {redact(url)} holds no study {name!r}") from None
        return cls(study, storage)

    def use_sampler(self, sampler: optuna.samplers.BaseSampler) -> None:
        """Sample new trials with `sampler` (samplers keep no state that needs saving)."""
        self.study.sampler = sampler

    @property
    def settings(self) -> dict[str, Any]:
        """The search settings the study was created with."""
        return self.study.user_attrs[SETTINGS_ATTR]

    @property
    def metadata(self) -> dict[str, Any]:
        """The experiment metadata, with `ended_at` once the search has ended."""
        attrs = self.study.user_attrs
        return {**attrs.get(METADATA_ATTR, {}), ENDED_AT_ATTR: attrs.get(ENDED_AT_ATTR)}

    def save_settings(self, settings: dict[str, Any]) -> None:
        """Replace the stored settings (a resume that asks for a confirmation stage)."""
        self.study.set_user_attr(SETTINGS_ATTR, settings)

    def mark_ended(self, when: str) -> None:
        """Record that the search has ended (every trial finished, or a budget ran out)."""
        self.study.set_user_attr(ENDED_AT_ATTR, when)

    # ------------------------------------------------------------------ trials

    def trials(self) -> list[FrozenTrial]:
        """Every trial, in order of creation."""
        return self.study.get_trials(deepcopy=False)

    def asked(self, phase: str = SEARCH) -> int:
        """How many trials of `phase` were created with a config (enqueued ones wait until
        asked)."""
        return sum(CONFIG_ATTR in t.user_attrs and phase_of(t) == phase for t in self.trials())

    def unfinished(self, phase: str | None = None) -> list[int]:
        """Numbers of the trials (of `phase`, or all) that were given a config and have not
        ended."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [
            t.number
            for t in running
            if CONFIG_ATTR in t.user_attrs and phase in (None, phase_of(t))
        ]

    def confirms(self, number: int) -> str | None:
        """The trial id that trial `number` confirms (None for a search trial)."""
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
        it does not stay in the study beside the trial that replaces it."""
        if self._unconfigured is None:
            self._unconfigured = self.unconfigured()
        if self._unconfigured:
            number = self._unconfigured.pop(0)
            trial = optuna.Trial(self.study, self._storage_id(number))
            reused = True
        else:
            trial = self.study.ask()
            reused = False
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
        return self.storage.get_trial_user_attrs(self._storage_id(number))[CONFIG_ATTR]

    def set_attr(self, number: int, key: str, value: Any) -> None:
        """Set a user attribute of a running trial."""
        self.storage.set_trial_user_attr(self._storage_id(number), key, value)

    def report(self, number: int, step: int, value: float) -> None:
        """Record an intermediate value of a running trial (single-objective studies keep them).
        A trial continued from a checkpoint reports some steps again, with the same values."""
        if self.multi_objective or not math.isfinite(value) or number in self._ended:
            return
        if (number, step) not in self._reported:
            self.storage.set_trial_intermediate_value(self._storage_id(number), step, value)
            self._reported.add((number, step))

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
        first evaluation); False if it had already ended."""
        trial_id = self._storage_id(number)
        if number in self._ended or self.storage.get_trial(trial_id).state != TrialState.RUNNING:
            return False
        self._ended.add(number)
        self.storage.set_trial_user_attr(trial_id, status.STATUS_ATTR, outcome)
        self.storage.set_trial_user_attr(trial_id, LAST_STEP_ATTR, last_step or 0)
        if error is not None:
            self.storage.set_trial_user_attr(trial_id, ERROR_ATTR, error)
        state = status.OPTUNA_STATE[outcome]
        self.study.tell(number, values if state == TrialState.COMPLETE else None, state=state)
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
