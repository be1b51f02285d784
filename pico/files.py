"""Writing files so that a reader or a crash only ever sees the old content or the new, whole;
and checking, before any work, that an output can be written without touching what exists."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from pico.errors import PicoError

# Read once, at import, while the process is single-threaded: os.umask can only be read by setting
# it, which would briefly change it for every other thread.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint")  # a run folder's own


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`.

    The file gets the mode an ordinary write would give it (0666 less the umask), not the 0600 of
    the temporary file, so that a report or results file can be served or shared.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a Pico checkpoint (see pico/checkpoint.py)."""
    return (folder / "model.pt").is_file() and (folder / "meta.json").is_file()


def is_run(folder: Path) -> bool:
    """Whether `folder` holds a training run (launch/train.py --out), finished or not."""
    return any((folder / name).exists() for name in RUN_FILES)


def check_output(
    path: Path, flag: str, *, inputs: Iterable[Path] = (), folder: bool = False
) -> None:
    """PicoError unless `path` can be written as an output (a file; a folder with `folder`)
    without writing over an input, into a checkpoint, or over a run's own files. Creates nothing.
    """
    resolved = path.resolve()
    for given in inputs:
        if resolved == Path(given).resolve():
            raise PicoError(f"{flag} {path} is the input file {given}: choose another {flag}")
    if folder and path.is_file():
        raise PicoError(f"{flag} {path} is a file: give a folder's path")
    if not folder and path.is_dir():
        raise PicoError(f"{flag} {path} is a folder: give a file's path")
    for parent in (resolved, *resolved.parents):
        if is_checkpoint(parent):
            raise PicoError(
                f"{flag} {path} lies inside checkpoint {parent}: write outside it (a checkpoint "
                "holds only what training wrote)"
            )
    if resolved.name in RUN_FILES and is_run(resolved.parent):
        raise PicoError(
            f"{flag} {path} is the run's own {resolved.name} in {resolved.parent}: choose another "
            f"{flag}"
        )
    reason = unwritable_reason(path)
    if reason:
        raise PicoError(f"cannot write {flag} {path}: {reason}")


def unwritable_reason(path: Path) -> str | None:
    """Why `path` could not be created (a file in the way, a folder not writable), or None.
    Creates nothing: the folders are made only once every input has been checked."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path.absolute() and not existing.is_dir():
        return f"it lies under the file {existing}"
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable"
    return None
