"""Search spaces: every sample is a valid config that builds, and the named configs fit them."""

from __future__ import annotations

import optuna
import pytest

from pico.config import ARCH_FIELDS, TrainConfig
from pico.errors import PicoError
from pico.models import build_model
from search_spaces import NAMED_CONFIGS, SPACES, get_space, warm_start_points

# Fields a search fixes for every trial; the spaces choose everything else.
FIXED = {"corpus": "3seqs", "tokenizer": "char", "max_steps": 200, "eval_interval": 50}
VOCAB = 64

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("name", list(SPACES))
def test_every_sample_is_valid_and_builds(name):
    space = get_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    archs = set()
    for _ in range(200):
        trial = study.ask()
        sample = space(trial)
        cfg = TrainConfig(**FIXED, **sample).validate()
        model = build_model(cfg, VOCAB)
        assert model.num_params() > 0
        archs.add(cfg.arch)
        study.tell(trial, 0.0)
    if name in ("all", "seed22", "tiny"):
        assert archs == set(ARCH_FIELDS)


def test_at_least_22_named_configs_across_archs():
    assert len(NAMED_CONFIGS) >= 22
    assert {c["arch"] for c in NAMED_CONFIGS.values()} == set(ARCH_FIELDS)
    for fields in NAMED_CONFIGS.values():
        TrainConfig(**FIXED, **fields).validate()


@pytest.mark.parametrize("name", [name for name in SPACES if name != "tiny"])
def test_warm_start_points_reproduce_the_named_configs(name):
    """An enqueued named config comes back out of the space unchanged."""
    points = warm_start_points(name)
    assert points, name
    study = optuna.create_study()
    for point in points:
        study.enqueue_trial(point)
    space = get_space(name)
    got = [space(study.ask()) for _ in points]
    expected = [c for c in NAMED_CONFIGS.values() if name in ("all", "seed22", c["arch"])]
    assert got == expected


def test_unknown_space_lists_the_valid_ones():
    with pytest.raises(PicoError, match="kv_transformer"):
        get_space("nope")
