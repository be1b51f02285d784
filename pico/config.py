"""One config object for a training run: every hyperparameter, validated, with a stable fingerprint.

The same fields serve all three architectures. `d_model` is the embedding size everywhere,
`n_layer` the depth (hidden layers of the K-gram MLP, stacked LSTM layers, Transformer blocks) and
`hidden_size` the width of the K-gram MLP's hidden layers and of the LSTM's state. Fields that an
architecture does not use are listed in `ARCH_FIELDS` so that results can leave them null.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pico.errors import PicoError

ARCHS = ("kgram_mlp", "lstm", "kv_transformer")
ACTIVATIONS = ("relu", "gelu", "silu")
KGRAM_NORMS = ("none", "layernorm", "rmsnorm")
TRANSFORMER_NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("rope", "learned")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "bfloat16")
PARAMETRIZATIONS = ("standard", "mup")

# Hyperparameters that shape the model, by architecture. Everything else is shared by all.
MODEL_FIELDS = (
    "d_model",
    "n_layer",
    "n_head",
    "hidden_size",
    "k",
    "activation",
    "norm",
    "pos_embedding",
    "mlp_ratio",
    "tie_weights",
    "dropout",
    "parametrization",
    "mup_base_width",
)
ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "kgram_mlp": ("d_model", "n_layer", "hidden_size", "k", "activation", "norm", "dropout"),
    "lstm": ("d_model", "n_layer", "hidden_size", "dropout", "tie_weights"),
    "kv_transformer": (
        "d_model",
        "n_layer",
        "n_head",
        "activation",
        "norm",
        "pos_embedding",
        "mlp_ratio",
        "tie_weights",
        "dropout",
        "parametrization",
        "mup_base_width",
    ),
}

# Fields that do not change what is computed, only where or how it is recorded. They are left out
# of the fingerprint so that the same run on another machine or folder has the same fingerprint.
NON_SEMANTIC_FIELDS = ("device", "compile", "eval_interval", "num_threads")


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of one training run. Construct, then call `validate()`."""

    # What to train, on what.
    arch: str = "kv_transformer"
    corpus: str = "shakespeare"
    tokenizer: str = "bpe:4096"
    max_docs: int | None = None  # keep the corpus's first documents only; None: all of them

    # Model shape.
    d_model: int = 128
    n_layer: int = 2
    n_head: int = 4
    hidden_size: int = 256
    k: int = 3
    activation: str = "gelu"
    norm: str = "rmsnorm"
    pos_embedding: str = "rope"
    mlp_ratio: int = 4
    tie_weights: bool = True
    dropout: float = 0.0
    block_size: int = 128
    # muP (Transformer only, docs/mup.md): init, learning rates and multipliers scale with
    # d_model / mup_base_width, so that settings tuned at one width hold at another.
    parametrization: str = "standard"
    mup_base_width: int = 128

    # Optimisation.
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    max_steps: int = 600

    # Evaluation: every `eval_interval` steps on the first `eval_tokens` targets of validation.
    eval_interval: int = 100
    eval_tokens: int = 16384

    # Reproducibility and hardware.
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    compile: bool = False
    num_threads: int = 0  # 0: leave torch's default

    # ---------------------------------------------------------------- validation

    def validate(self) -> TrainConfig:
        """Raise PicoError with one clear line if any field is out of range; return self."""
        _choice("arch", self.arch, ARCHS)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("device", self.device, DEVICES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("pos_embedding", self.pos_embedding, POSITIONS)
        norms = KGRAM_NORMS if self.arch == "kgram_mlp" else TRANSFORMER_NORMS
        if self.arch != "lstm":
            _choice("norm", self.norm, norms)
        for name in (
            "d_model",
            "n_layer",
            "n_head",
            "hidden_size",
            "k",
            "mlp_ratio",
            "block_size",
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_interval",
            "eval_tokens",
            "mup_base_width",
        ):
            if getattr(self, name) < 1:
                raise PicoError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.max_docs is not None and self.max_docs < 1:
            raise PicoError(f"max_docs must be a positive integer (or unset), got {self.max_docs}")
        if self.warmup_steps < 0:
            raise PicoError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.num_threads < 0:
            raise PicoError(f"num_threads must be >= 0, got {self.num_threads}")
        if not 0.0 <= self.dropout < 1.0:
            raise PicoError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.lr > 0:
            raise PicoError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise PicoError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.weight_decay < 0:
            raise PicoError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip < 0:
            raise PicoError(f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise PicoError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.arch == "kv_transformer":
            if self.d_model % self.n_head:
                raise PicoError(
                    f"d_model={self.d_model} is not divisible by n_head={self.n_head}: "
                    "choose a head count that divides the width"
                )
            if self.pos_embedding == "rope" and (self.d_model // self.n_head) % 2:
                raise PicoError(
                    f"rotary positions need an even head size, got d_model/n_head="
                    f"{self.d_model // self.n_head}"
                )
        _choice("parametrization", self.parametrization, PARAMETRIZATIONS)
        if self.parametrization == "mup" and self.arch != "kv_transformer":
            raise PicoError(
                f"parametrization 'mup' is built for the Transformer only; arch={self.arch!r} "
                "keeps the standard parametrization"
            )
        if self.arch == "kgram_mlp" and self.k > self.block_size:
            raise PicoError(f"k={self.k} must not exceed block_size={self.block_size}")
        return self

    # ------------------------------------------------------------ (de)serialise

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are an error that names them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PicoError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**{name: _typed(name, value) for name, value in values.items()})

    @classmethod
    def from_results_row(cls, row: Mapping[str, Any]) -> TrainConfig:
        """The config of a results-file row (docs/results.md), from its `hp_<field>` columns.
        Null ones (None, or NaN once pandas has read them) are fields the architecture does not
        use; numpy scalars become Python values."""
        values = {}
        for name, value in row.items():
            if not name.startswith("hp_"):
                continue
            value = value.item() if hasattr(value, "item") else value  # numpy -> Python
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            values[name[3:]] = value
        return cls.from_dict(values)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Load a JSON config file (a flat dict of fields)."""
        path = Path(path)
        if not path.is_file():
            raise PicoError(f"config file not found: {path}")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PicoError(f"config file {path} is not valid JSON: {exc}") from None
        if not isinstance(values, dict):
            raise PicoError(f"config file {path} must hold a JSON object of fields")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def widen(self, width: int) -> TrainConfig:
        """This muP config at `d_model=width`, everything else kept: muP's base width, so the
        tuned learning rate, init and multipliers mean the same thing at the new width, and
        the head count, so the head size grows with the width (the attention's 1/d_head scale
        is what keeps that stable). PicoError for a standard config or an unusable width."""
        if self.parametrization != "mup":
            raise PicoError(
                f"the config has parametrization {self.parametrization!r}: its tuned settings do "
                "not carry over to another width; only a 'mup' config can be widened"
            )
        if width < 1 or width % self.n_head:
            raise PicoError(
                f"width {width} is not a positive multiple of n_head={self.n_head}: widening "
                "keeps the head count and grows the head size"
            )
        return self.replace(d_model=width).validate()

    def model_fields(self) -> dict[str, Any]:
        """The model hyperparameters that this architecture actually uses."""
        return {name: getattr(self, name) for name in ARCH_FIELDS[self.arch]}

    def fingerprint(self) -> str:
        """A short stable hash of every field that changes what the run computes."""
        semantic = {k: v for k, v in self.to_dict().items() if k not in NON_SEMANTIC_FIELDS}
        if self.parametrization == "standard":
            # Neither field changes a standard run; leaving them out also keeps the fingerprints
            # that runs had before they existed.
            del semantic["parametrization"], semantic["mup_base_width"]
        blob = json.dumps(semantic, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _value_type(hint: Any) -> type:
    """The type of a field's values: `int` for `int | None`, `str` for `str`."""
    options = [t for t in typing.get_args(hint) if t is not type(None)]
    return options[0] if options else hint


FIELD_TYPES: dict[str, type] = {
    name: _value_type(hint) for name, hint in typing.get_type_hints(TrainConfig).items()
}
"""The type of each TrainConfig field's values (`int` for `max_docs`, which may also be None)."""


def _typed(name: str, value: Any) -> Any:
    """`value` if it has field `name`'s type, else a PicoError naming both; an integral float
    (a column of a results file read with nulls) becomes the int it stands for."""
    kind = FIELD_TYPES[name]
    if value is None and name == "max_docs":
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise PicoError(f"{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return value
        raise PicoError(f"{name} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return value
        raise PicoError(f"{name} must be a number, got {value!r}")
    if isinstance(value, str):
        return value
    raise PicoError(f"{name} must be a string, got {value!r}")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PicoError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")
