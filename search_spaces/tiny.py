"""Tiny models of every architecture, a few seconds per trial on one CPU: for smoke tests of a
cluster or of the search itself, not for finding good models."""

from __future__ import annotations

from typing import Any

import optuna

SHAPES: dict[str, dict[str, Any]] = {
    "kgram_mlp": {"k": 3, "hidden_size": 32, "norm": "layernorm"},
    "lstm": {"hidden_size": 32},
    "kv_transformer": {"n_head": 2, "mlp_ratio": 2},
}


def space(trial: optuna.Trial) -> dict[str, Any]:
    """An architecture, a width of 16 or 32, one layer, and a learning rate."""
    arch = trial.suggest_categorical("arch", tuple(SHAPES))
    lr = trial.suggest_float("lr", 1e-3, 3e-2, log=True)
    return {
        "arch": arch,
        "d_model": trial.suggest_categorical("d_model", (16, 32)),
        "n_layer": 1,
        **SHAPES[arch],
        "lr": lr,
        "min_lr": lr / 10,
        "batch_size": 8,
        "block_size": 32,
        "warmup_steps": 0,
    }
