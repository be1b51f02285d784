"""The study's journal file, its appends gathered while the study's write thread is busy.

Optuna's `JournalStorage` appends each change to its journal as one write (a lock, an open, a
write, an fsync) and reads the file back to apply it. During a search the driver makes about ten
changes per trial, from the one thread that writes the study behind Tune's loop (`WriteBehind` in
launch/study.py). While that thread `hold`s the journal, `BufferedJournal` keeps the changes in
memory, and `flush` (the thread's, a fraction of a second after the first change it kept, or a
read of the study's) appends them in one write. Optuna's storage sees each change as soon as it
is made: `read_logs` serves the logs not yet in the file after those in it. Outside a hold every
append goes to the file at once, as Optuna's own backend does. A lock makes every method safe
from any thread.

The driver must be the journal's only writer (launch/study.py says why it is): the file is read
only for logs it holds that the storage has not read, and new logs are numbered after them.
Other processes (optuna-dashboard, `--export` of a running search) read the file, and see a batch
once it is appended. A driver killed outright loses the batch it had not appended.
"""

from __future__ import annotations

import threading
from typing import Any

from optuna.storages.journal import BaseJournalBackend, JournalFileBackend


class BufferedJournal(BaseJournalBackend):
    """A journal file whose appends wait in memory during a hold (module docstring)."""

    def __init__(self, path: str):
        self._file = JournalFileBackend(path)
        self._in_file: int | None = None  # logs in the file that were read; None: read it
        self._pending: list[dict[str, Any]] = []
        self._holding = False
        self._lock = threading.Lock()

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        """The logs numbered `log_number_from` and after: the file's, then the pending ones."""
        with self._lock:
            number, logs = log_number_from, []
            if self._in_file is None or number < self._in_file:
                logs = list(self._file.read_logs(number))
                number += len(logs)
                self._in_file = number
            return logs + self._pending[number - self._in_file :]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Keep `logs` until `flush` during a hold; else append them now."""
        with self._lock:
            if self._holding:
                self._pending.extend(logs)
            else:
                self._file.append_logs(logs)
                self._in_file = None  # the next read takes them from the file

    @property
    def pending(self) -> int:
        """How many logs wait for `flush`."""
        return len(self._pending)

    def hold(self) -> None:
        """Keep appends in memory until `flush`."""
        with self._lock:
            self._holding = True

    def flush(self) -> None:
        """Append the pending logs to the file in one write, and end the hold."""
        with self._lock:
            if self._pending:
                self._file.append_logs(self._pending)
                assert self._in_file is not None  # a read came before any pending log
                self._in_file += len(self._pending)
                self._pending = []
            self._holding = False
