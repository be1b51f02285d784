"""Test-session setup: offline, quiet, reproducible, one shared Ray instance."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports HF, Ray or wandb: no network, no auth token, no telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One prepared-data cache for the whole session (and across sessions when PICO_CACHE is set),
# so that the default corpus is fetched and tokenized once.
os.environ.setdefault("PICO_CACHE", str(Path(tempfile.gettempdir()) / "pico-test-cache"))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder."""
    return REPO


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance shared by every test that needs it; stopped at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
