"""The experiment folder on a local disk and on an object store (an in-memory fsspec file system
standing in for S3): evaluations, checkpoints and the manifest, each written whole."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pyarrow.fs as pafs
import pytest

from launch.storage import ExperimentStore


def object_store() -> ExperimentStore:
    """A store whose file system is not local, as with s3:// (no renames, whole objects)."""
    store = ExperimentStore("/bucket/exp")
    memory = fsspec.filesystem("memory")
    memory.store.clear()
    store.fs, store.root, store.local = (
        pafs.PyFileSystem(pafs.FSSpecHandler(memory)),
        "/bucket/exp",
        False,
    )
    return store


@pytest.fixture(params=["local", "object store"])
def store(request, tmp_path) -> ExperimentStore:
    return ExperimentStore(str(tmp_path / "exp")) if request.param == "local" else object_store()


def fake_save(content: str):
    """What pico's `save(folder)` does, in miniature: write a folder, return it."""

    def save(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.pt").write_text(content)
        return folder

    return save


def test_evaluations_are_one_file_each_and_a_repeat_replaces_its_step(store):
    assert store.read_evals("00001") == [] and store.trial_ids() == []
    for step, loss in ((10, 3.0), (20, 2.5), (10, 2.9)):
        store.write_eval("00001", {"step": step, "val_loss": loss})
    assert store.read_evals("00001") == [
        {"step": 10, "val_loss": 2.9}, {"step": 20, "val_loss": 2.5}
    ]  # fmt: skip
    assert store.trial_ids() == ["00001"]


def test_only_complete_checkpoints_count_and_two_are_kept(store):
    for step in (10, 20, 30):
        path = store.save_checkpoint("00001", step, fake_save(f"weights {step}"))
        assert path.endswith(f"step-{step:09d}")
    assert store.checkpoint_steps("00001") == [20, 30]
    # A checkpoint without its marker (cut short mid-upload) is ignored.
    store.fs.create_dir(store.path("trials", "00001", "checkpoints", "step-000000040"))
    assert store.checkpoint_steps("00001") == [20, 30]
    with store.latest_checkpoint("00001") as folder:
        assert (folder / "model.pt").read_text() == "weights 30"
    with store.latest_checkpoint("00002") as folder:
        assert folder is None


def test_the_manifest_round_trips(store):
    assert store.read_manifest() is None
    store.write_manifest({"format": 1, "study": None})
    assert store.read_manifest() == {"format": 1, "study": None}
