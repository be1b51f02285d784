"""The cluster-launcher configs: valid for Ray's launcher, and keeping docs/cluster.md's promises.

Each config goes through `prepare_config` (what `ray up` does first: merge the provider's defaults)
and `validate_config` (Ray's JSON schema and cross-field checks), and the promises are checked on
the prepared config, so that a default merged in by Ray cannot break them unseen.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("cluster.yaml", "cluster-onprem.yaml")
# EC2 families whose instances carry NVIDIA GPUs.
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5", "p5e")
STORAGE_LINE = re.compile(r"export PICO_STORAGE=([^'\s]+)'")


def load(name: str) -> tuple[str, dict[str, Any]]:
    """The config file's text and the config as `ray up` prepares and validates it."""
    text = (REPO / name).read_text()
    config = prepare_config(yaml.safe_load(text))
    validate_config(config)
    return text, config


def commands(config: dict[str, Any]) -> list[str]:
    """Every shell command the launcher runs on a node."""
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    return [cmd for key in keys for cmd in config.get(key, [])]


def ray_starts(cmds: list[str]) -> list[list[str]]:
    """The `ray start` invocations among shell commands, as argument lists with their env prefix."""
    starts = []
    for cmd in cmds:
        lexer = shlex.shlex(cmd, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token.strip(";&|()"):
                words.append(token)
                continue
            if "ray" in words and words[words.index("ray") + 1 :][:1] == ["start"]:
                starts.append(words)
            words = []
    return starts


def storage(text: str) -> str:
    """The results location that the setup commands export as PICO_STORAGE."""
    match = STORAGE_LINE.search(text)
    assert match, "no `PICO_STORAGE` export in the setup commands"
    return match.group(1)


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_accepts_the_config(name: str) -> None:
    _, config = load(name)
    assert config["head_node_type"] in config["available_node_types"]


def test_aws_has_a_cpu_head_and_an_autoscaled_gpu_worker_type() -> None:
    _, config = load("cluster.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["node_config"]["InstanceType"]
    assert not head.startswith(tuple(f"{family}." for family in GPU_FAMILIES))
    gpu_types = {
        name: spec
        for name, spec in types.items()
        if spec["node_config"]["InstanceType"].startswith(
            tuple(f"{family}." for family in GPU_FAMILIES)
        )
    }
    assert gpu_types, "no GPU worker type"
    for spec in gpu_types.values():
        assert spec["min_workers"] == 0
        assert spec["max_workers"] >= 1
        assert spec["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"


@pytest.mark.parametrize(
    ("name", "scheme"), [("cluster.yaml", "s3://"), ("cluster-onprem.yaml", "/")]
)
def test_shared_storage_is_named_in_one_place(name: str, scheme: str) -> None:
    text, config = load(name)
    location = storage(text)
    assert location.startswith(scheme)
    assert text.count(location) == 1
    # Every node gets it: the export is a setup command, which runs on the head and the workers.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any(location in cmd for cmd in config[key])


@pytest.mark.parametrize("name", CONFIGS)
def test_the_project_is_synced_and_installed_on_every_node(name: str) -> None:
    _, config = load(name)
    project = {k: v for k, v in config["file_mounts"].items() if k.startswith("~/pico/")}
    assert all(remote == f"~/pico/{local[2:]}" for remote, local in project.items())
    # Everything `pip install -e ~/pico` reads: the packages it installs and the readme.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    found = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [pattern.rstrip("*") for pattern in found]
    needed = {f"./{name}" for name in [*packages, "pyproject.toml", pyproject["project"]["readme"]]}
    assert set(project.values()) == needed
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [cmd for cmd in config[key] if "pip install" in cmd]
        assert any("-e ~/pico" in cmd for cmd in installs)
        # The launcher's Ray and the cluster's must match.
        assert any(f"ray[default,tune]=={ray.__version__}" in cmd for cmd in installs)


@pytest.mark.parametrize("name", CONFIGS)
def test_the_dashboard_is_bound_to_localhost_only(name: str) -> None:
    _, config = load(name)
    assert "0.0.0.0" not in yaml.safe_dump(config)
    cmds = commands(config)
    head_starts = ray_starts(config["head_start_ray_commands"])
    assert head_starts and all("--head" in start for start in head_starts)
    for start in head_starts:
        assert "--dashboard-host=127.0.0.1" in start
    for start in ray_starts(cmds):
        hosts = [word for word in start if word.startswith("--dashboard-host")]
        assert hosts in ([], ["--dashboard-host=127.0.0.1"])


@pytest.mark.parametrize("name", CONFIGS)
def test_token_authentication_stays_on(name: str) -> None:
    _, config = load(name)
    assert not re.search(r"RAY_AUTH_MODE\s*=\s*['\"]?disabled", yaml.safe_dump(config))
    starts = ray_starts(commands(config))
    assert len(starts) == 2  # the head's and the workers'
    for start in starts:
        assert "RAY_AUTH_MODE=token" in start[: start.index("ray")]
    # Every node holds the token `ray get-auth-token --generate` made on the launching machine.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize("name", CONFIGS)
def test_only_the_project_is_copied_and_no_secret(name: str, tmp_path) -> None:
    """Nodes get the folders and files the config names, never the rest of the working tree (a
    stray .env, notes), and within them no file that commonly holds a secret. Replays each
    mount with rsync itself, with the config's excludes and filter, as `ray up` runs it."""
    if shutil.which("rsync") is None:
        pytest.fail("rsync is not installed: ./setup.sh installs it")
    _, config = load(name)
    tree = tmp_path / "tree"
    stray = [".env", ".env.local", "notes.txt", "id.pem", ".aws/credentials", "data/big.bin"]
    inside = ["pico/.env", "pico/deploy.key", "launch/.envrc", "pico/__pycache__/x.pyc"]
    wanted = ["pico/x.py", "launch/search.py", "search_spaces/all.py", "analysis/report.py"]
    for path in [*stray, *inside, *wanted, "pyproject.toml", "README.md"]:
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text("x")
    flags = [f"--exclude={pattern}" for pattern in config["rsync_exclude"]]
    flags += [f"--filter=dir-merge,- {rule}" for rule in config["rsync_filter"]]
    node = tmp_path / "node"
    for remote, local in config["file_mounts"].items():
        if not remote.startswith("~/pico/"):
            continue
        source, target = tree / local, node / remote.removeprefix("~/")
        target.parent.mkdir(parents=True, exist_ok=True)  # `ray up` makes the parent first
        slash = "/" if source.is_dir() else ""
        subprocess.run(["rsync", "-a", *flags, f"{source}{slash}", f"{target}{slash}"], check=True)
    copied = sorted(str(p.relative_to(node / "pico")) for p in node.rglob("*") if p.is_file())
    assert copied == sorted([*wanted, "pyproject.toml", "README.md"])
