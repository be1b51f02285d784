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

from launch.results import read_metadata
from launch.settings import SETTINGS_FILE

TINY_RUN = [
    "--space", "tiny", "--max-steps", "60", "--eval-interval", "10", "--eval-tokens", "256",
    "--grace-period", "10", "--corpus", "3seqs", "--tokenizer", "char", "--no-dashboard", "-q",
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
    """An experiment folder with a settings file and results, as a previous search leaves."""
    folder = tmp_path / "exp" / "old"
    folder.mkdir(parents=True)
    (folder / "pico").mkdir()
    (folder / SETTINGS_FILE).write_text('{"space": "tiny", "name": "old", "max_steps": 60}')
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
        (["--output", str(blocker / "results.parquet")], "cannot write the results file"),
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


def wait_for_results(path: Path, finished: int, process: subprocess.Popen, timeout=180) -> None:
    """Block until the results file shows `finished` trials that are no longer running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            last = pd.read_parquet(path, columns=["status", "is_last"]).query("is_last")
        except (OSError, ValueError):
            last = pd.DataFrame({"status": []})
        if (last.status != "running").sum() >= finished:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{path} never showed {finished} finished trials")


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


@pytest.mark.slow
def test_interrupt_and_kill_then_resume(repo_root, tmp_path):
    storage, name, samples = str(tmp_path / "exp"), "resumable", 8
    where = ["--storage", storage, "--name", name]
    results = tmp_path / "exp" / name / "results.parquet"

    # Ctrl+C: Tune stops gracefully, the command says how to resume and exits 130.
    process = start(repo_root, *where, "--num-samples", str(samples), *TINY_RUN)
    wait_for_results(results, 1, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "--resume" in out

    # Resume, then SIGKILL the driver mid-search.
    process = start(repo_root, *where, "--resume")
    wait_for_results(results, 4, process)
    kill_group(process)

    # Resume again: it finishes the requested trials, each exactly once.
    done = search(repo_root, *where, "--resume", "-q", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    df = pd.read_parquet(results)
    assert not df.duplicated(["trial_id", "step"]).any()
    last = df[df.is_last]
    assert last.trial_id.is_unique
    # Trials that ran after Tune last saved its state stay in the file, listed as untracked;
    # Tune ran as many new ones in their place.
    untracked = last.trial_id.isin(read_metadata(results)["untracked_trials"])
    assert (~untracked).sum() == samples
    assert set(last[~untracked].status) <= {"completed", "early_stopped", "errored"}
    assert set(last[untracked].status) <= {"completed", "early_stopped", "lost"}
    # Ray's limit (docs/search.md): a driver killed just after Tune deleted a trial's older
    # checkpoint, before it saved its state, leaves that trial nothing to resume from.
    errored = last[last.status == "errored"]
    assert len(errored) <= 1 and errored.error.str.contains("checkpoint").all(), errored.error
    study = optuna.load_study(
        study_name=name, storage=f"sqlite:///{tmp_path / 'exp' / name / 'optuna.db'}"
    )
    told = {
        t.user_attrs["tune_trial_id"]: t.state.name for t in study.trials if t.state.name != "FAIL"
    }
    assert set(told) == set(last.trial_id) - set(errored.trial_id)
    assert "RUNNING" not in told.values()
