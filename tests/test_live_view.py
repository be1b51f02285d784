"""The live view: the lines that say where to watch a search, `--live`'s optuna-dashboard, and both
dashboards seen in headless Chromium during a real search, with Ray's token authentication on as a
user gets it.

The browser is driven over the Chrome DevTools Protocol (aiohttp's websocket client, installed with
Ray): no browser-automation package is needed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from test_report import png_is_blank

from launch import live
from launch.study import STUDY_FILE, open_storage
from pico.errors import PicoError

REPO = Path(__file__).resolve().parents[1]
NAME = "live-view"  # the experiment: its trial actors show `pico_live-view trial <id> (<arch>)`
# Unbounded for this test (it ends the search with Ctrl+C once it has seen what it checks), and
# long trials, so that some end complete while others are pruned at ASHA's first rungs.
SEARCH = [
    sys.executable,
    "launch/search.py",
    *("--space", "tiny", "--corpus", "3seqs", "--tokenizer", "char", "--eval-tokens", "256"),
    *("--max-steps", "1000", "--eval-interval", "50", "--grace-period", "50"),
    *("--num-samples", "500", "--name", NAME, "--live"),
]
STARTUP_S = 300.0  # imports, data, Ray and both dashboards, on a busy 2-core machine
PAGE_S = 180.0  # a dashboard page, from navigation to the text it must show
STOP_S = 180.0  # from Ctrl+C to the search's exit
REPR = re.compile(rf"pico_{re.escape(NAME)} trial (\d{{5}}) \((\w+)\)")
WATCH_RAY = re.compile(
    r"^watch: Ray dashboard (http://127\.0\.0\.1:\d+); its token: `ray get-auth-token`$"
)
WATCH_OPTUNA = re.compile(r"^watch: optuna-dashboard /\S+/study\.journal$")
LIVE = re.compile(
    r"^live:  optuna-dashboard at (http://127\.0\.0\.1:(\d+)) \(until the search ends\)$"
)


# ------------------------------------------------------------------ what the search prints


def test_watch_lines_on_this_machine(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert live.watch_lines("127.0.0.1:8265", False, "sqlite:////x/demo/study.db") == [
        "watch: Ray dashboard http://127.0.0.1:8265; its token: `ray get-auth-token`",
        "watch: optuna-dashboard sqlite:////x/demo/study.db",
    ]


def test_watch_lines_on_a_cluster_say_how_to_reach_the_head(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    ray_line, optuna_line = live.watch_lines(
        "http://127.0.0.1:8265", True, "postgresql://pico:secret@db.internal/pico"
    )
    assert ray_line == (
        "watch: Ray dashboard http://127.0.0.1:8265 on the cluster's head (from your machine: "
        "`ray dashboard cluster.yaml`); its token: `ray get-auth-token`"
    )
    assert optuna_line == "watch: optuna-dashboard postgresql://pico@db.internal/pico"


def test_watch_lines_without_a_dashboard_or_without_token_auth(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert live.watch_lines(None, False, "sqlite:///s.db") == [
        "watch: optuna-dashboard sqlite:///s.db"
    ]
    (ray_line, _) = live.watch_lines("127.0.0.1:8265", False, "sqlite:///s.db")
    assert ray_line.endswith("(token authentication is off in this environment)")
    assert "get-auth-token" not in ray_line


# ------------------------------------------------------------------ trial actors


def test_trial_actors_are_named_after_the_experiment_and_the_trial():
    from ray._raylet import PythonFunctionDescriptor

    from launch.cluster_dashboard import TRIAL_ACTOR_CLASS
    from launch.experiment import named_trainable

    trainable = named_trainable("demo", {"cpu": 1, "gpu": 0.25})
    # The class Ray's dashboard shows, and that launch/cluster_dashboard.py looks for.
    assert PythonFunctionDescriptor.from_class(trainable).class_name == TRIAL_ACTOR_CLASS
    resources = trainable.default_resource_request({}).required_resources
    assert resources == {"CPU": 1, "GPU": 0.25}
    actor = trainable.__new__(trainable)  # what repr reads, without starting a trial
    assert repr(actor) == "pico_demo"
    actor.config = {"arch": "lstm", "_pico": {"trial_id": "00003"}}
    assert repr(actor) == "pico_demo trial 00003 (lstm)"


# ------------------------------------------------------------------ --live's optuna-dashboard

# Stands in for optuna-dashboard: records how it was started, then serves HTTP where it was told.
FAKE_DASHBOARD = """\
#!{python}
import http.server, json, os, sys
args = sys.argv[1:]
record = {{"argv": args, "PGPASSWORD": os.environ.get("PGPASSWORD")}}
open({record!r}, "w").write(json.dumps(record))
if {exit_at_once}:
    sys.exit(3)
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
http.server.HTTPServer((host, port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def fake_dashboard(folder: Path, exit_at_once: bool = False) -> Path:
    """An `optuna-dashboard` program in `folder`; returns the file it records its start in."""
    record = folder / "started.json"
    program = folder / "optuna-dashboard"
    program.write_text(
        FAKE_DASHBOARD.format(python=sys.executable, record=str(record), exit_at_once=exit_at_once)
    )
    program.chmod(0o755)
    return record


def port_is_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def test_live_dashboard_runs_on_loopback_for_the_block_only(tmp_path, monkeypatch):
    record = fake_dashboard(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    study = "postgresql://pico:s3cret@db.internal/pico"
    with live.optuna_dashboard(study) as url:
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", url)
        assert match, url
        port = int(match[1])
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
    assert not port_is_open(port)  # stopped when the block ended
    started = json.loads(record.read_text())
    assert started["argv"] == [
        "postgresql://pico@db.internal/pico",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    assert started["PGPASSWORD"] == "s3cret"  # in its environment, never on its command line


def test_live_dashboard_that_fails_to_start_is_an_error(tmp_path, monkeypatch):
    fake_dashboard(tmp_path, exit_at_once=True)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with (
        pytest.raises(PicoError, match="optuna-dashboard exited with status 3"),
        live.optuna_dashboard("sqlite:///study.db"),
    ):
        pass


def test_live_without_optuna_dashboard_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with (
        pytest.raises(PicoError, match="pip install optuna-dashboard"),
        live.optuna_dashboard("sqlite:///study.db"),
    ):
        pass


# ------------------------------------------------------------------ a real search, in a browser


class Lines:
    """The lines a process prints, read as they come (in a thread) so that a test can wait for
    one without blocking on the pipe."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern, timeout: float) -> re.Match:
        """The first line that matches `pattern`, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if match := pattern.search(line):
                        return match
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    tail = "\n".join(self.lines[-40:])
                    raise AssertionError(
                        f"no line matches {pattern.pattern!r}; last lines:\n{tail}"
                    )
                self._changed.wait(left)

    def text(self) -> str:
        """Everything read so far (all of it once the process has exited and `join` returned)."""
        with self._changed:
            return "\n".join(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """End a process started with its own session, and whatever it started there."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, if any
    process.wait()


@contextmanager
def chromium(profile: Path) -> Iterator[int]:
    """Headless Chromium with the DevTools Protocol on a port of its choice; yields the port."""
    profile.mkdir(parents=True)
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1600,1000",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        port_file = profile / "DevToolsActivePort"  # written once it listens
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, f"chromium exited with status {process.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.2)
        yield int(port_file.read_text().split()[0])
    finally:
        stop_group(process)


class Page:
    """One browser tab, driven over the DevTools Protocol."""

    def __init__(self, socket_: Any) -> None:
        self._socket = socket_
        self._next_id = 0

    async def send(self, method: str, **params: Any) -> dict:
        """Call a DevTools method and return its result (events that arrive meanwhile are
        dropped: no domain is enabled, so few come)."""
        self._next_id += 1
        ask = self._next_id
        await self._socket.send_json({"id": ask, "method": method, "params": params})
        while True:
            reply = json.loads((await self._socket.receive()).data)
            if reply.get("id") == ask:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def text_when(self, ready: Callable[[str], bool], timeout: float = PAGE_S) -> str:
        """The page's visible text once `ready` accepts it."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = await self.evaluate("document.body ? document.body.innerText : ''") or ""
            if ready(text):
                return text
            await asyncio.sleep(0.5)
        raise AssertionError(f"the page never showed what was expected; it shows:\n{text[:3000]}")

    async def screenshot(self, path: Path, clip: dict | None = None) -> Path:
        """A PNG of the viewport, or of `clip` (page coordinates, CSS pixels)."""
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            params.update(clip={**clip, "scale": 1}, captureBeyondViewport=True)
        path.write_bytes(
            base64.b64decode((await self.send("Page.captureScreenshot", **params))["data"])
        )
        return path

    async def box_of_text(self, pattern: str) -> dict:
        """The page box of the innermost element whose text matches the regex `pattern`,
        scrolled into view."""
        found = await self.evaluate(
            textwrap.dedent(
                f"""
                (() => {{
                  const pattern = new RegExp({json.dumps(pattern)});
                  const hits = [...document.querySelectorAll("body *")].filter(
                    (e) => pattern.test(e.innerText || "") && e.children.length === 0);
                  if (!hits.length) return null;
                  hits[0].scrollIntoView({{block: "center"}});
                  const r = hits[0].getBoundingClientRect();
                  return {{x: r.left + window.scrollX, y: r.top + window.scrollY,
                           width: r.width, height: r.height}};
                }})()
                """
            )
        )
        assert found and found["width"] > 0 and found["height"] > 0, f"no visible {pattern!r}"
        return found


class open_page:
    """`async with open_page(port) as page`: a new tab, closed at the end."""

    def __init__(self, devtools_port: int) -> None:
        self.port = devtools_port

    async def __aenter__(self) -> Page:
        import aiohttp

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            self.target = json.load(response)
        self.session = aiohttp.ClientSession()
        socket_ = await self.session.ws_connect(self.target["webSocketDebuggerUrl"], max_msg_size=0)
        return Page(socket_)

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        urllib.request.urlopen(
            f"http://127.0.0.1:{self.port}/json/close/{self.target['id']}", timeout=30
        ).close()


async def check_ray_dashboard(devtools: int, url: str, token: str, shots: Path) -> set[str]:
    """The Actors page asks for the token and lists nothing without it; given the token (as its
    dialog does), it lists the search's trial actors. Returns the `<arch>_<id>` trial names the
    actors show."""
    async with open_page(devtools) as page:
        await page.goto(f"{url}/#/actors")
        text = await page.text_when(lambda t: "Authentication Token Required" in t)
        assert "ImplicitFunc" not in text and not REPR.search(text)
        assert not png_is_blank(await page.screenshot(shots / "ray_without_token.png"))

        # What the page's token dialog does: the dashboard answers with an HttpOnly cookie.
        status = await page.evaluate(
            f"fetch('/api/authenticate', {{method: 'POST', headers: "
            f"{{Authorization: 'Bearer ' + {json.dumps(token)}}}}}).then((r) => r.status)"
        )
        assert status == 200
        await page.send("Page.reload", ignoreCache=True)
        text = await page.text_when(
            lambda t: "ImplicitFunc" in t and REPR.search(t) and "ALIVE" in t
        )
        assert "Authentication Token Required" not in text
        shown = {f"{arch}_{trial}" for trial, arch in REPR.findall(text)}
        assert not png_is_blank(await page.screenshot(shots / "ray_actors.png"))
        # The row is drawn, not only in the DOM: its cell's pixels hold text.
        cell = await page.box_of_text(REPR.pattern)
        assert not png_is_blank(await page.screenshot(shots / "ray_actor_repr.png", cell))
    return shown


def complete_and_pruned(study_file: Path, timeout: float) -> tuple[int, int]:
    """The numbers of a complete and of a pruned trial of the study, once it has both."""
    import optuna
    from optuna.trial import TrialState

    deadline = time.monotonic() + timeout
    while True:
        study = optuna.load_study(study_name=NAME, storage=open_storage(str(study_file)))
        found = {}
        for trial in study.get_trials(deepcopy=False):
            found.setdefault(trial.state, trial.number)
        if TrialState.COMPLETE in found and TrialState.PRUNED in found:
            return found[TrialState.COMPLETE], found[TrialState.PRUNED]
        assert time.monotonic() < deadline, f"no complete and pruned trials yet: {found}"
        time.sleep(2)


async def check_optuna_dashboard(devtools: int, url: str, study_file: Path, shots: Path) -> None:
    """The study is listed, and its trials page shows a complete and a pruned trial."""
    with urllib.request.urlopen(f"{url}/api/studies", timeout=30) as response:
        studies = {s["study_name"]: s["study_id"] for s in json.load(response)["study_summaries"]}
    assert NAME in studies
    async with open_page(devtools) as page:
        await page.goto(f"{url}/dashboard")
        await page.text_when(lambda t: NAME in t)
        assert not png_is_blank(await page.screenshot(shots / "optuna_studies.png"))

        complete, pruned = complete_and_pruned(study_file, 2 * PAGE_S)
        await page.goto(
            f"{url}/dashboard/studies/{studies[NAME]}/trials?numbers={complete},{pruned}"
        )
        await page.text_when(
            lambda t: all(
                word in t
                for word in (NAME, f"Trial {complete}", f"Trial {pruned}", "Complete", "Pruned")
            )
        )
        assert not png_is_blank(await page.screenshot(shots / "optuna_trials.png"))
        chip = await page.box_of_text("^Pruned$")
        assert not png_is_blank(await page.screenshot(shots / "optuna_pruned.png", chip))


def search_env(home: Path) -> dict[str, str]:
    """The environment a user runs the search in: Ray's auth mode unset (conftest turns it off
    for the suite), and a home folder of this test's own for the token Ray generates."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    return env


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (CI installs it)")
def test_a_running_search_seen_in_both_dashboards(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    env = search_env(home)
    search = subprocess.Popen(
        [*SEARCH, "--storage", str(tmp_path / "experiments")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out = Lines(search.stdout)
    try:
        ray_url = out.wait_for(WATCH_RAY, STARTUP_S)[1]
        out.wait_for(WATCH_OPTUNA, STARTUP_S)
        live_match = out.wait_for(LIVE, STARTUP_S)
        optuna_url, optuna_port = live_match[1], int(live_match[2])
        # The command the search names gives the token Ray generated for this user.
        token = subprocess.run(
            ["ray", "get-auth-token"], env=env, capture_output=True, text=True, timeout=120
        ).stdout.strip()
        assert token == (home / ".ray" / "auth_token").read_text().strip()

        with chromium(tmp_path / "chromium") as devtools:
            shown = asyncio.run(check_ray_dashboard(devtools, ray_url, token, shots))
            study_file = tmp_path / "experiments" / NAME / STUDY_FILE
            asyncio.run(check_optuna_dashboard(devtools, optuna_url, study_file, shots))
        assert search.poll() is None, "the search ended before the dashboards were checked"
        # Each actor names a trial of this search, as Tune's table does: `<arch>_<trial id>`.
        for trial in shown:
            out.wait_for(re.compile(rf"\b{trial}\b"), 60)

        search.send_signal(signal.SIGINT)  # Ctrl+C: the search stops, and --live's dashboard
        assert search.wait(STOP_S) == 130
        out.join(60)
    finally:
        stop_group(search)
    printed = out.text()
    assert "RAY_AUTH_MODE=disabled" not in printed  # Ray's advice to opt out never shows
    assert "interrupted with" in printed
    assert not port_is_open(optuna_port)  # --live's dashboard ended with the search
