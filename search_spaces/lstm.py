"""LSTM: embedding size, state width, depth, weight tying."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces.common import suggest_dropout, suggest_optim

D_MODELS = (16, 32, 64, 128)
HIDDEN_SIZES = (32, 64, 128, 256)


def space(trial: optuna.Trial, prefix: str = "") -> dict[str, Any]:
    """Sample one LSTM config (TrainConfig fields)."""
    return {
        "arch": "lstm",
        "d_model": trial.suggest_categorical(f"{prefix}d_model", D_MODELS),
        "hidden_size": trial.suggest_categorical(f"{prefix}hidden_size", HIDDEN_SIZES),
        "n_layer": trial.suggest_int(f"{prefix}n_layer", 1, 2),
        "tie_weights": trial.suggest_categorical(f"{prefix}tie_weights", (True, False)),
        "dropout": suggest_dropout(trial, prefix),
        **suggest_optim(trial, prefix),
    }
