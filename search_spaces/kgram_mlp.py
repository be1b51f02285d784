"""K-gram MLP: embedding size, context length k, hidden width and depth, activation and norm."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces.common import suggest_dropout, suggest_optim

D_MODELS = (16, 32, 48, 64)
HIDDEN_SIZES = (64, 128, 256, 512)


def space(trial: optuna.Trial, prefix: str = "") -> dict[str, Any]:
    """Sample one K-gram MLP config (TrainConfig fields)."""
    return {
        "arch": "kgram_mlp",
        "d_model": trial.suggest_categorical(f"{prefix}d_model", D_MODELS),
        "k": trial.suggest_int(f"{prefix}k", 2, 8),
        "n_layer": trial.suggest_int(f"{prefix}n_layer", 1, 3),
        "hidden_size": trial.suggest_categorical(f"{prefix}hidden_size", HIDDEN_SIZES),
        "activation": trial.suggest_categorical(f"{prefix}activation", ("relu", "gelu", "silu")),
        "norm": trial.suggest_categorical(f"{prefix}norm", ("none", "layernorm", "rmsnorm")),
        "dropout": suggest_dropout(trial, prefix),
        **suggest_optim(trial, prefix),
    }
