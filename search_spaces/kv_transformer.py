"""KV-cache Transformer: width, depth, heads, MLP ratio, activation, norm, positions, tying,
parametrization.

Optuna needs one fixed set of choices per parameter name, so the head count is drawn from a fixed
list and then capped so that every head keeps at least `MIN_HEAD_DIM` dimensions. Widths are
multiples of 16 and head counts powers of two up to 8, so the result always divides `d_model`
with an even head size (as rotary positions need), and a valid count maps to itself.
"""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces.common import suggest_dropout, suggest_optim

D_MODELS = (16, 32, 48, 64, 96, 128)
HEADS = (1, 2, 4, 8)
MIN_HEAD_DIM = 8


def heads_for(d_model: int, wanted: int) -> int:
    """The head count used for `d_model` when `wanted` heads are asked for."""
    return min(wanted, d_model // MIN_HEAD_DIM)


def space(trial: optuna.Trial, prefix: str = "") -> dict[str, Any]:
    """Sample one Transformer config (TrainConfig fields)."""
    d_model = trial.suggest_categorical(f"{prefix}d_model", D_MODELS)
    return {
        "arch": "kv_transformer",
        "d_model": d_model,
        "n_layer": trial.suggest_int(f"{prefix}n_layer", 1, 4),
        "n_head": heads_for(d_model, trial.suggest_categorical(f"{prefix}n_head", HEADS)),
        "mlp_ratio": trial.suggest_categorical(f"{prefix}mlp_ratio", (2, 4)),
        "activation": trial.suggest_categorical(f"{prefix}activation", ("relu", "gelu", "silu")),
        "norm": trial.suggest_categorical(f"{prefix}norm", ("layernorm", "rmsnorm")),
        "pos_embedding": trial.suggest_categorical(f"{prefix}pos_embedding", ("rope", "learned")),
        "tie_weights": trial.suggest_categorical(f"{prefix}tie_weights", (True, False)),
        # muP at the default base width (128, the widest here): a muP trial's settings carry
        # over to a wider model (launch/train.py --width, docs/mup.md).
        "parametrization": trial.suggest_categorical(
            f"{prefix}parametrization", ("standard", "mup")
        ),
        "dropout": suggest_dropout(trial, prefix),
        **suggest_optim(trial, prefix),
    }
