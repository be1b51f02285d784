"""The Tune trainable: one Pico training run per trial, reporting every evaluation to Tune.

A trial's config is a flat dict of TrainConfig fields plus one private entry, `_pico`, with what
every trial needs that is not a hyperparameter (where the prepared data lives, fault injection).
At each evaluation the trainable writes a checkpoint and hands it to `tune.report` with every
metric; a retried trial continues from `tune.get_checkpoint()` exactly where it left off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from pico.config import TrainConfig

SETTINGS_KEY = "_pico"
CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))
LATENCY_TOKENS = 32


@dataclass(frozen=True)
class TrialSettings:
    """What every trial needs besides its hyperparameters."""

    data_dir: str  # the folder the driver prepared; absolute: trials run in their own folder
    max_docs: int | None = None
    # Tests only: raise once, right after the checkpoint of the first evaluation at or past this
    # step, on the first attempt (a trial that has a checkpoint to resume from never raises).
    fail_at_step: int | None = None


class InjectedFailure(RuntimeError):
    """The failure `fail_at_step` asks for."""


def trial_config(config: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a trial's config dict (the private `_pico` entry left out)."""
    return TrainConfig.from_dict({k: v for k, v in config.items() if k in CONFIG_FIELDS})


def param_space(fixed: dict[str, Any], settings: TrialSettings) -> dict[str, Any]:
    """Tune's param_space: the fields fixed for every trial and the private settings."""
    return {**fixed, SETTINGS_KEY: dataclasses.asdict(settings)}


def train_trial(config: dict[str, Any]) -> None:
    """Train the trial's config, reporting each evaluation with a checkpoint (Tune trainable)."""
    from pico.train import train

    settings = TrialSettings(**config[SETTINGS_KEY])
    cfg = trial_config(config).validate()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)  # the CPUs Ray gave this trial, no more
    data = load_data(cfg, settings)
    checkpoint = tune.get_checkpoint()
    extra = {
        "device": _device_name(cfg),
        "node_id": ray.get_runtime_context().get_node_id(),
        "decode_latency_ms": decode_latency_ms(cfg, data),
    }
    fail_at = settings.fail_at_step if checkpoint is None else None

    def on_eval(metrics: dict[str, Any], save) -> None:
        with tempfile.TemporaryDirectory(prefix="pico-ckpt-") as tmp:
            folder = save(Path(tmp) / "checkpoint")
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(folder))
        if fail_at is not None and metrics["step"] >= fail_at:
            raise InjectedFailure(f"injected failure after step {metrics['step']}")

    resume = checkpoint.as_directory() if checkpoint else contextlib.nullcontext()
    with resume as resume_from:
        train(cfg, data, on_eval=on_eval, resume_from=resume_from)


def load_data(cfg: TrainConfig, settings: TrialSettings) -> Any:
    """Memory-map the data the driver prepared; on another node without that folder, prepare
    it there once (the cache's lock makes concurrent trials wait for the first)."""
    from pico.data import load_prepared, prepare_data

    if Path(settings.data_dir).is_dir():
        return load_prepared(settings.data_dir)
    return prepare_data(cfg.corpus, cfg.tokenizer, max_docs=settings.max_docs)


def decode_latency_ms(cfg: TrainConfig, data: Any, tokens: int = LATENCY_TOKENS) -> float:
    """Mean milliseconds per generated token: greedy, batch 1, through the decoding state.

    Measured on a freshly initialised model: the cost of a token does not depend on the weights.
    """
    from pico.generate import generate
    from pico.models import build_model

    device = torch.device(_device_name(cfg))
    model = build_model(cfg, data.vocab_size).to(device).eval()
    n = max(1, min(tokens, cfg.block_size - 1))  # stay inside the KV cache
    prompt = [[0]]
    generate(model, prompt, min(n, 4))  # warm-up: first-call allocations
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    generate(model, prompt, n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000 / n


def _device_name(cfg: TrainConfig) -> str:
    """Where this trial trains: Ray makes its GPU share visible as device 0."""
    if cfg.device in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return "cpu" if cfg.device == "auto" else cfg.device
