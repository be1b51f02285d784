"""launch/cluster_costs.py: the numbers docs/scaling.md is built from, on tiny settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.cluster_costs import main
from pico.errors import PicoError

REPO = Path(__file__).resolve().parents[1]
TINY_TRIAL = ["--corpus", "3seqs", "--tokenizer", "char", "--max-steps", "6"]
TINY_TRIAL += ["--eval-interval", "3", "--eval-tokens", "64", "--batch-size", "4"]
TINY_TRIAL += ["--block-size", "16"]


def test_trial_cost_of_each_config(capsys):
    assert main(["trials", "--configs", "tf-e32-l1-gelu,lstm-e32-h64-l1", *TINY_TRIAL]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["config"] for row in rows] == ["tf-e32-l1-gelu", "lstm-e32-h64-l1"]
    for row in rows:
        assert row["evaluations"] == 2
        assert row["trial_s"] > 0 and row["n_params"] > 0
        # Weights and Adam's two moments, in float32: at least 12 bytes per parameter.
        assert row["checkpoint_bytes"] >= 12 * row["n_params"]


def test_unknown_config_is_one_line():
    with pytest.raises(PicoError, match="unknown config"):
        main(["trials", "--configs", "tf-e32-l1-gelu,gpt-5"])


@pytest.mark.slow
def test_driver_throughput(tmp_path: Path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, str(REPO / "launch" / "cluster_costs.py"), "driver"]
    command += ["--trials", "3", "--evals", "2", "--checkpoint-bytes", "10", "--num-to-keep", "1"]
    out = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["trials"] == 3 and row["results"] == 6
    assert row["results_per_s"] > 0
    # Keeping one checkpoint per trial, every result (each has one) forces a state snapshot.
    assert row["snapshots"] >= row["results"]
