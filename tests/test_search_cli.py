"""The search command line: bad input is one line and exit 2 with nothing lost; an interrupted or
killed search resumes and finishes with every trial exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from launch.settings import SearchSettings
from launch.storage import MANIFEST
from launch.study import STUDY_FILE, SearchStudy, is_journal, open_storage
from pico.errors import PicoError

TINY_RUN = [
    "--space", "tiny", "--max-steps", "60", "--eval-interval", "10", "--eval-tokens", "256",
    "--grace-period", "10", "--corpus", "3seqs", "--tokenizer", "char", "--no-dashboard", "-q",
    "--no-confirm",
]  # fmt: skip


def search(repo_root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    command = [sys.executable, "launch/search.py", *args]
    return subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def existing(tmp_path) -> Path:
    """An experiment folder with its study, manifest and results, as a previous search leaves."""
    folder = tmp_path / "exp" / "old"
    folder.mkdir(parents=True)
    settings = SearchSettings(space="tiny", name="old", max_steps=60, storage=str(folder.parent))
    SearchStudy.create(settings.study_location, "old", ["minimize"], settings.to_dict(), {})
    (folder / MANIFEST).write_text('{"format": 1, "study": null}')
    (folder / "results.parquet").write_bytes(b"precious")
    return folder


BAD_INPUT = [
    (["--space", "nope"], "unknown search space 'nope'; choose one of: kgram_mlp"),
    (["--objectives", "val_loss,speed"], "unknown objective 'speed'"),
    (["--sampler", "annealing"], "unknown sampler 'annealing'; choose one of: tpe"),
    (["--wandb", "maybe"], "unknown wandb mode"),
    (["--num-samples", "0"], "--num-samples must be positive"),
    (["--max-steps", "-5"], "--max-steps must be positive"),
    (["--time-budget", "0"], "--time-budget must be positive"),
    (["--max-steps", "20", "--grace-period", "50"], "must not exceed --max-steps"),
    (["--name", "nothere", "--resume"], "nothing to resume: no experiment 'nothere'"),
    (["--resume"], "--resume needs --name"),
    (["--export"], "--export needs --name"),
    (["--name", "nothere", "--export"], "nothing to resume: no experiment 'nothere'"),
    (["--name", "old", "--resume", "--export"], "pass one of them"),
    (["--storage", "s3://bucket/searches"], "pass --optuna-storage postgresql://"),
    (["--name", "old", "--resume", "--max-steps", "99"], "conflicting flags"),
    (["--name", "old"], "already exists"),
    (["--space", "seed22", "--warm-start"], "--space seed22 runs only them"),
    (["--scheduler", "fifo", "--grace-period", "5"], "drop --scheduler fifo"),
    (["--objectives", "val_loss,n_params", "--sampler", "gp"], "optimises one objective"),
    (["--cpus-per-trial", "64"], "exceeds this machine"),
    (["-q", "-v"], "not allowed with argument"),
    (["--max-steps", "ten"], "invalid int value"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=lambda v: " ".join(v)[:40])
def test_bad_input_is_one_line_and_exit_2(repo_root, tmp_path, existing, args, message):
    result = search(repo_root, "--storage", str(tmp_path / "exp"), *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert (existing / "results.parquet").read_bytes() == b"precious"  # nothing lost


def test_unwritable_paths_and_unreachable_cluster(repo_root, tmp_path, existing):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    output = tmp_path / "taken.parquet"
    output.write_bytes(b"precious")
    cases = [
        (["--storage", str(blocker / "sub")], "cannot write the experiment"),
        (["--output", str(blocker / "results.parquet")], "cannot write --output"),
        (["--output", str(output)], "already exists: choose another --output"),
        (["--address", f"127.0.0.1:{free_port()}"], "cannot reach a Ray cluster"),
        (["--address", "nonsense"], "--address must be host:port"),
    ]
    for args, message in cases:
        start = time.monotonic()
        result = search(repo_root, "--storage", str(tmp_path / "exp"), *args, *TINY_RUN)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and time.monotonic() - start < 30
    assert output.read_bytes() == b"precious"


def wait_for_ended(
    location: str, name: str, ended: int, process: subprocess.Popen, timeout: float = 180
) -> None:
    """Block until the study at `location` (a journal file or a database URL) shows `ended`
    trials that are no longer running. The study is read, not the results file: the driver
    writes the study within a fraction of a second of each result and the results file only
    every few seconds, so a test that waits on the study signals the search while most of its
    trials are still to come."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        # Not there yet: the journal file (opening it would create it), or the study in it.
        with contextlib.suppress(KeyError, OSError, PicoError):
            if is_journal(location) and not Path(location).is_file():
                raise KeyError(location)
            trials = optuna.load_study(study_name=name, storage=open_storage(location)).trials
            if sum(t.state != optuna.trial.TrialState.RUNNING for t in trials) >= ended:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the study {name} never showed {ended} ended trials")


def start(repo_root: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "launch/search.py", *args]
    return subprocess.Popen(
        command, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the driver; then make sure nothing it started (Ray) outlives it."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def study_and_results(storage: Path, name: str) -> tuple[dict, pd.DataFrame]:
    """Pico status of every study trial, and the results file's last rows, by trial id."""
    study = SearchStudy.load(str(storage / name / STUDY_FILE), name).study
    told = {f"{t.number:05d}": t.user_attrs.get("status", t.state.name) for t in study.trials}
    last = pd.read_parquet(storage / name / "results.parquet").query("is_last")
    return told, last.set_index("trial_id")


@pytest.mark.slow
def test_interrupt_and_kill_then_resume(repo_root, tmp_path):
    storage, name, samples = tmp_path / "exp", "resumable", 8
    where = ["--storage", str(storage), "--name", name]
    results, study = storage / name / "results.parquet", str(storage / name / STUDY_FILE)
    # Trials long enough (a few seconds each) that the search is still running when signalled.
    longer = ["--max-steps", "300", "--eval-interval", "20", "--grace-period", "40"]

    # Ctrl+C: Tune stops gracefully, the command says how to resume and exits 130.
    process = start(repo_root, *where, "--num-samples", str(samples), *TINY_RUN, *longer)
    wait_for_ended(study, name, 1, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "--resume" in out

    # Resume, then SIGKILL the driver mid-search.
    process = start(repo_root, *where, "--resume")
    wait_for_ended(study, name, 4, process)
    kill_group(process)

    # Resume again, from another working directory: it finishes the requested trials, each
    # exactly once, and the study and the results file agree on every one.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, str(repo_root / "launch" / "search.py"), *where, "--resume", "-q"],
        cwd=elsewhere, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Tune writes no logs of its own for each trial, and does not warn that they are missing.
    assert "Failed to fetch metrics" not in done.stderr, done.stderr[-3000:]
    df = pd.read_parquet(results)
    assert not df.duplicated(["trial_id", "step"]).any()
    told, last = study_and_results(storage, name)
    assert len(told) == samples and set(told) == set(last.index)
    assert set(last.status) <= {"completed", "early_stopped"}
    assert told == last.status.to_dict()
    # The rebuilt file is the live one: the results are a function of the study and trial folders.
    rebuilt = tmp_path / "rebuilt.parquet"
    export = search(repo_root, *where, "--export", "--output", str(rebuilt))
    assert export.returncode == 0, export.stderr
    assert pd.read_parquet(rebuilt).equals(df)
