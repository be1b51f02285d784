"""A real Ray cluster on this machine: a head and two worker nodes, each its own `ray start`.

The nodes are separate raylets with their own node ids (on one IP), started the way cluster.yaml
starts them: the dashboard on 127.0.0.1 only and token authentication on. The search runs as
`launch/search.py --address ...` (or as a Ray job, as docs/cluster.md submits it) and the tests
check what a cluster user relies on: the dashboard shows the job and its trials, trials spread
over the nodes, a trial on a worker that dies resumes from its checkpoint elsewhere, and a
killed driver's search finishes with `--resume`; every trial ends up in the Parquet file once.

Every process started here is in a process group of its own and killed with it at the end, and
the cluster lives in its own temporary folder, so no other Ray instance on the machine is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from launch.cluster_dashboard import TRIAL_ACTOR_CLASS, Dashboard, describe
from pico.errors import PicoError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SEARCH = REPO / "launch" / "search.py"
NODE_START_TIMEOUT_S = 60
SEARCH_TIMEOUT_S = 150
# Tiny trials on the 3seqs corpus, run to the end (FIFO): about five seconds each, with an
# evaluation and a checkpoint every second or so, so that a node or a driver can be killed in the
# middle of one.
MAX_STEPS, EVAL_INTERVAL = 1200, 200
SEARCH_FLAGS = [
    "--space", "tiny", "--corpus", "3seqs", "--tokenizer", "char", "--sampler", "random",
    "--scheduler", "fifo", "--max-steps", str(MAX_STEPS), "--eval-interval", str(EVAL_INTERVAL),
    "--eval-tokens", "256", "--cpus-per-trial", "1", "--max-failures", "2",
]  # fmt: skip


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.5) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


@dataclass
class Node:
    """One `ray start --block` process: the leader of the process group of that node's daemons."""

    name: str
    process: subprocess.Popen
    log: Path
    port: int  # its raylet's port, which the dashboard lists with the node id


