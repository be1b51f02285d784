"""The cluster form of the search against a real database: a private PostgreSQL server (Debian's
`postgresql`, which setup.sh installs) holds the study; a search is killed and resumed with only
`--storage` and `--name`, and the database password is never printed or stored."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_search_cli import wait_for_ended

from launch.storage import MANIFEST, RESULTS

USER, DATABASE, SERVICE_USER = "pico", "pico_studies", "nobody"
TINY_RUN = [
    "--space", "tiny", "--max-steps", "60", "--eval-interval", "10", "--eval-tokens", "256",
    "--grace-period", "10", "--corpus", "3seqs", "--tokenizer", "char", "--no-dashboard", "-q",
    "--no-confirm",
]  # fmt: skip


# ----------------------------------------------------------------------------- the server


def server_binaries() -> Path:
    """The folder of PostgreSQL's server programs; the test fails (not skips) without them."""
    candidates = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        candidates.append(Path(bindir))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    if shutil.which("postgres"):
        candidates.append(Path(shutil.which("postgres")).resolve().parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    pytest.fail(
        "PostgreSQL's server programs (initdb, pg_ctl, postgres) are missing: run ./setup.sh as "
        "root, or apt-get install postgresql"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    port: int
    password: str
    socket_dir: Path

    def url(self, password: str | None = None) -> str:
        """The SQLAlchemy URL of the test database, with `password` (the real one by default)."""
        secret = self.password if password is None else password
        return f"postgresql+psycopg2://{USER}:{secret}@127.0.0.1:{self.port}/{DATABASE}"


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        todo += children.get(current, [])
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Server]:
    """A PostgreSQL server of this module's own: on 127.0.0.1 at a free port and a unix socket
    in its folder, scram-sha-256 passwords over TCP, one role with a password and its database.
    Run by an unprivileged user when the tests run as root (the server refuses root)."""
    try:
        import psycopg2
    except ImportError:
        pytest.fail("the psycopg2 driver is missing: pip install -e '.[dev]'")
    bindir = server_binaries()
    as_service = ["runuser", "-u", SERVICE_USER, "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="pico-pg-"))
    data, socket_dir, log = home / "data", home / "socket", home / "server.log"
    socket_dir.mkdir()
    if as_service:
        for path in (home, socket_dir):
            shutil.chown(path, SERVICE_USER)

    def service(*command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*as_service, *command], cwd=home, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout}{result.stderr}"
        return result

    server = Server(free_port(), "pw" + secrets.token_hex(12), socket_dir)
    service(
        str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
        "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync",
    )  # fmt: skip
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={server.port} "
        f"-c unix_socket_directories={socket_dir} -c fsync=off "
        "-c password_encryption=scram-sha-256"
    )
    started = False
    try:
        service(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"
        )
        started = True
        admin = psycopg2.connect(
            host=str(socket_dir), port=server.port, user="postgres", dbname="postgres"
        )
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE ROLE {USER} LOGIN PASSWORD %s", (server.password,))
            cursor.execute(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        admin.close()
        yield server
    finally:
        postmaster = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            postmaster = int((data / "postmaster.pid").read_text().split()[0])
        processes = descendants(postmaster) if postmaster else set()
        if started:
            subprocess.run(
                [*as_service, str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"],
                cwd=home, capture_output=True, timeout=60,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in processes if alive(pid)]
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)
        assert not survivors, f"PostgreSQL processes outlived pg_ctl stop: {survivors}"


# ----------------------------------------------------------------------------- the search


def environment(password: str | None = None, scratch: Path | None = None) -> dict[str, str]:
    """The search's environment: offline and quiet, a password only where `password` says
    (PGPASSWORD; no ~/.pgpass is read), and temporary files (Tune's, Ray's) in `scratch`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
    env["PGPASSFILE"] = os.devnull
    if password is not None:
        env["PGPASSWORD"] = password
    if scratch is not None:
        env["TMPDIR"] = str(scratch)
    return env


def start(repo_root: Path, *args: str, scratch: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "launch/search.py", *args]
    return subprocess.Popen(
        command, cwd=repo_root, env=environment(scratch=scratch), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def run(
    repo_root: Path,
    cwd: Path,
    *args: str,
    password: str | None = None,
    scratch: Path | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess:
    command = [sys.executable, str(repo_root / "launch" / "search.py"), *args]
    return subprocess.run(
        command, cwd=cwd, env=environment(password, scratch), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def kill_group(process: subprocess.Popen) -> tuple[str, str]:
    """SIGKILL the driver, then whatever it started (Ray); returns what it printed."""
    process.send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=30)
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return out, err


@pytest.fixture(scope="module")
def killed_and_resumed(postgres, repo_root, tmp_path_factory) -> Iterator[dict]:
    """A search with its study in PostgreSQL, SIGKILLed mid-search, then resumed with only
    --storage and --name (the password in PGPASSWORD) from another working directory; both
    keep their temporary files (Tune's scratch state, Ray's session) in `scratch`."""
    tmp = tmp_path_factory.mktemp("postgres-search")
    scratch = Path(tempfile.mkdtemp(prefix="pico-pgs-"))  # short: Ray's sockets live here
    storage, name, samples = tmp / "exp", "clustered", 6
    where = ["--storage", str(storage), "--name", name]
    # Trials long enough (a second or two each) that the search is still running when killed.
    # Long enough that the kill lands mid-search on an idle machine too.
    longer = ["--max-steps", "400", "--eval-interval", "20", "--grace-period", "40"]
    try:
        first = start(
            repo_root, *where, "--optuna-storage", postgres.url(), "--num-samples", str(samples),
            *TINY_RUN, *longer, scratch=scratch,
        )  # fmt: skip
        try:
            wait_for_ended(postgres.url(), name, 2, first, timeout=240)
        finally:
            out, err = kill_group(first)
        cut_short = optuna.load_study(study_name=name, storage=postgres.url()).trials
        ended = [t for t in cut_short if t.state != optuna.trial.TrialState.RUNNING]
        assert 2 <= len(ended) < samples, "the search ended before the kill: lengthen the trials"
        elsewhere = tmp / "elsewhere"
        elsewhere.mkdir()
        resumed = run(
            repo_root, elsewhere, *where, "--resume", "-q", password=postgres.password,
            scratch=scratch, timeout=300,
        )  # fmt: skip
        yield {
            "storage": storage,
            "name": name,
            "samples": samples,
            "scratch": scratch,
            "first": (out, err),
            "resumed": resumed,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.slow
def test_killed_search_resumes_from_the_database(postgres, killed_and_resumed):
    done = killed_and_resumed["resumed"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    storage, name = killed_and_resumed["storage"], killed_and_resumed["name"]
    assert not (storage / name / "study.db").exists()  # the study is in PostgreSQL
    df = pd.read_parquet(storage / name / RESULTS)
    assert not df.duplicated(["trial_id", "step"]).any()
    last = df.query("is_last").set_index("trial_id")
    assert not last.index.duplicated().any()

    study = optuna.load_study(study_name=name, storage=postgres.url())
    told = {f"{t.number:05d}": t.user_attrs.get("status", t.state.name) for t in study.trials}
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(killed_and_resumed["samples"]))  # each trial exactly once
    assert set(told) == set(last.index)
    assert set(last.status) <= {"completed", "early_stopped"}
    assert told == last.status.to_dict()
    assert study.user_attrs.get("ended_at")


@pytest.mark.slow
def test_the_password_is_never_printed_or_stored(postgres, killed_and_resumed):
    secret = postgres.password
    done = killed_and_resumed["resumed"]
    printed = [*killed_and_resumed["first"], done.stdout, done.stderr]
    assert not any(secret in text for text in printed)
    assert not any(postgres.url() in text for text in printed)

    folder = killed_and_resumed["storage"] / killed_and_resumed["name"]
    manifest = (folder / MANIFEST).read_text()
    assert secret not in manifest and f"{USER}@127.0.0.1:{postgres.port}" in manifest
    results = folder / RESULTS
    assert secret.encode() not in results.read_bytes()
    table = pq.read_table(results)
    metadata = b"".join(k + v for k, v in (table.schema.metadata or {}).items())
    assert secret.encode() not in metadata
    assert secret not in table.to_pandas().to_csv()
    # The trial folders, and what the killed driver left behind: Tune's scratch state (which
    # pickles the searcher, scheduler and callbacks) and Ray's session files and logs.
    for root in (folder, killed_and_resumed["scratch"]):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert secret.encode() not in path.read_bytes(), path
    assert list(killed_and_resumed["scratch"].glob("pico-tune-*/*/tuner.pkl"))  # it was looked at

    study = optuna.load_study(study_name=killed_and_resumed["name"], storage=postgres.url())
    assert secret not in repr(study.user_attrs)
    assert {"settings", "metadata"} <= set(study.user_attrs)
    assert "***" in study.user_attrs["metadata"]["optuna_storage"]
    assert secret not in repr([t.user_attrs for t in study.trials])


@pytest.mark.slow
def test_a_wrong_password_is_one_line_and_exit_2(postgres, killed_and_resumed, repo_root):
    storage, name = killed_and_resumed["storage"], killed_and_resumed["name"]
    wrong = "wrong" + secrets.token_hex(8)
    before = (storage / name / RESULTS).read_bytes()
    result = run(
        repo_root, repo_root, "--storage", str(storage), "--name", name, "--resume",
        "--optuna-storage", postgres.url(wrong), timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "cannot open the Optuna storage" in result.stderr
    assert "password authentication failed" in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert postgres.password not in result.stdout + result.stderr
    assert (storage / name / RESULTS).read_bytes() == before  # nothing touched
