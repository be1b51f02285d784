"""What a search exposes: Ray's token authentication stays on, a local search listens on loopback
only, and AWS keys in the environment reach no file the search or Ray writes."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from launch import exposure
from pico.errors import PicoError

CANARY_KEY_ID = "AKIAPICOCANARY000001"
CANARY_SECRET = "pico-canary-secret-4f9c2e7a1b"
CANARY_TOKEN = "pico-canary-session-token-77d1"
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_token_auth_is_turned_on_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    exposure.require_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    exposure.require_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


def test_local_search_moves_aws_keys_to_a_private_credentials_file(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.delenv("AWS_SHARED_CREDENTIALS_FILE", raising=False)
    monkeypatch.setenv("AWS_PROFILE", "pico")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CANARY_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", CANARY_TOKEN)
    exposure.check_aws_keys(None)  # a local search accepts them
    with exposure.prepare_environment(None):
        assert not any(name in os.environ for name in exposure.AWS_KEY_VARIABLES)
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
        path = Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        # The standard AWS lookup (botocore's, as the C++ SDK pyarrow uses) finds the keys there.
        import botocore.session

        credentials = botocore.session.Session(profile="pico").get_credentials()
        assert (credentials.access_key, credentials.secret_key) == (CANARY_KEY_ID, CANARY_SECRET)
        assert credentials.token == CANARY_TOKEN
    assert not path.parent.exists()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == CANARY_SECRET  # given back to the caller
    assert "AWS_SHARED_CREDENTIALS_FILE" not in os.environ


def test_cluster_search_refuses_aws_keys_and_changes_nothing(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY_SECRET)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    with pytest.raises(PicoError, match=r"AWS_SECRET_ACCESS_KEY is set.*instance profile"):
        exposure.check_aws_keys("head:6379")
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    with pytest.raises(PicoError, match="instance profile"):
        exposure.check_aws_keys(None)
    with exposure.prepare_environment(None):
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == CANARY_SECRET
        assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ


def test_cluster_search_with_aws_keys_is_one_line_and_exit_2(repo_root, tmp_path):
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": CANARY_SECRET}
    result = subprocess.run(
        [sys.executable, "launch/search.py", "--address", "127.0.0.1:1", "--storage",
         str(tmp_path / "exp")],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "instance profile" in result.stderr
    assert CANARY_SECRET not in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- a real local search


def listening_sockets(root_pid: int) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket listened on by `root_pid` or a
    descendant, read from /proc (Linux)."""
    inodes = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            inodes[fields[9]] = (socket.inet_ntop(family, raw), int(port, 16))
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat_fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            parents[int(pid)] = int(stat_fields[1])  # after the name: state, then parent pid
        except (OSError, IndexError, ValueError):
            continue
    family_pids, grew = {root_pid}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in family_pids}
        grew = not children <= family_pids
        family_pids |= children
    found = set()
    for pid in family_pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in inodes:
                found.add((*inodes[link[8:-1]], name))
    return found


def files_containing(root: Path, needles: list[str]) -> list[str]:
    """Every file under `root` whose bytes contain one of `needles`."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {n}" for n in needles if n.encode() in data]
    return hits


@pytest.mark.slow
def test_local_search_listens_on_loopback_and_leaks_no_aws_key(repo_root):
    # Short paths: Ray's Unix sockets live in its temporary folder and must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="pex-", dir="/tmp"))
    try:
        for folder in ("ray", "tmp", "work"):
            (root / folder).mkdir()
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")},
            "RAY_AUTH_MODE": "token",  # as a user runs it
            "RAY_TMPDIR": str(root / "ray"),  # Ray's session folder and its logs
            "TMPDIR": str(root / "tmp"),  # Tune's scratch and anything else temporary
            "HOME": str(root / "work"),  # Ray's token file, caches
            "AWS_ACCESS_KEY_ID": CANARY_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": CANARY_SECRET,
            "AWS_SESSION_TOKEN": CANARY_TOKEN,
        }
        command = [
            sys.executable, str(repo_root / "launch" / "search.py"), "--space", "tiny",
            "--num-samples", "1", "--max-steps", "20", "--eval-interval", "10",
            "--eval-tokens", "128", "--grace-period", "10", "--corpus", "3seqs",
            "--tokenizer", "char", "--storage", str(root / "work" / "exp"), "--name", "canary",
            "--cache-dir", str(root / "work" / "cache"), "--no-confirm",
        ]  # fmt: skip
        process = subprocess.Popen(
            command, cwd=root / "work", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        seen: set[tuple[str, int, str]] = set()
        while process.poll() is None:  # sample while Ray runs; ports come and go
            seen |= listening_sockets(process.pid)
            time.sleep(0.2)
        out, err = process.communicate()
        assert process.returncode == 0, out[-2000:] + err[-2000:]

        # Ray's control plane, raylet, workers and dashboard all listened, all on loopback.
        names = {name for _, _, name in seen}
        assert {"gcs_server", "raylet"} <= names, seen
        assert {address for address, _, _ in seen} <= LOOPBACK, seen

        # No canary anywhere: Ray's session logs (the runtime-env agent's among them), the
        # experiment, Tune's scratch, the caches, stdout and stderr.
        logs = list((root / "ray").rglob("*.log")) + list((root / "ray").rglob("*.err"))
        assert any(path.stat().st_size for path in logs)  # the scan covered real logs
        assert list((root / "ray").rglob("runtime_env_agent*"))
        assert (root / "work" / "exp" / "canary" / "results.parquet").exists()
        canaries = [CANARY_KEY_ID, CANARY_SECRET, CANARY_TOKEN]
        assert files_containing(root, canaries) == []
        assert not any(canary in out + err for canary in canaries)
    finally:
        shutil.rmtree(root, ignore_errors=True)
