"""The Tune trainable: one Pico training run per trial, reporting every evaluation to Tune.

A trial's config is a flat dict of TrainConfig fields plus one private entry, `_pico`, with what
the trial needs that is not a hyperparameter: its id, its experiment's folder, where the prepared
data lives, fault injection. The trial owns `<experiment>/trials/<id>/` (launch/storage.py). At
each evaluation it logs the metrics there, then writes a checkpoint there, then hands the metrics
to `tune.report`. Whenever it starts (first run, a retry after a failure, a resumed search, on any
node) it continues from its newest checkpoint, exactly where it left off; Tune's own checkpoints
are not used. Logging before checkpointing means a trial killed between the two repeats that
evaluation, never skips it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from launch.storage import ExperimentStore
from pico.config import TrainConfig

SETTINGS_KEY = "_pico"
CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))
LATENCY_TOKENS = 32


@dataclass(frozen=True)
class TrialSettings:
    """What every trial needs besides its hyperparameters."""

    experiment: str  # the experiment's folder or URI (launch/storage.py)
    trial_id: str
    data_dir: str  # the folder the driver prepared; absolute: trials run in their own folder
    # Tests only: raise once, right after the checkpoint of the first evaluation at or past this
    # step, on the first attempt (a trial that has a checkpoint to resume from never raises).
    fail_at_step: int | None = None
    # The search trial whose config a confirmation trial reruns with a fresh seed (the study's
    # `confirms`): the recorder reads it; training does not depend on it.
    confirms: str | None = None


class InjectedFailure(RuntimeError):
    """The failure `fail_at_step` asks for."""


def trial_config(config: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a trial's config dict (the private `_pico` entry left out)."""
    return TrainConfig.from_dict({k: v for k, v in config.items() if k in CONFIG_FIELDS})


def pico_trial_id(config: dict[str, Any]) -> str:
    """The Pico trial id (Optuna's trial number) of a trial's config."""
    return config[SETTINGS_KEY]["trial_id"]


def train_trial(config: dict[str, Any]) -> None:
    """Train the trial's config from its newest checkpoint, logging and reporting each
    evaluation (Tune trainable; see the module docstring)."""
    from pico.train import train

    settings = TrialSettings(**config[SETTINGS_KEY])
    cfg = trial_config(config).validate()
    store = ExperimentStore(settings.experiment)
    trial_id = settings.trial_id
    final = finished_evaluation(store, trial_id, cfg.max_steps)
    if final is not None:  # it ended before a crash kept the driver from hearing it
        tune.report(final)
        return
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)  # the CPUs Ray gave this trial, no more
    data = load_data(cfg, settings)
    extra = {
        "device": _device_name(cfg),
        "node": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "decode_latency_ms": decode_latency_ms(cfg, data),
    }
    with store.latest_checkpoint(trial_id) as resume_from:
        fail_at = settings.fail_at_step if resume_from is None else None

        def on_eval(metrics: dict[str, Any], save) -> None:
            record = {**metrics, **extra}
            store.write_eval(trial_id, record)
            checkpoint = store.save_checkpoint(trial_id, int(metrics["step"]), save)
            tune.report({**record, "checkpoint": checkpoint})
            if fail_at is not None and metrics["step"] >= fail_at:
                raise InjectedFailure(f"injected failure after step {metrics['step']}")

        train(cfg, data, on_eval=on_eval, resume_from=resume_from)


def finished_evaluation(store: ExperimentStore, trial_id: str, max_steps: int) -> dict | None:
    """The trial's last evaluation if its newest checkpoint is where it ended (its last step, or
    a diverged loss), else None."""
    steps = store.checkpoint_steps(trial_id)
    evals = store.read_evals(trial_id) if steps else []
    if not evals or evals[-1]["step"] != steps[-1]:
        return None
    last = evals[-1]
    if last["step"] < max_steps and not last.get("diverged"):
        return None
    return {**last, "checkpoint": store.checkpoint_uri(trial_id, steps[-1])}


def load_data(cfg: TrainConfig, settings: TrialSettings) -> Any:
    """Memory-map the data the driver prepared; on another node without that folder, prepare
    it there once (the cache's lock makes concurrent trials wait for the first)."""
    from pico.data import load_prepared, prepare_data

    if Path(settings.data_dir).is_dir():
        return load_prepared(settings.data_dir)
    return prepare_data(cfg.corpus, cfg.tokenizer, max_docs=cfg.max_docs)


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
