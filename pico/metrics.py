"""Every metric Pico reports, defined once, on held-out data.

The evaluation set is fixed: the first `eval_tokens` targets of the validation split, cut into
windows of the model's block size. Every model and every trial of an experiment scores exactly
the same target tokens; a model with a longer block simply sees more context. The last window is
padded, and padded positions carry the target -1, which no metric ever counts.

Definitions (docs/metrics.md explains them at length):
    val_loss        mean cross-entropy in nats over the evaluation targets
    perplexity      exp(val_loss)
    token_accuracy  fraction of evaluation targets that are the model's top-1 prediction
    val_bpb         total cross-entropy in bits over the UTF-8 bytes those targets stand for
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pico.errors import PicoError

PAD_TARGET = -1  # the ignore_index of every loss: padding is never a target


@dataclass(frozen=True)
class EvalSet:
    """Fixed evaluation windows: inputs and targets of shape (n_windows, block_size)."""

    inputs: torch.Tensor
    targets: torch.Tensor

    @property
    def n_targets(self) -> int:
        """How many real (non-padding) targets the set holds."""
        return int((self.targets != PAD_TARGET).sum())


def build_eval_set(val_tokens: np.ndarray, block_size: int, eval_tokens: int) -> EvalSet:
    """Cut the first `eval_tokens` targets of the validation tokens into block-size windows."""
    n_targets = min(eval_tokens, len(val_tokens) - 1)
    if n_targets < 1:
        raise PicoError("the validation split has fewer than 2 tokens: use a larger corpus")
    tokens = torch.from_numpy(np.asarray(val_tokens[: n_targets + 1], dtype=np.int64))
    n_windows = math.ceil(n_targets / block_size)
    inputs = torch.zeros(n_windows * block_size, dtype=torch.long)
    targets = torch.full((n_windows * block_size,), PAD_TARGET, dtype=torch.long)
    inputs[:n_targets] = tokens[:-1]
    targets[:n_targets] = tokens[1:]
    return EvalSet(inputs.view(n_windows, block_size), targets.view(n_windows, block_size))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    eval_set: EvalSet,
    token_bytes: np.ndarray,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Score `model` on the fixed evaluation set: val_loss, perplexity, token_accuracy, val_bpb."""
    was_training = model.training
    model.eval()
    bytes_per_token = torch.as_tensor(np.asarray(token_bytes), dtype=torch.float64)
    total_nats, total_correct, total_bytes, total_targets = 0.0, 0, 0.0, 0
    device_type = torch.device(device).type
    for start in range(0, len(eval_set.inputs), batch_size):
        x = eval_set.inputs[start : start + batch_size].to(device)
        y = eval_set.targets[start : start + batch_size]
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, _ = model(x)
        logits = logits.float().cpu()
        mask = y != PAD_TARGET
        nats = F.cross_entropy(logits[mask], y[mask], reduction="sum")
        total_nats += float(nats)
        total_correct += int((logits[mask].argmax(-1) == y[mask]).sum())
        total_bytes += float(bytes_per_token[y[mask]].sum())
        total_targets += int(mask.sum())
    model.train(was_training)
    val_loss = total_nats / total_targets
    return {
        "val_loss": val_loss,
        "perplexity": perplexity(val_loss),
        "token_accuracy": total_correct / total_targets,
        "val_bpb": bits_per_byte(total_nats, total_bytes),
    }


def perplexity(mean_nats: float) -> float:
    """exp of a mean cross-entropy in nats; inf when it overflows."""
    return math.exp(mean_nats) if mean_nats < 700 else math.inf


def bits_per_byte(total_nats: float, total_bytes: float) -> float:
    """Total cross-entropy converted to bits, over the bytes of text that was predicted."""
    return total_nats / math.log(2) / total_bytes if total_bytes > 0 else math.nan


# The flat record handed to the search at every evaluation. docs/metrics.md documents each key.
RECORD_FIELDS = (
    "step",
    "tokens_seen",
    "train_loss",
    "val_loss",
    "perplexity",
    "token_accuracy",
    "val_bpb",
    "grad_norm",
    "lr",
    "tokens_per_s",
    "elapsed_s",
    "n_params",
    "flops_per_token",
    "train_flops",
    "diverged",
)


def training_record(
    *,
    model: torch.nn.Module,
    counters: dict[str, float],
    train_loss: float,
    scores: dict[str, float] | None,
    grad_norm: float,
    lr: float,
    tokens_per_s: float,
) -> dict[str, float | int | bool]:
    """Assemble one evaluation's record. `scores` is None for a diverged run (metrics are NaN)."""
    if scores is None:
        scores = dict.fromkeys(("val_loss", "perplexity", "token_accuracy", "val_bpb"), math.nan)
    flops_per_token = int(model.flops_per_token())
    record = {
        "step": int(counters["step"]),
        "tokens_seen": int(counters["tokens_seen"]),
        "train_loss": float(train_loss),
        **scores,
        "grad_norm": float(grad_norm),
        "lr": float(lr),
        "tokens_per_s": float(tokens_per_s),
        "elapsed_s": float(counters["elapsed_s"]),
        "n_params": int(model.num_params()),
        "flops_per_token": flops_per_token,
        "train_flops": float(flops_per_token) * int(counters["tokens_seen"]),
        "diverged": not math.isfinite(train_loss) or math.isnan(scores["val_loss"]),
    }
    assert tuple(record) == RECORD_FIELDS
    return record
