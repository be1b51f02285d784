"""AdamW with decoupled weight decay on matrices only, per-group learning-rate multipliers, and
the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch

from pico.config import TrainConfig
from pico.models.base import LanguageModel


def make_optimizer(
    model: LanguageModel, cfg: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW where only 2-D weights (matmuls, embeddings) decay; biases and norms do not.

    Every group holds `lr_scale`, its learning rate relative to the schedule's (see `set_lr`):
    1, except for the parameters `model.lr_scales()` names (a muP model's hidden matrices). Those
    get their own group whose weight decay is divided by the same factor, so that the decay per
    step, lr * weight_decay in AdamW, is the one tuned at the base width.
    """
    scales = model.lr_scales()
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    plain = [p for name, p in params if name not in scales]
    matrices, vectors = [p for p in plain if p.dim() >= 2], [p for p in plain if p.dim() < 2]
    groups = [
        {"params": matrices, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": vectors, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    for scale in sorted(set(scales.values())):
        scaled = [p for name, p in params if scales.get(name) == scale]
        decay = cfg.weight_decay / scale
        groups.append({"params": scaled, "weight_decay": decay, "lr_scale": scale})
    optimizer = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda"
    )
    set_lr(optimizer, cfg.lr)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to `lr` times its `lr_scale` (1 for optimizer states
    saved before groups had one)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay from `lr` to the floor `min_lr`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
