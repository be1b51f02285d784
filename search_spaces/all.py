"""Every architecture in one space: `arch` is itself a parameter, and each architecture's
sub-space hangs under it with its parameters named `<arch>.<field>` (their own ranges, and their
own learning rates: a good K-gram learning rate says little about a good Transformer one)."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces import kgram_mlp, kv_transformer, lstm

ARCH_SPACES = {
    "kgram_mlp": kgram_mlp.space,
    "lstm": lstm.space,
    "kv_transformer": kv_transformer.space,
}


def space(trial: optuna.Trial) -> dict[str, Any]:
    """Sample an architecture, then a config from its sub-space."""
    arch = trial.suggest_categorical("arch", tuple(ARCH_SPACES))
    return ARCH_SPACES[arch](trial, prefix=f"{arch}.")
