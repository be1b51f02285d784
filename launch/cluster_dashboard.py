"""What the Ray dashboard shows of a search, read over its HTTP API: nodes, jobs and trial actors.

`python launch/cluster_dashboard.py` prints one line per node, job and Tune trial actor of the
cluster whose dashboard is at `--url` (default http://127.0.0.1:8265, where `ray dashboard
cluster.yaml` forwards the head's dashboard). It is the terminal's view of the dashboard's Cluster,
Jobs and Actors pages, and what the cluster tests read to check that a search shows up there.

When the cluster has token authentication on (`RAY_AUTH_MODE=token`, as in cluster.yaml), every
request carries the token Ray's own command line would send: `RAY_AUTH_TOKEN`, else the file named
by `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pico.errors import ArgumentParser, PicoError, run_cli

DEFAULT_URL = "http://127.0.0.1:8265"
# The class Ray Tune gives a function trainable's actors (every Pico trial is one).
TRIAL_ACTOR_CLASS = "ImplicitFunc"


def auth_token() -> str | None:
    """The token Ray's clients send when `RAY_AUTH_MODE=token`, else None (no authentication)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not path.is_file():
        raise PicoError(
            f"RAY_AUTH_MODE=token but no token in {path}: set RAY_AUTH_TOKEN or run "
            "`ray get-auth-token --generate`"
        )
    return path.read_text().strip()


class Dashboard:
    """A client of one Ray dashboard's HTTP API (the routes its web pages read)."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def get(self, path: str) -> Any:
        """GET `path` and decode its JSON; PicoError with the status on an HTTP error."""
        request = urllib.request.Request(self.url + path)
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise PicoError(f"{self.url}{path}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise PicoError(f"cannot reach the Ray dashboard at {self.url}: {exc}") from None

    def nodes(self) -> list[dict[str, Any]]:
        """The Cluster page: one summary per node (`raylet.nodeId`, `raylet.state`, `ip`, ...)."""
        return self.get("/nodes?view=summary")["data"]["summary"]

    def jobs(self) -> list[dict[str, Any]]:
        """The Jobs page: submitted jobs and drivers (`submission_id`, `job_id`, `status`, ...)."""
        return self.get("/api/jobs/")

    def actors(self, limit: int = 10_000) -> list[dict[str, Any]]:
        """The Actors page: every actor, live or dead, in detail (`class_name`, `repr_name`,
        `state`, `node_id`, `job_id`, ...)."""
        reply = self.get(f"/api/v0/actors?detail=1&limit={limit}")
        return reply["data"]["result"]["result"]

    def trial_actors(self) -> list[dict[str, Any]]:
        """The actors that ran Tune trials."""
        return [actor for actor in self.actors() if actor["class_name"] == TRIAL_ACTOR_CLASS]


def describe(dashboard: Dashboard) -> list[str]:
    """One line per node, job and trial actor, as the dashboard's pages list them."""
    lines = []
    for node in dashboard.nodes():
        raylet = node["raylet"]
        role = "head" if raylet.get("isHeadNode") else "worker"
        lines.append(f"node  {raylet['nodeId']}  {raylet['state']:<6} {role:<6} {node['ip']}")
    for job in dashboard.jobs():
        name = job.get("submission_id") or job.get("job_id")
        lines.append(f"job   {name}  {job['status']:<9} {job.get('entrypoint', '')}")
    for actor in dashboard.trial_actors():
        name = actor.get("repr_name") or actor["class_name"]
        lines.append(f"trial {name}  {actor['state']:<6} node {actor['node_id']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the cluster's nodes, jobs and trial actors as the dashboard shows them."""
    parser = ArgumentParser(
        prog="launch/cluster_dashboard.py",
        description="List a Ray cluster's nodes, jobs and Tune trial actors from its dashboard.",
        epilog="Example: ray dashboard cluster.yaml & python launch/cluster_dashboard.py",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"dashboard URL [{DEFAULT_URL}]")
    args = parser.parse_args(argv)
    for line in describe(Dashboard(args.url, auth_token())):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