class LocalCluster:
    """A head and worker nodes on this machine, each started as on a real cluster."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.dashboard_port = free_port()
        self.nodes: list[Node] = []
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            # The head declares a node dead after 3 missed health checks a second apart.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        self.env.pop("RAY_ADDRESS", None)

    @property
    def address(self) -> str:
        """The head's GCS address, what `--address` takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> Dashboard:
        """A client of the head's dashboard, holding the cluster's token."""
        return Dashboard(f"http://127.0.0.1:{self.dashboard_port}", self.token)

    def _start(self, name: str, args: list[str]) -> Node:
        """Start one node and wait until it has joined (nodes start one at a time: Ray names
        each node's sockets by counting those already there)."""
        log = self.root / f"{name}.log"
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(),
        }
        command = ["ray", "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args]
        command += [f"{flag}={port}" for flag, port in ports.items()]
        with log.open("w") as out:
            process = subprocess.Popen(
                command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        node = Node(name, process, log, ports["--node-manager-port"])
        self.nodes.append(node)

        def joined() -> bool:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            return "Ray runtime started" in log.read_text()

        wait_for(joined, NODE_START_TIMEOUT_S, f"{name} to join the cluster")
        return node

    def start_head(self) -> Node:
        """The head: GCS, dashboard (on 127.0.0.1 only) and one CPU for trials."""
        return self._start(
            "head",
            [
                "--head",
                f"--port={self.port}",
                f"--temp-dir={self.root}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
            ],
        )

    def add_worker(self) -> Node:
        """A worker node with one CPU."""
        return self._start(f"worker{len(self.nodes)}", [f"--address={self.address}"])

    @property
    def workers(self) -> list[Node]:
        """The worker nodes started so far (alive or not)."""
        return self.nodes[1:]

    def node_ids(self) -> dict[str, Node]:
        """The node id of each node, as the dashboard lists them."""
        ports = {node.port: node for node in self.nodes}
        return {
            n["raylet"]["nodeId"]: ports[n["raylet"]["nodeManagerPort"]]
            for n in self.dashboard.nodes()
        }

    def kill(self, node: Node) -> None:
        """Kill the node and every process it started at once, as when a machine dies."""
        _kill_group(node.process)

    def search(self, *flags: str, log: Path) -> subprocess.Popen:
        """Start `launch/search.py` against this cluster, in a process group of its own."""
        command = [sys.executable, str(SEARCH), "--address", self.address, *SEARCH_FLAGS, "-q"]
        command += flags
        with log.open("w") as out:
            return subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def shutdown(self) -> None:
        """Kill every node, then any process still naming this cluster's folder."""
        for node in self.nodes:
            _kill_group(node.process)
        for pid in _pids_naming(str(self.root)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _pids_naming(text: str) -> list[int]:
    """The processes (Linux) with `text` in their command line."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
    return pids


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started with `start_new_session` and everything in its group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A head and two workers, one CPU each; everything it started is killed at the end."""
    # A short root: Ray's Unix sockets live under it, and their paths are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="pico-ray-", dir="/tmp"))
    local = LocalCluster(root)
    try:
        local.start_head()
        local.add_worker()
        local.add_worker()
        yield local
    finally:
        local.shutdown()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The experiments folder of this module's searches (every node sees it: one machine)."""
    return tmp_path_factory.mktemp("experiments")


def finish(process: subprocess.Popen, log: Path, timeout: float = SEARCH_TIMEOUT_S) -> None:
    """Wait for a search to exit with status 0; kill it and fail the test otherwise."""
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        pytest.fail(f"the search did not finish in {timeout} s:\n{log.read_text()[-3000:]}")
    finally:
        _kill_group(process)  # the driver's own children, if any are left
    assert code == 0, f"the search exited with {code}:\n{log.read_text()[-3000:]}"


def checkpointed_trials(experiment: Path) -> int:
    """How many trials of the experiment have written a checkpoint so far."""
    return len({path.parent for path in experiment.glob("*/checkpoint_*")})


def trial_results(experiment: Path) -> dict[str, list[dict]]:
    """Every result each trial reported so far, in order (Tune's `result.json` per trial)."""
    results = {}
    for path in experiment.glob("*/result.json"):
        lines = path.read_text().splitlines()
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            results[path.parent.name] = [json.loads(line) for line in lines]
    return results


def trials_once(
    results: Path, num_samples: int, every_evaluation: bool = True, max_steps: int = MAX_STEPS
) -> pd.DataFrame:
    """The results' last rows, after checking that every trial is there once, each evaluation
    at most once, and that every trial ran to the end (with all its evaluations)."""
    df = pd.read_parquet(results)
    assert not df.duplicated(["trial_id", "step"]).any()
    last = df[df.is_last].set_index("trial_id")
    assert len(last) == num_samples == df.trial_id.nunique()
    assert (last.status == "completed").all(), last.status.to_dict()
    assert (last.step == max_steps).all()
    if every_evaluation:
        assert (df.groupby("trial_id").size() == max_steps // EVAL_INTERVAL).all()
    return last


def test_the_dashboard_shows_the_job_and_its_trials(cluster: LocalCluster, storage: Path):
    dashboard = cluster.dashboard
    with pytest.raises(PicoError, match="401"):
        Dashboard(dashboard.url).jobs()  # no token, no access
    nodes = {node["raylet"]["nodeId"] for node in dashboard.nodes()}
    assert len(nodes) == 3

    # Submitted as docs/cluster.md does, through the job API on the dashboard's address.
    entrypoint = [sys.executable, str(SEARCH), "--address", "auto", *SEARCH_FLAGS]
    entrypoint += ["--name", "dash", "--storage", str(storage), "--num-samples", "3"]
    entrypoint += ["--max-concurrent", "3"]
    submit = ["ray", "job", "submit", "--address", dashboard.url, "--submission-id", "pico-dash"]
    subprocess.run(
        [*submit, "--no-wait", "--", *entrypoint], env=cluster.env, check=True, timeout=60
    )

    def job() -> dict:
        return next(j for j in dashboard.jobs() if j.get("submission_id") == "pico-dash")

    wait_for(lambda: job()["status"] in ("SUCCEEDED", "FAILED", "STOPPED"), SEARCH_TIMEOUT_S, "job")
    logs = dashboard.get("/api/jobs/pico-dash/logs")["logs"]
    assert job()["status"] == "SUCCEEDED", logs[-3000:]
    assert "launch/search.py" in job()["entrypoint"]

    # Each trial ran in an actor named after the experiment, on a node of this cluster, and the
    # trials spread over the nodes (one CPU each, three trials at once).
    actors = [a for a in dashboard.trial_actors() if a["job_id"] == job()["job_id"]]
    assert actors and all(a["class_name"] == TRIAL_ACTOR_CLASS for a in actors)
    assert {a["repr_name"] for a in actors} == {"pico_dash"}
    assert {a["node_id"] for a in actors} <= nodes
    assert len({a["node_id"] for a in actors}) >= 2
    assert any(line.startswith("job   pico-dash  SUCCEEDED") for line in describe(dashboard))
    # The job's log (the dashboard's Jobs page) names every trial by architecture and id.
    last = trials_once(storage / "dash" / "results.parquet", 3)
    for trial_id, row in last.iterrows():
        assert f"{row.arch}_{trial_id}" in logs


def test_a_trial_on_a_lost_worker_resumes_on_another_node(
    cluster: LocalCluster, storage: Path, tmp_path: Path
):
    experiment = storage / "lost"
    # Trials twice as long as elsewhere in this module, and a victim at most half-way: the
    # node dies seconds before the trial would have ended, even on a loaded machine.
    max_steps = 2 * MAX_STEPS
    flags = ["--name", "lost", "--storage", str(storage), "--num-samples", "4"]
    flags += ["--max-concurrent", "3", "--max-steps", str(max_steps)]
    search = cluster.search(*flags, log=tmp_path / "search.log")
    victim: dict[str, Any] = {}

    def trial_mid_way_on_a_worker() -> bool:
        """Find a trial with a checkpoint and evaluations still to come, running on a worker."""
        nodes = cluster.node_ids()
        actors = {
            a["pid"]: a["node_id"]
            for a in cluster.dashboard.trial_actors()
            if a["state"] == "ALIVE"
        }
        for results in trial_results(experiment).values():
            last = results[-1] if results else {}
            node = nodes.get(actors.get(last.get("pid")))
            if node in cluster.workers and last["step"] <= max_steps // 2:
                victim.update(trial=last["trial_id"], node_id=actors[last["pid"]], node=node)
                return True
        return False

    wait_for(trial_mid_way_on_a_worker, 90, "a trial mid-way on a worker node")
    cluster.kill(victim["node"])
    finish(search, tmp_path / "search.log")

    last = trials_once(experiment / "results.parquet", 4, max_steps=max_steps)
    assert last.loc[victim["trial"], "retries"] >= 1
    # It went on in a new actor on another node, from a checkpoint, not from step 0. It may be
    # the checkpoint before the last result's: Tune registers a result's checkpoint in a second
    # call to the actor, which a dying node may not answer. The evaluations after it are then
    # trained and reported again, and the results file holds each once (checked above).
    [reported] = [
        r for r in trial_results(experiment).values() if r[0]["trial_id"] == victim["trial"]
    ]
    after = [r for r in reported if r["pid"] != reported[0]["pid"]]
    assert after and after[0]["step"] > EVAL_INTERVAL and after[-1]["step"] == max_steps
    actors = {a["pid"]: a["node_id"] for a in cluster.dashboard.trial_actors()}
    assert actors[reported[0]["pid"]] == victim["node_id"]
    assert actors[after[0]["pid"]] != victim["node_id"]


def test_the_results_tell_the_nodes_apart(cluster: LocalCluster, storage: Path, tmp_path: Path):
    results = storage / "dash" / "results.parquet"
    if not results.exists():  # run alone: without the dashboard test's search
        flags = ["--name", "dash", "--storage", str(storage), "--num-samples", "3"]
        search = cluster.search(*flags, "--max-concurrent", "3", log=tmp_path / "search.log")
        finish(search, tmp_path / "search.log")
    # Every node of this one-machine cluster shares an IP (`node`); the node id tells them apart.
    assert pd.read_parquet(results).node_id.nunique() >= 2


def test_a_killed_driver_resumes_and_finishes(cluster: LocalCluster, storage: Path, tmp_path: Path):
    flags = ["--name", "driver", "--storage", str(storage)]
    log = tmp_path / "search.log"
    search = cluster.search(*flags, "--num-samples", "3", "--max-concurrent", "2", log=log)
    wait_for(lambda: checkpointed_trials(storage / "driver") >= 1, 90, "a first checkpoint")
    _kill_group(search)  # SIGKILL: no chance to save anything on the way out

    resumed = cluster.search(*flags, "--resume", log=tmp_path / "resume.log")
    finish(resumed, tmp_path / "resume.log")
    # Every evaluation survives too: those the killed driver had not yet exported are
    # recovered from the trials' own result logs.
    trials_once(storage / "driver" / "results.parquet", 3)
