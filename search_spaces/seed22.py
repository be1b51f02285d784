"""22 named configs in the spirit of the old project's sweep: embedding size x k x activation x
depth across the three architectures. Run alone as a fixed sweep (`--space seed22`, each config
once) or enqueued ahead of a search to warm-start its sampler (`--warm-start`)."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces.common import MIN_LR_RATIO

# Shared by every named config; each lies inside every architecture's space.
BASE: dict[str, Any] = {
    "lr": 3e-3,
    "min_lr": 3e-3 * MIN_LR_RATIO,  # what the spaces derive from lr
    "batch_size": 16,
    "block_size": 64,
    "weight_decay": 0.1,
    "warmup_steps": 20,
    "dropout": 0.0,
}


def _kgram(d_model: int, k: int, activation: str, n_layer: int) -> tuple[str, dict[str, Any]]:
    name = f"kgram-e{d_model}-k{k}-{activation}-l{n_layer}"
    hidden = 128 if d_model <= 32 else 256
    fields = {"arch": "kgram_mlp", "d_model": d_model, "k": k, "activation": activation}
    return name, {**fields, "n_layer": n_layer, "hidden_size": hidden, "norm": "layernorm"}


def _lstm(d_model: int, hidden_size: int, n_layer: int) -> tuple[str, dict[str, Any]]:
    name = f"lstm-e{d_model}-h{hidden_size}-l{n_layer}"
    fields = {"arch": "lstm", "d_model": d_model, "hidden_size": hidden_size, "n_layer": n_layer}
    return name, {**fields, "tie_weights": True}


def _transformer(d_model: int, n_layer: int, activation: str) -> tuple[str, dict[str, Any]]:
    name = f"tf-e{d_model}-l{n_layer}-{activation}"
    fields = {"arch": "kv_transformer", "d_model": d_model, "n_layer": n_layer}
    shape = {"n_head": min(4, d_model // 16), "mlp_ratio": 4, "activation": activation}
    style = {
        "norm": "rmsnorm",
        "pos_embedding": "rope",
        "tie_weights": True,
        "parametrization": "standard",
    }
    return name, {**fields, **shape, **style}


NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    name: {**BASE, **fields}
    for name, fields in [
        _kgram(16, 3, "relu", 1),
        _kgram(16, 5, "relu", 1),
        _kgram(32, 3, "gelu", 1),
        _kgram(32, 3, "gelu", 2),
        _kgram(32, 5, "silu", 2),
        _kgram(48, 4, "relu", 2),
        _kgram(64, 3, "gelu", 1),
        _kgram(64, 6, "gelu", 3),
        _lstm(32, 64, 1),
        _lstm(32, 128, 1),
        _lstm(64, 128, 1),
        _lstm(64, 128, 2),
        _lstm(64, 256, 2),
        _lstm(128, 256, 1),
        _transformer(32, 1, "gelu"),
        _transformer(32, 2, "relu"),
        _transformer(64, 2, "gelu"),
        _transformer(64, 2, "silu"),
        _transformer(64, 4, "gelu"),
        _transformer(96, 2, "gelu"),
        _transformer(128, 2, "gelu"),
        _transformer(128, 4, "silu"),
    ]
}


def space(trial: optuna.Trial) -> dict[str, Any]:
    """One of the named configs, chosen by the parameter `config`."""
    return dict(NAMED_CONFIGS[trial.suggest_categorical("config", tuple(NAMED_CONFIGS))])
