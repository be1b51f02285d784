"""Reruns and resumes train on exactly the data their run trained on, or refuse in one line.

A search over a corpus cut with `max_docs` is rerun with the command the search prints: the
rerun rebuilds the same data from the results file and reproduces the trial's metrics bit for
bit. When the corpus has changed since, the rerun (and a resumed run) refuses to train.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

import search_spaces
from launch.experiment import run_search
from launch.settings import SearchSettings
from launch.summary import summary_lines
from launch.train import main as rerun_main
from pico.cli.train import main as train_main
from pico.errors import run_cli

TINY = {
    "arch": "kv_transformer",
    "d_model": 16,
    "n_layer": 1,
    "n_head": 2,
    "batch_size": 8,
    "block_size": 32,
    "warmup_steps": 0,
    "lr": 1e-2,
    "min_lr": 1e-3,
}
TIMING = ("tokens_per_s", "elapsed_s")
MAX_DOCS = 12


def fixed_space(trial: optuna.Trial) -> dict:
    return dict(TINY)


def write_corpus(folder: Path) -> Path:
    """30 documents that differ from one another, so that `max_docs` changes the data."""
    folder.mkdir()
    for i in range(30):
        lines = (
            f"line {j} of document {i}: {'abcdefgh'[(i * j) % 8] * (1 + j % 5)}" for j in range(40)
        )
        (folder / f"doc_{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def search(ray_session, tmp_path_factory) -> dict:
    """One finished one-trial search on the first MAX_DOCS documents of a folder corpus."""
    root = tmp_path_factory.mktemp("rerun")
    settings = SearchSettings(
        space="fixed",
        name="exp",
        storage=str(root / "experiments"),
        num_samples=1,
        max_steps=20,
        eval_interval=10,
        eval_tokens=256,
        scheduler="fifo",
        sampler="random",
        corpus=str(write_corpus(root / "corpus")),
        tokenizer="char",
        max_docs=MAX_DOCS,
        cache_dir=str(root / "cache"),
        max_concurrent=1,
        confirm_top=0,
        confirm_seeds=0,
        cpus_per_trial=1,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(search_spaces.SPACES, "fixed", fixed_space)
        outcome = run_search(settings, verbosity=0)
    rerun = next(
        line for line in summary_lines(settings, outcome.table) if line.startswith("rerun:")
    )
    df = pd.read_parquet(settings.results_path)
    return {
        "root": root,
        "settings": settings,
        # The printed command without its `python launch/train.py`.
        "argv": shlex.split(rerun.removeprefix("rerun:"))[2:],
        "last": df[df.is_last].iloc[0],
    }


def run_in_process(main, argv: list[str]) -> int:
    """A command line's exit status, leaving torch's thread count as it was."""
    threads = torch.get_num_threads()
    try:
        return run_cli(main, [str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)


def errors(capsys: pytest.CaptureFixture) -> list[str]:
    """The error lines on stderr (the data layer also prints what it prepares there)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_the_printed_rerun_command_reproduces_the_trial_exactly(search, tmp_path):
    last, cache = search["last"], search["settings"].cache_dir
    assert last.status == "completed" and last.hp_max_docs == MAX_DOCS
    out = tmp_path / "rerun"
    assert (
        run_in_process(rerun_main, [*search["argv"], "--out", out, "--cache-dir", cache, "-q"]) == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    compared = [name for name in summary if name in last.index and name not in TIMING]
    assert "val_loss" in compared and "val_bpb" in compared
    for name in compared:
        assert summary[name] == last[name], name


def test_a_rerun_refuses_when_the_corpus_has_changed(search, tmp_path, capsys):
    first = Path(search["settings"].corpus) / "doc_00.txt"
    original = first.read_text()
    first.write_text(original.replace("line", "LINE"))
    try:
        argv = [*search["argv"], "--out", tmp_path / "rerun", "--cache-dir", tmp_path / "cache"]
        assert run_in_process(rerun_main, argv) == 2
    finally:
        first.write_text(original)
    [error] = errors(capsys)
    assert "has changed since" in error and f"trial {search['last'].trial_id} of" in error
    assert not (tmp_path / "rerun").exists()


def test_a_resume_refuses_when_the_corpus_has_changed(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    out, cache = tmp_path / "run", tmp_path / "cache"
    flags = ["--out", out, "--cache-dir", cache, "-q", "--corpus", corpus, "--tokenizer", "char"]
    small = ["--d-model", "16", "--n-layer", "1", "--n-head", "2", "--block-size", "16"]
    steps = ["--batch-size", "4", "--max-steps", "4", "--eval-interval", "2", "--eval-tokens", "64"]
    assert run_in_process(train_main, [*flags, *small, *steps, "--num-threads", "1"]) == 0
    (corpus / "doc_29.txt").write_text("a different last document\n")
    capsys.readouterr()
    resume = ["--out", out, "--cache-dir", cache, "--resume", "--max-steps", "6", "-q"]
    assert run_in_process(train_main, resume) == 2
    [error] = errors(capsys)
    assert f"the checkpoint in {out}" in error
    # Refused before anything was touched: the run's records stop where they stopped.
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
