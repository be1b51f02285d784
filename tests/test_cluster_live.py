"""A real Ray cluster on this machine: a head and two worker nodes, each its own `ray start`.

The nodes are separate raylets with their own node ids (on one IP), started the way cluster.yaml
starts them: the dashboard on 127.0.0.1 only and token authentication on. The search runs as
`launch/search.py --address ...` (or as a Ray job, as docs/cluster.md submits it) and the tests
check what a cluster user relies on: the dashboard shows the job and its trials, trials spread
over the nodes, a trial on a worker that dies resumes from its checkpoint elsewhere, a killed
driver's search finishes with `--resume`, and so does a search whose whole cluster was lost, from
the storage folder alone; every trial ends up once in the study and the Parquet file.

A search keeps its state in the storage folder (launch/storage.py): the Optuna study `study.journal`
and one folder per trial, `trials/<trial id>/`, with `evals/<step>.json` and
`checkpoints/step-<step>/`. The tests read those, as a user would, and nothing of Tune's.

Every process started here is in a process group of its own and killed with it at the end (with
any process that carries its cluster's token), and each cluster lives in its own temporary folder,
so no other Ray instance on the machine is touched.
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

import optuna
import pandas as pd
import pytest

from launch.cluster_dashboard import TRIAL_ACTOR_CLASS, Dashboard, describe
from launch.study import STUDY_FILE, open_storage
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
    "--eval-tokens", "256", "--cpus-per-trial", "1", "--max-failures", "2", "--no-confirm",
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

    def start_head(self, dashboard: bool = True) -> Node:
        """The head: GCS, dashboard (on 127.0.0.1 only, unless left out) and one CPU for
        trials."""
        return self._start(
            "head",
            [
                "--head",
                f"--port={self.port}",
                f"--temp-dir={self.root}",
                f"--include-dashboard={str(dashboard).lower()}",
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

    def search(
        self, *flags: str, log: Path, cwd: Path = REPO, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """Start `launch/search.py` against this cluster, in a process group of its own: a new
        search with this module's settings and `flags`, or `--resume` with only `flags`."""
        settings = [] if "--resume" in flags else SEARCH_FLAGS  # `flags` may override them
        command = [sys.executable, str(SEARCH), "--address", self.address, *settings, "-q"]
        command += flags
        with log.open("w") as out:
            return subprocess.Popen(
                command,
                cwd=cwd,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def processes(self) -> list[int]:
        """Every live process of this cluster: those naming its folder, and those holding its
        token (Ray's workers start sessions of their own and rename themselves `ray::...`)."""
        token = f"RAY_AUTH_TOKEN={self.token}".encode()
        pids = []
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                named = str(self.root).encode() in (proc / "cmdline").read_bytes()
                if named or token in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
        return pids

    def shutdown(self) -> None:
        """Kill every node, then every other process of this cluster; return once all are
        gone."""
        for node in self.nodes:
            _kill_group(node.process)

        def gone() -> bool:
            pids = self.processes()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            return not pids

        wait_for(gone, 30, "the cluster's processes to exit", poll=0.2)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started with `start_new_session` and everything in its group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def local_cluster(dashboard: bool = True) -> Iterator[LocalCluster]:
    """A head and two workers, one CPU each; everything it started is killed at the end, and
    its folder removed."""
    # A short root: Ray's Unix sockets live under it, and their paths are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="pico-ray-", dir="/tmp"))
    local = LocalCluster(root)
    try:
        local.start_head(dashboard)
        local.add_worker()
        local.add_worker()
        yield local
    finally:
        try:
            local.shutdown()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """The cluster this module's searches share (the head-loss test's search starts on one of
    its own)."""
    with local_cluster() as local:
        yield local


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


def running(process: subprocess.Popen, log: Path) -> None:
    """Fail the test if a search that should still be running has exited."""
    if process.poll() is not None:
        pytest.fail(f"the search exited early ({process.returncode}):\n{log.read_text()[-3000:]}")


def trial_folders(experiment: Path) -> list[Path]:
    """The experiment's trial folders, `trials/<trial id>/`, by trial id."""
    return sorted(path for path in (experiment / "trials").glob("*") if path.is_dir())


def checkpoint_steps(trial: Path) -> list[int]:
    """The steps of the trial folder's complete checkpoints (each has its `COMPLETE` marker)."""
    return sorted(int(path.parent.name[5:]) for path in trial.glob("checkpoints/step-*/COMPLETE"))


def newest_checkpoint(trial: Path) -> int:
    """The step of the trial folder's newest complete checkpoint (0 if it has none)."""
    return max(checkpoint_steps(trial), default=0)


def checkpointed_trials(experiment: Path) -> int:
    """How many trials of the experiment have written a checkpoint so far."""
    return sum(1 for trial in trial_folders(experiment) if checkpoint_steps(trial))


def evaluations(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    """Every evaluation each trial has logged so far, by step (each file is written whole)."""
    return {
        trial.name: [json.loads(path.read_text()) for path in sorted(trial.glob("evals/*.json"))]
        for trial in trial_folders(experiment)
    }


def study_states(experiment: Path) -> list[str]:
    """The Optuna state of each trial of the experiment's study, read while a search writes it
    (none before the study exists)."""
    if not (experiment / STUDY_FILE).is_file():
        return []
    try:
        return [trial.state.name for trial in study_trials(experiment).values()]
    except KeyError:  # the file is there, the study not yet
        return []


def study_trials(experiment: Path) -> dict[str, optuna.trial.FrozenTrial]:
    """The trials of the experiment's study (its default journal file), by trial id."""
    storage = open_storage(str(experiment / STUDY_FILE))
    study = optuna.load_study(study_name=experiment.name, storage=storage)
    return {f"{trial.number:05d}": trial for trial in study.trials}


def trials_once(
    experiment: Path, num_samples: int, every_evaluation: bool = True, max_steps: int = MAX_STEPS
) -> pd.DataFrame:
    """The results' last rows, after checking that the study and the results hold every trial
    once, the results each evaluation at most once, and that every trial ran to the end (with
    all its evaluations). A trial the study created but a killed driver left without its config
    gets its config on resume, in its own place: the study holds exactly the requested trials."""
    df = pd.read_parquet(experiment / "results.parquet")
    assert not df.duplicated(["trial_id", "step"]).any()
    last = df[df.is_last].set_index("trial_id")
    assert len(last) == num_samples == df.trial_id.nunique()
    assert (last.status == "completed").all(), last.status.to_dict()
    assert (last.step == max_steps).all()
    if every_evaluation:
        assert (df.groupby("trial_id").size() == max_steps // EVAL_INTERVAL).all()
    trials = study_trials(experiment)
    told = {i: (t.state.name, t.user_attrs.get("status")) for i, t in trials.items()}
    assert all("config" in t.user_attrs for t in trials.values()), told
    assert told == {trial_id: ("COMPLETE", "completed") for trial_id in last.index}, told
    return last


def files_of(folder: Path) -> dict[str, int]:
    """Every file under `folder`, with the time it was last written (ns)."""
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
    }


def head_machine(folder: Path) -> dict[str, Any]:
    """A driver's working folder, data cache and temporary folder (where Tune's scratch state
    goes), all under `folder`: what a search writes on the machine it runs on."""
    for sub in ("work", "cache", "tmp"):
        (folder / sub).mkdir(parents=True)
    env = {"PICO_CACHE": str(folder / "cache"), "TMPDIR": str(folder / "tmp")}
    return {"cwd": folder / "work", "env": env}


def test_a_lost_head_resumes_from_the_storage_alone(request: pytest.FixtureRequest, tmp_path: Path):
    """Head loss: the driver killed and the whole cluster stopped mid-search, and everything the
    search wrote outside its storage folder deleted; a new cluster resumes it from another
    working folder, and every requested trial ends up once, none lost and none rerun.

    The search runs on a cluster of its own, and resumes on the module's cluster, started only
    then (this test comes first): a new head that never saw it."""
    shared = tmp_path / "shared"  # stands in for shared storage, and holds the study: it survives
    # Four trials, three at a time, half as long as elsewhere in this module: when the first
    # ends, the others are part-way and the fourth is just starting.
    name, samples, max_steps = "headless", 4, MAX_STEPS // 2
    experiment = shared / name
    where = ["--name", name, "--storage", str(shared)]
    lost = tmp_path / "lost-head"  # the first head machine's own disk
    log = tmp_path / "search.log"
    with local_cluster(dashboard=False) as first:
        flags = [*where, "--num-samples", str(samples), "--max-concurrent", "3"]
        flags += ["--max-steps", str(max_steps)]
        search = first.search(*flags, log=log, **head_machine(lost))

        def mid_search() -> bool:
            """A trial told completed in the study, and one part-way with a checkpoint."""
            running(search, log)
            steps = [newest_checkpoint(trial) for trial in trial_folders(experiment)]
            part_way = any(0 < step < max_steps for step in steps)
            return part_way and "COMPLETE" in study_states(experiment)

        wait_for(mid_search, 120, "a completed trial and one part-way", poll=0.2)
        _kill_group(search)  # SIGKILL, then the whole cluster (leaving the block) the same way

    # What the storage holds after the loss: trials the study has completed, and trials cut
    # short, each with the steps of its newest checkpoint.
    before = study_trials(experiment)
    completed = {i for i, t in before.items() if t.user_attrs.get("status") == "completed"}
    newest = {trial.name: newest_checkpoint(trial) for trial in trial_folders(experiment)}
    finished = {i for i, step in newest.items() if step == max_steps}
    cut_short = {i: step for i, step in newest.items() if 0 < step < max_steps}
    assert completed and completed <= finished and cut_short, (completed, newest)
    # Finished trials must not be written again, nor evaluations up to a cut-short trial's newest
    # checkpoint (it continues from there).
    kept = {i: files_of(experiment / "trials" / i) for i in finished}
    for i, step in cut_short.items():
        evals = (experiment / "trials" / i).glob("evals/*.json")
        kept[i] = {f"evals/{e.name}": e.stat().st_mtime_ns for e in evals if int(e.stem) <= step}
    # Delete the driver's working folder, its data cache and its temporary folder (Tune's state).
    assert any((lost / "cache").iterdir()) and any((lost / "tmp").iterdir())
    shutil.rmtree(lost)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.log", "shared"]
    assert [p.name for p in shared.iterdir()] == [name]

    elsewhere = tmp_path / "new-head"
    cluster = request.getfixturevalue("cluster")  # a new head, and new workers
    resumed = cluster.search(
        *where, "--resume", log=tmp_path / "resume.log", **head_machine(elsewhere)
    )
    finish(resumed, tmp_path / "resume.log")

    trials_once(experiment, samples, max_steps=max_steps)
    for trial_id, files in kept.items():
        now = files_of(experiment / "trials" / trial_id)
        assert {n: now.get(n) for n in files} == files, trial_id
        if trial_id in finished:
            assert now == files, trial_id
    # The cut-short trials ended on the new cluster.
    evals = evaluations(experiment)
    assert {evals[i][-1]["node_id"] for i in cut_short} <= set(cluster.node_ids())


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

    # Each trial ran in an actor named after the experiment (and the trial it started with), on
    # a node of this cluster, and the trials spread over the nodes (one CPU each, three trials at
    # once).
    last = trials_once(storage / "dash", 3)
    names = {f"pico_dash trial {trial_id} ({row.arch})" for trial_id, row in last.iterrows()}
    actors = [a for a in dashboard.trial_actors() if a["job_id"] == job()["job_id"]]
    assert actors and all(a["class_name"] == TRIAL_ACTOR_CLASS for a in actors)
    assert {a["repr_name"] for a in actors} <= names | {"pico_dash"}
    assert {a["node_id"] for a in actors} <= nodes
    assert len({a["node_id"] for a in actors}) >= 2
    assert any(line.startswith("job   pico-dash  SUCCEEDED") for line in describe(dashboard))
    # The job's log (the dashboard's Jobs page) names every trial by architecture and id.
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
    log = tmp_path / "search.log"
    search = cluster.search(*flags, log=log)
    workers = {id_: node for id_, node in cluster.node_ids().items() if node in cluster.workers}
    victim: dict[str, Any] = {}

    def trial_mid_way_on_a_worker() -> bool:
        """Find a trial with a checkpoint and evaluations still to come, running on a worker
        (each evaluation names the node that ran it)."""
        running(search, log)
        for trial_id, evals in evaluations(experiment).items():
            last = evals[-1] if evals else {}
            checkpointed = checkpoint_steps(experiment / "trials" / trial_id)
            if checkpointed and last.get("node_id") in workers and last["step"] <= max_steps // 2:
                victim.update(trial=trial_id, node_id=last["node_id"])
                return True
        return False

    wait_for(trial_mid_way_on_a_worker, 90, "a trial mid-way on a worker node", poll=0.25)
    cluster.kill(workers[victim["node_id"]])
    finish(search, log)

    last = trials_once(experiment, 4, max_steps=max_steps)
    assert last.loc[victim["trial"], "retries"] >= 1
    assert study_trials(experiment)[victim["trial"]].user_attrs["retries"] >= 1
    # It went on in a new actor on another node, from its newest checkpoint, not from step 0:
    # the evaluations up to that checkpoint are the dead node's, those after it (logged again if
    # the node had logged them) are the new node's, up to the last.
    evals = evaluations(experiment)[victim["trial"]]
    nodes = [e["node_id"] for e in evals]
    assert nodes[0] == victim["node_id"] and nodes[-1] != victim["node_id"], nodes
    assert evals[-1]["step"] == max_steps
    assert last.loc[victim["trial"], "node_id"] == nodes[-1]
    assert nodes[-1] in cluster.node_ids()


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

    def checkpointed() -> bool:
        running(search, log)
        return checkpointed_trials(storage / "driver") >= 1

    wait_for(checkpointed, 90, "a first checkpoint", poll=0.25)
    _kill_group(search)  # SIGKILL: no chance to save anything on the way out

    resumed = cluster.search(*flags, "--resume", log=tmp_path / "resume.log")
    finish(resumed, tmp_path / "resume.log")
    # Every evaluation survives too: those the killed driver had not yet written to the results
    # file are in the trials' folders, and the study tells which trials were still running.
    trials_once(storage / "driver", 3)
