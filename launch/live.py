"""Where to watch a running search: Ray's dashboard and the study in optuna-dashboard.

Ray's dashboard runs whenever Ray does (this machine's, or the cluster head's, bound to its
loopback address) and asks for Ray's token (launch/exposure.py keeps it on): `watch_lines` says
where it is and which command prints the token.

`--live` starts optuna-dashboard on the search's study, on 127.0.0.1 only, for as long as the
search runs (`optuna_dashboard`). A database password never reaches its command line (where
`ps` would show it): it goes to the child's environment as `PGPASSWORD`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from launch.study import is_journal, redact, without_password
from pico.errors import PicoError

TOKEN_COMMAND = "ray get-auth-token"
DASHBOARD_START_TIMEOUT_S = 30.0


def watch_lines(dashboard_url: str | None, remote: bool, study_url: str) -> list[str]:
    """What the search prints at its start about where to watch it."""
    lines = []
    if dashboard_url:
        url = dashboard_url if "://" in dashboard_url else f"http://{dashboard_url}"
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            token = f"; its token: `{TOKEN_COMMAND}`"
        else:
            token = " (token authentication is off in this environment)"
        where = " on the cluster's head (from your machine: `ray dashboard cluster.yaml`)"
        lines.append(f"watch: Ray dashboard {url}{where if remote else ''}{token}")
    lines.append(f"watch: optuna-dashboard {redact(without_password(study_url))}")
    return lines


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def optuna_dashboard(study_url: str, log_path: str | None = None) -> Iterator[str]:
    """Run optuna-dashboard on the study, on 127.0.0.1, until the block ends; yields its URL."""
    program = shutil.which("optuna-dashboard")
    if program is None:
        raise PicoError("--live needs optuna-dashboard: pip install optuna-dashboard")
    from sqlalchemy.engine import make_url

    env = dict(os.environ)
    if not is_journal(study_url) and not study_url.startswith("sqlite"):
        password = make_url(study_url).password
        if password:
            env["PGPASSWORD"] = password
    port = free_port()
    command = [program, without_password(study_url), "--host", "127.0.0.1", "--port", str(port)]
    log = open(log_path or os.devnull, "ab")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_for_port(port: int, process: subprocess.Popen) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + DASHBOARD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PicoError(f"optuna-dashboard exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    print("note: optuna-dashboard is slow to start; the search goes on", file=sys.stderr)
