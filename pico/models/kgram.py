"""K-gram MLP (Bengio et al. 2003, makemore's MLP): the next token from the embeddings of the last
k tokens, concatenated and fed through a stack of hidden layers.

Every position is computed at once: the sequence is left-padded with k-1 pad tokens and unfolded
into overlapping windows, so there is no Python loop over positions or the batch. The window at
position t holds tokens t-k+1..t (it ends at the current token, never sees t+1). The pad token is
an extra embedding row with id `vocab_size`, so the start of a sequence is never mistaken for a
real token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pico.config import TrainConfig
from pico.models.base import TRAIN_FLOPS_PER_WEIGHT, LanguageModel, activation, init_normal


@dataclass
class KGramState:
    """Decoding state: the last k-1 tokens (pad tokens before the sequence starts)."""

    context: Tensor  # (B, k-1) long


class KGramMLP(LanguageModel):
    """Last k token embeddings -> n_layer x (Linear, norm, activation, dropout) -> logits."""

    def __init__(self, cfg: TrainConfig, vocab_size: int) -> None:
        super().__init__()
        self.k = cfg.k
        self.vocab_size = vocab_size
        self.pad_id = vocab_size
        self.max_context = cfg.k
        self.wte = nn.Embedding(vocab_size + 1, cfg.d_model)
        layers: list[nn.Module] = []
        width = cfg.k * cfg.d_model
        for _ in range(cfg.n_layer):
            linear = nn.Linear(width, cfg.hidden_size)
            # Kaiming init keeps the activations' scale through a deep stack without norms.
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
            layers += [linear, _norm(cfg.norm, cfg.hidden_size), activation(cfg.activation)]
            layers.append(nn.Dropout(cfg.dropout))
            width = cfg.hidden_size
        self.mlp = nn.Sequential(*layers)
        self.lm_head = nn.Linear(width, vocab_size)
        init_normal(self.lm_head)

    def logits(self, idx: Tensor) -> Tensor:
        pad = idx.new_full((idx.size(0), self.k - 1), self.pad_id)
        return self._window_logits(torch.cat([pad, idx], dim=1))

    def init_state(self, batch_size: int, device: torch.device | str) -> KGramState:
        context = torch.full((batch_size, self.k - 1), self.pad_id, dtype=torch.long, device=device)
        return KGramState(context)

    def decode(self, idx: Tensor, state: KGramState) -> Tensor:
        seq = torch.cat([state.context, idx], dim=1)
        state.context = seq[:, seq.size(1) - (self.k - 1) :]
        return self._window_logits(seq)

    def _window_logits(self, seq: Tensor) -> Tensor:
        """Logits for every full window of k tokens in `seq` (B, k-1+T) -> (B, T, V)."""
        windows = seq.unfold(1, self.k, 1)  # (B, T, k): windows[:, t] = seq[:, t : t+k]
        x = self.wte(windows).flatten(2)  # (B, T, k*d), oldest token first
        return self.lm_head(self.mlp(x))

    def flops_per_token(self) -> int:
        """6 * (k*d*h + (n_layer-1)*h*h + h*V): every weight of the hidden layers and the head is
        one multiply-add per token; 2 FLOPs each, x3 for forward + backward. Embedding lookups,
        biases, norms and activations are left out."""
        return TRAIN_FLOPS_PER_WEIGHT * self.linear_weights()

    @property
    def token_embedding(self) -> Tensor:
        return self.wte.weight[: self.vocab_size]

    def _unit_modules(self) -> list[nn.Module]:
        """The hidden units: each hidden layer's activation (after its norm)."""
        return [layer for layer in self.mlp if isinstance(layer, nn.ReLU | nn.GELU | nn.SiLU)]


def _norm(name: str, width: int) -> nn.Module:
    if name == "layernorm":
        return nn.LayerNorm(width)
    if name == "rmsnorm":
        return nn.RMSNorm(width)
    return nn.Identity()
