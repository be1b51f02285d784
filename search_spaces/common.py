"""What every architecture's space shares: the optimisation hyperparameters and small helpers.

Spaces are Optuna define-by-run functions. Parameter names are `TrainConfig` field names (behind
an optional prefix, used by the `all` space to hang each architecture's sub-space under `arch`),
and a sampled value is the field's value, so that a named config can be enqueued as is.
"""

from __future__ import annotations

from typing import Any

import optuna

# Sequence lengths and batch sizes small enough that a trial takes seconds to minutes on one CPU.
BLOCK_SIZES = (32, 64, 128)
BATCH_SIZES = (8, 16, 32)
MIN_LR_RATIO = 0.1  # the cosine schedule decays to a tenth of the peak learning rate


def suggest_optim(trial: optuna.Trial, prefix: str = "") -> dict[str, Any]:
    """Learning rate (log scale), batch, context, regularisation and warmup."""
    peak = trial.suggest_float(f"{prefix}lr", 1e-4, 3e-2, log=True)
    return {
        "lr": peak,
        "min_lr": peak * MIN_LR_RATIO,
        "batch_size": trial.suggest_categorical(f"{prefix}batch_size", BATCH_SIZES),
        "block_size": trial.suggest_categorical(f"{prefix}block_size", BLOCK_SIZES),
        "weight_decay": trial.suggest_float(f"{prefix}weight_decay", 0.0, 0.2),
        "warmup_steps": trial.suggest_int(f"{prefix}warmup_steps", 0, 100, step=10),
    }


def suggest_dropout(trial: optuna.Trial, prefix: str = "", high: float = 0.2) -> float:
    """Dropout on a 0.05 grid: runs of a few hundred steps rarely gain from more."""
    return trial.suggest_float(f"{prefix}dropout", 0.0, high, step=0.05)
