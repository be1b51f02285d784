"""The coordinate check: does each layer's activation size stay put as the Transformer widens?

    rows = coord_check(cfg, data, widths=(32, 64, 128, 256, 512), steps=10, seeds=(0, 1))
    slopes = size_slopes(rows)   # {(parametrization, layer): d log(size) / d log(width)}

For each width the model `cfg` describes is built at `d_model=width` and trained on the CPU for a
few steps with Pico's optimizer (pico.optim: AdamW with its per-group learning rates) at the
constant learning rate `cfg.lr` on batches from the training split. In the forward pass of every
step the mean absolute value of each layer's output is recorded: its typical coordinate size.
muP (Yang et al., "Tensor Programs V") is built so that once training has moved the weights these
sizes do not depend on width (its logits and attention logits start smaller the wider the model,
as 1/sqrt(width), and the updates set them); under the standard parametrization updates make
them grow with width. A line flat in width is what lets a learning rate tuned at one width serve
at another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pico.config import TrainConfig
from pico.errors import PicoError
from pico.models import Transformer, build_model
from pico.optim import make_optimizer
from pico.train import BatchSampler, TrainingData, seed_everything

WIDTHS = (32, 64, 128, 256, 512)


def coord_check(
    cfg: TrainConfig,
    data: TrainingData,
    widths: Sequence[int] = WIDTHS,
    steps: int = 10,
    seeds: Sequence[int] = (0,),
) -> list[dict[str, Any]]:
    """Train `cfg` at each width for `steps` updates per seed and record activation sizes.

    Returns one row per (width, seed, step, layer): `parametrization`, `width`, `seed`, `step`
    (updates done before the forward pass measured: 0 is the initialisation, `steps` the pass
    after the last update), `layer` and `size` (mean absolute value of that layer's output).
    """
    if cfg.arch != "kv_transformer":
        raise PicoError(f"the coordinate check is for the Transformer, got arch={cfg.arch!r}")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    rows = []
    for width in widths:
        wide = cfg.replace(d_model=width).validate()
        for seed in seeds:
            for step, sizes in enumerate(_train_and_measure(wide.replace(seed=seed), data, steps)):
                rows += [
                    {
                        "parametrization": cfg.parametrization,
                        "width": width,
                        "seed": seed,
                        "step": step,
                        "layer": layer,
                        "size": size,
                    }
                    for layer, size in sizes.items()
                ]
    return rows


def _train_and_measure(cfg: TrainConfig, data: TrainingData, steps: int) -> list[dict[str, float]]:
    """Activation sizes by layer in the forward pass before each of `steps` updates and after
    the last: `steps + 1` dicts."""
    device = torch.device("cpu")
    seed_everything(cfg.seed)
    model = build_model(cfg, data.vocab_size)
    optimizer = make_optimizer(model, cfg, device)  # holds every group's scaled lr
    batches = BatchSampler(data.train, cfg, device)
    sizes: dict[str, float] = {}
    hooks = _attach(model, sizes)
    history = []
    try:
        for step in range(steps + 1):
            x, y = batches.next()
            logits, loss = model(x, y)
            sizes["logits"] = _size(logits)
            history.append(dict(sizes))
            if step == steps:
                break
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        for hook in hooks:
            hook.remove()
    return history


def _attach(model: Transformer, sizes: dict[str, float]) -> list[Any]:
    """Forward hooks that write each layer's activation size into `sizes`, in forward order."""

    def output(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, out: Tensor) -> None:
            sizes[name] = _size(out)

        return hook

    def attention_logits(name: str, attn: nn.Module) -> Any:
        # SDPA never shows its scores: rebuild them from the attention's own queries and keys.
        def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
            x, rotary, pos = inputs[:3]
            with torch.no_grad():
                q, k, _ = attn.heads(x, rotary, pos)
                scale = attn.scale if attn.scale is not None else q.size(-1) ** -0.5
                scores = (q @ k.transpose(-2, -1)) * scale
                causal = torch.ones(x.size(1), x.size(1), dtype=torch.bool).tril()
                sizes[name] = _size(scores[..., causal])

        return hook

    hooks = [model.drop.register_forward_hook(output("embedding"))]
    for i, block in enumerate(model.blocks):
        hooks += [
            block.attn.register_forward_pre_hook(
                attention_logits(f"block{i}.attn_logits", block.attn)
            ),
            block.attn.register_forward_hook(output(f"block{i}.attn")),
            block.mlp.act.register_forward_hook(output(f"block{i}.mlp_hidden")),
            block.mlp.register_forward_hook(output(f"block{i}.mlp")),
            block.register_forward_hook(output(f"block{i}.residual")),
        ]
    return hooks


def _size(t: Tensor) -> float:
    return t.detach().abs().mean().item()


def size_slopes(
    rows: list[dict[str, Any]], step: int | None = None
) -> dict[tuple[str, str], float]:
    """The least-squares slope of log(size) against log(width), sizes averaged over seeds, at
    `step` (None: the last step recorded), by (parametrization, layer). Zero: flat in width; 1:
    proportional to it."""
    step = max(r["step"] for r in rows) if step is None else step
    means: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in rows:
        if r["step"] == step:
            key = (r["parametrization"], r["layer"])
            means.setdefault(key, {}).setdefault(r["width"], []).append(r["size"])
    slopes = {}
    for key, by_width in means.items():
        widths = sorted(by_width)
        sizes = [np.mean(by_width[w]) for w in widths]
        slopes[key] = float(np.polyfit(np.log(widths), np.log(sizes), 1)[0])
    return slopes
