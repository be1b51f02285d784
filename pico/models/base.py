"""The interface every Pico language model implements, so that training, decoding and probes
never need to know which architecture they hold.

A model maps token ids (B, T) to next-token logits (B, T, V). Besides the full `forward` used for
training, each model keeps an incremental decoding state: `init_state` makes an empty one and
`decode` consumes new tokens after what the state already holds, updating it in place. One
`pico.generate.generate` therefore serves every architecture.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Training costs three forward passes' worth of matmuls (forward, then gradients with respect to
# inputs and to weights), and one multiply-add is two FLOPs: 6 FLOPs per weight per token.
TRAIN_FLOPS_PER_WEIGHT = 6


class LanguageModel(nn.Module):
    """Base class: next-token logits, a masked loss, a decoding state and size accounting.

    Subclasses implement `logits`, `init_state`, `decode`, `flops_per_token`,
    `token_embedding` and `_unit_modules` (or `hidden_units`), and set `max_context`.
    """

    max_context: int | None
    """How many past tokens (the current one included) a full forward uses; None: unbounded."""

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, V) for token ids `idx` (B, T), and the mean cross-entropy against
        `targets` (B, T) over positions whose target is not -1 (None without targets)."""
        logits = self.logits(idx)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    def logits(self, idx: Tensor) -> Tensor:
        """Next-token logits (B, T, V) for every position of `idx` (B, T)."""
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device | str) -> Any:
        """An empty decoding state for `batch_size` sequences: nothing consumed yet."""
        raise NotImplementedError

    def decode(self, idx: Tensor, state: Any) -> Tensor:
        """Consume `idx` (B, T>=1) after the tokens `state` holds; return their logits (B, T, V).

        The logits equal those a full forward over the whole sequence would give at the same
        positions (for a bounded `max_context`: over the last `max_context` tokens). T > 1 is a
        prefill. `state` is updated in place.
        """
        raise NotImplementedError

    def num_params(self) -> int:
        """All trainable parameters, each shared tensor counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), see each model for its formula."""
        raise NotImplementedError

    @property
    def token_embedding(self) -> Tensor:
        """The input embedding matrix (V, d), one row per real token (a view of the weight)."""
        raise NotImplementedError

    def hidden_units(self, idx: Tensor) -> Tensor:
        """The activations of the model's hidden units after each token of `idx` (B, T):
        (B, T, n_layer, width). Each model says which units these are (`_unit_modules`)."""
        captured: list[Tensor] = []
        hooks = [
            module.register_forward_hook(lambda _module, _inputs, out: captured.append(out))
            for module in self._unit_modules()
        ]
        try:
            self.logits(idx)
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack(captured, dim=2)

    def _unit_modules(self) -> list[nn.Module]:
        """The modules whose outputs, one per layer in order, are the model's hidden units."""
        raise NotImplementedError

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter name (muP's per-layer learning rates); a
        parameter not named learns at the schedule's rate."""
        return {}

    def linear_weights(self) -> int:
        """Weights of every nn.Linear (a tied output head counts: it is still a matmul)."""
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))

    def _param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def init_normal(module: nn.Linear | nn.Embedding, std: float = 0.02) -> None:
    """Normal(0, std) weights and zero bias. On an output head, small weights make every token
    about equally likely at first (a first loss near ln V)."""
    nn.init.normal_(module.weight, mean=0.0, std=std)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def activation(name: str) -> nn.Module:
    """The activation module for a `TrainConfig.activation` name."""
    return {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[name]()
