"""The dashboard client without Ray: which token it sends, and how it reads and fails.

A stand-in dashboard (a local HTTP server that answers the three routes with recorded shapes)
checks the client's requests; tests/test_cluster_live.py checks it against a real dashboard.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from launch.cluster_dashboard import TRIAL_ACTOR_CLASS, Dashboard, auth_token, describe, main
from pico.errors import PicoError

TOKEN = "s3cret"
NODE = {"ip": "10.0.0.1", "raylet": {"nodeId": "n1", "state": "ALIVE", "isHeadNode": True}}
JOB = {"submission_id": "pico-1", "job_id": "01000000", "status": "RUNNING", "entrypoint": "x"}
ACTORS = [
    {"class_name": TRIAL_ACTOR_CLASS, "repr_name": "pico_demo", "state": "ALIVE", "node_id": "n1"},
    {"class_name": "JobSupervisor", "repr_name": "", "state": "ALIVE", "node_id": "n1"},
]
ROUTES = {
    "/nodes?view=summary": {"result": True, "data": {"summary": [NODE]}},
    "/api/jobs/": [JOB],
    "/api/v0/actors?detail=1&limit=10000": {"data": {"result": {"result": ACTORS}}},
}


class FakeDashboard(BaseHTTPRequestHandler):
    """Answers ROUTES to requests that carry the bearer token; 401 otherwise."""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_error(401, "Unauthorized")
        elif self.path not in ROUTES:
            self.send_error(404, "Not Found")
        else:
            body = json.dumps(ROUTES[self.path]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep the test output clean
        return None


@pytest.fixture
def url() -> Iterator[str]:
    """The address of a FakeDashboard on a free local port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeDashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_no_token_unless_token_mode(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    assert auth_token() is None


def test_token_sources_in_rays_order(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    with pytest.raises(PicoError, match="ray get-auth-token --generate"):
        auth_token()
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert auth_token() == "from-home"
    (tmp_path / "other").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "other"))
    assert auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_token() == "from-env"


def test_reads_nodes_jobs_and_trial_actors(url: str):
    dashboard = Dashboard(url, TOKEN)
    assert dashboard.nodes() == [NODE]
    assert dashboard.jobs() == [JOB]
    assert dashboard.trial_actors() == ACTORS[:1]
    assert describe(dashboard) == [
        "node  n1  ALIVE  head   10.0.0.1",
        "job   pico-1  RUNNING   x",
        "trial pico_demo  ALIVE  node n1",
    ]


def test_errors_are_one_line(url: str):
    with pytest.raises(PicoError, match="HTTP 401"):
        Dashboard(url).jobs()
    with pytest.raises(PicoError, match="cannot reach the Ray dashboard"):
        Dashboard("http://127.0.0.1:1", TOKEN, timeout=2).jobs()


def test_command_line_prints_the_cluster(url: str, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    assert main(["--url", url]) == 0
    assert "trial pico_demo" in capsys.readouterr().out
