"""An experiment's folder on any file system pyarrow opens: a local or shared folder, s3://, gs://.

    <storage>/<name>/
        experiment.json               where the study is (written once, when the search starts)
        study.journal                 the Optuna study, unless --optuna-storage names a database
        results.parquet               derived from the study and the trial folders (docs/results.md)
        trials/<trial id>/evals/<step>.json        one file per evaluation, written by the trial
        trials/<trial id>/checkpoints/step-<step>/ the trial's last two checkpoints

Each trial folder is written only by its trial, and every write is idempotent: a retried or
resumed trial writes the same files again. A file is written whole or not at all (a temporary file
and a rename on a local file system; object stores write each object whole), and a checkpoint
counts only once its `COMPLETE` marker exists, so a reader never sees half of either. Nothing here
is ever unpickled: evaluations are JSON and checkpoints load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from pico.files import write_atomic

MANIFEST = "experiment.json"
RESULTS = "results.parquet"
TRIALS = "trials"
COMPLETE_MARKER = "COMPLETE"
CHECKPOINTS_KEPT = 2


def is_uri(location: str) -> bool:
    """True for `scheme://...` storage, False for a local (or mounted shared) folder."""
    return "://" in location


class ExperimentStore:
    """Reads and writes one experiment's folder (`location` = `<storage>/<name>`)."""

    def __init__(self, location: str):
        self.location = location.rstrip("/")
        if is_uri(location):
            self.fs, self.root = pafs.FileSystem.from_uri(self.location)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(location).resolve())
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    # ---------------------------------------------------------------- paths and raw files

    def path(self, *parts: str) -> str:
        """The file system path of `parts` inside the experiment folder."""
        return "/".join([self.root, *parts])

    def uri(self, *parts: str) -> str:
        """How a person or another machine names `parts`: a local path, or a URI."""
        if not is_uri(self.location):
            return self.path(*parts)
        scheme = self.location.split("://", 1)[0]
        return f"{scheme}://{self.path(*parts)}"

    def exists(self, *parts: str) -> bool:
        """Whether the file or folder `parts` exists."""
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        """The content of file `parts`."""
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write file `parts` whole (see the module docstring); returns its path."""
        path = self.path(*parts)
        if self.local:
            write_atomic(Path(path), data)
        else:
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(path) as f:
                f.write(data)
        return path

    def list(self, *parts: str) -> list[str]:
        """Names of the entries directly inside folder `parts` (none if it does not exist)."""
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))

    # ----------------------------------------------------------------------- manifest

    def read_manifest(self) -> dict[str, Any] | None:
        """The experiment's manifest, or None where no experiment was started."""
        if not self.exists(MANIFEST):
            return None
        return json.loads(self.read_bytes(MANIFEST))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest of a new experiment."""
        self.write_bytes(json.dumps(manifest, indent=2).encode(), MANIFEST)

    # ---------------------------------------------------------------------- evaluations

    def write_eval(self, trial_id: str, record: dict[str, Any]) -> None:
        """Log one evaluation of a trial (its step names the file: a repeat replaces it)."""
        data = json.dumps(record, default=float).encode()
        self.write_bytes(data, TRIALS, trial_id, "evals", f"{int(record['step']):09d}.json")

    def read_evals(self, trial_id: str) -> list[dict[str, Any]]:
        """A trial's evaluations, by step."""
        names = [n for n in self.list(TRIALS, trial_id, "evals") if n.endswith(".json")]
        return [json.loads(self.read_bytes(TRIALS, trial_id, "evals", n)) for n in names]

    def trial_ids(self) -> list[str]:
        """The trials that have a folder."""
        return self.list(TRIALS)

    # ---------------------------------------------------------------------- checkpoints

    def checkpoint_steps(self, trial_id: str) -> list[int]:
        """Steps of the trial's complete checkpoints, oldest first."""
        steps = []
        for name in self.list(TRIALS, trial_id, "checkpoints"):
            complete = self.exists(TRIALS, trial_id, "checkpoints", name, COMPLETE_MARKER)
            if name.startswith("step-") and name[5:].isdigit() and complete:
                steps.append(int(name[5:]))
        return sorted(steps)

    def checkpoint_uri(self, trial_id: str, step: int) -> str:
        """Where the trial's checkpoint at `step` is kept."""
        return self.uri(TRIALS, trial_id, "checkpoints", f"step-{step:09d}")

    def save_checkpoint(self, trial_id: str, step: int, write: Any) -> str:
        """Write a checkpoint with `write(local_folder)`, mark it complete and drop all but the
        newest `CHECKPOINTS_KEPT`; returns where it is."""
        parts = (TRIALS, trial_id, "checkpoints", f"step-{step:09d}")
        if self.local:
            write(Path(self.path(*parts)))  # pico's save is a rename into place
        else:
            with tempfile.TemporaryDirectory(prefix="pico-ckpt-") as tmp:
                folder = write(Path(tmp) / "checkpoint")
                self.fs.create_dir(self.path(*parts), recursive=True)
                pafs.copy_files(str(folder), self.path(*parts), pafs.LocalFileSystem(), self.fs)
        self.write_bytes(b"", *parts, COMPLETE_MARKER)
        for old in self.checkpoint_steps(trial_id)[:-CHECKPOINTS_KEPT]:
            self.fs.delete_dir(self.path(TRIALS, trial_id, "checkpoints", f"step-{old:09d}"))
        return self.checkpoint_uri(trial_id, step)

    @contextmanager
    def latest_checkpoint(self, trial_id: str) -> Iterator[Path | None]:
        """The trial's newest complete checkpoint as a local folder (a copy for remote storage),
        or None if it has none."""
        steps = self.checkpoint_steps(trial_id)
        if not steps:
            yield None
            return
        path = self.path(TRIALS, trial_id, "checkpoints", f"step-{steps[-1]:09d}")
        if self.local:
            yield Path(path)
            return
        tmp = Path(tempfile.mkdtemp(prefix="pico-resume-"))
        try:
            pafs.copy_files(path, str(tmp), self.fs, pafs.LocalFileSystem())
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
