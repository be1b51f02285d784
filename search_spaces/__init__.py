"""Optuna define-by-run search spaces, one per architecture, plus `all`, the `seed22` sweep and
`tiny` (smoke tests).

Each space is a function `(trial: optuna.Trial) -> dict` of `TrainConfig` fields; the fields it
does not return (max_steps, corpus, ...) are fixed by the search command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from pico.errors import PicoError
from search_spaces import all as all_archs
from search_spaces import kgram_mlp, kv_transformer, lstm, seed22, tiny

Space = Callable[[optuna.Trial], dict[str, Any]]

SPACES: dict[str, Space] = {
    "kgram_mlp": kgram_mlp.space,
    "lstm": lstm.space,
    "kv_transformer": kv_transformer.space,
    "all": all_archs.space,
    "seed22": seed22.space,
    "tiny": tiny.space,
}
NAMED_CONFIGS = seed22.NAMED_CONFIGS
# Fields derived from sampled ones rather than sampled themselves.
DERIVED_FIELDS = ("arch", "min_lr")


def get_space(name: str) -> Space:
    """The space called `name`; PicoError listing the valid ones otherwise."""
    if name not in SPACES:
        raise PicoError(f"unknown search space {name!r}; choose one of: {', '.join(SPACES)}")
    return SPACES[name]


def warm_start_points(name: str) -> list[dict[str, Any]]:
    """The named configs that lie in space `name`, as Optuna parameter dicts to enqueue.

    For `seed22` this is every config, which is how it runs as a fixed sweep.
    """
    get_space(name)
    if name == "tiny":
        return []
    if name == "seed22":
        return [{"config": config} for config in NAMED_CONFIGS]
    points = []
    for fields in NAMED_CONFIGS.values():
        arch = fields["arch"]
        if name not in ("all", arch):
            continue
        prefix = f"{arch}." if name == "all" else ""
        params = {prefix + key: value for key, value in fields.items() if key not in DERIVED_FIELDS}
        points.append({"arch": arch, **params} if name == "all" else params)
    return points
