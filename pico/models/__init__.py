"""The three Pico language models behind one interface (`LanguageModel`), built from a config."""

from __future__ import annotations

from pico.config import TrainConfig
from pico.errors import PicoError
from pico.models.base import LanguageModel
from pico.models.kgram import KGramMLP
from pico.models.lstm import LSTM
from pico.models.transformer import Transformer

MODELS: dict[str, type[LanguageModel]] = {
    "kgram_mlp": KGramMLP,
    "lstm": LSTM,
    "kv_transformer": Transformer,
}

__all__ = ["LSTM", "MODELS", "KGramMLP", "LanguageModel", "Transformer", "build_model"]


def build_model(cfg: TrainConfig, vocab_size: int) -> LanguageModel:
    """The model `cfg.arch` names, freshly initialised for `vocab_size` tokens (float32, CPU)."""
    if cfg.arch not in MODELS:
        raise PicoError(f"unknown arch {cfg.arch!r}; choose one of: {', '.join(MODELS)}")
    if vocab_size < 1:
        raise PicoError(f"vocab_size must be a positive integer, got {vocab_size}")
    return MODELS[cfg.arch](cfg, vocab_size)
