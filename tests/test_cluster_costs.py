"""launch/cluster_costs.py: the numbers docs/scaling.md is built from, on tiny settings."""

from __future__ import annotations

import json

import pytest

from launch.cluster_costs import main
from pico.errors import PicoError

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
