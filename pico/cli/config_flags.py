"""Every TrainConfig field as a command-line flag, generated from the dataclass itself.

`--d-model 256` sets `d_model`; booleans take `--tie-weights` / `--no-tie-weights`. Flags left
unset do not override the base config (defaults, a `--config` file or a results file), so the
precedence is always: explicit flag > file > default.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pico.config import FIELD_TYPES, TrainConfig

_HELP = {
    "arch": "kgram_mlp | lstm | kv_transformer",
    "corpus": "shakespeare | tinystories | 3seqs | path: (.txt[.gz|.xz], folder, .jsonl, .parquet)",
    "tokenizer": "bpe:N | gpt2 | byte | char",
    "max_docs": "keep the corpus's first N documents only, before the split",
    "d_model": "embedding size",
    "n_layer": "depth: K-gram hidden layers, LSTM layers or Transformer blocks",
    "n_head": "attention heads (Transformer); must divide d_model",
    "hidden_size": "width of the K-gram MLP's hidden layers and of the LSTM state",
    "k": "context tokens of the K-gram MLP",
    "activation": "relu | gelu | silu",
    "norm": "K-gram: none | layernorm | rmsnorm; Transformer: layernorm | rmsnorm",
    "pos_embedding": "rope | learned (Transformer)",
    "parametrization": "standard | mup (Transformer; docs/mup.md)",
    "mup_base_width": "muP: the d_model at which muP equals the standard parametrization",
    "eval_tokens": "validation targets in the fixed evaluation set",
    "device": "auto | cpu | cuda | mps",
    "dtype": "float32 | bfloat16 (autocast)",
    "num_threads": "torch CPU threads (0: torch's default)",
}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TrainConfig field, defaulting to None (= not given)."""
    group = parser.add_argument_group("hyperparameters (default in brackets)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = "all" if f.default is None else f.default
        help_text = f"{_HELP.get(f.name, f.name.replace('_', ' '))} [{default}]"
        kind = FIELD_TYPES[f.name]
        if kind is bool:
            group.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            group.add_argument(flag, dest=f.name, type=kind, metavar=f.name.upper(), help=help_text)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields that were given on the command line."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = vars(args).items()
    return {name: value for name, value in given if name in names and value is not None}
