"""The config object: validation messages, (de)serialisation, fingerprint."""

from __future__ import annotations

import json

import pytest

from pico.config import TrainConfig
from pico.errors import PicoError


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "gru"}, "unknown arch 'gru'; choose one of: kgram_mlp, lstm, kv_transformer"),
        ({"d_model": 100, "n_head": 3}, "d_model=100 is not divisible by n_head=3"),
        ({"d_model": 12, "n_head": 4}, "rotary positions need an even head size"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"min_lr": 1.0, "lr": 0.1}, "min_lr must be in [0, lr=0.1]"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"activation": "tanh"}, "unknown activation 'tanh'"),
        ({"arch": "kgram_mlp", "norm": "batchnorm"}, "unknown norm 'batchnorm'"),
        ({"arch": "kgram_mlp", "k": 9, "block_size": 8}, "k=9 must not exceed block_size=8"),
    ],
)
def test_invalid_configs_say_what_is_wrong(changes, message):
    with pytest.raises(PicoError, match=None) as info:
        TrainConfig(**changes).validate()
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_defaults_are_valid_for_every_architecture():
    for arch in ("kgram_mlp", "lstm", "kv_transformer"):
        TrainConfig(arch=arch).validate()


def test_fingerprint_is_stable_and_ignores_where_it_runs():
    cfg = TrainConfig()
    assert cfg.fingerprint() == TrainConfig().fingerprint()
    assert cfg.fingerprint() == cfg.replace(device="cuda", num_threads=4).fingerprint()
    assert cfg.fingerprint() != cfg.replace(lr=cfg.lr * 2).fingerprint()


def test_round_trip_through_a_file(tmp_path):
    cfg = TrainConfig(arch="lstm", hidden_size=64)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_file(path) == cfg


def test_unknown_fields_and_bad_files_are_named(tmp_path):
    with pytest.raises(PicoError, match="unknown config field"):
        TrainConfig.from_dict({"widht": 3})
    with pytest.raises(PicoError, match="config file not found"):
        TrainConfig.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PicoError, match="not valid JSON"):
        TrainConfig.from_file(tmp_path / "bad.json")
