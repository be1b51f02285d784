"""Stacked LSTM language model: embedding -> nn.LSTM -> output head.

The recurrence sees the whole past, so `max_context` is None; its decoding state is simply the
(h, c) pair of every layer. With `tie_weights` the hidden state is first projected down to
d_model so that the output head can share the embedding matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pico.config import TrainConfig
from pico.models.base import TRAIN_FLOPS_PER_WEIGHT, LanguageModel, init_normal


@dataclass
class LSTMState:
    """Decoding state: hidden and cell state of every layer, each (n_layer, B, hidden_size)."""

    h: Tensor
    c: Tensor


class LSTM(LanguageModel):
    """Embedding (V, d) -> LSTM(d -> hidden_size, n_layer) -> [proj to d] -> head to V."""

    def __init__(self, cfg: TrainConfig, vocab_size: int) -> None:
        super().__init__()
        self.max_context = None
        self.wte = nn.Embedding(vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        # nn.LSTM applies dropout between stacked layers only (and warns when there is one layer).
        between = cfg.dropout if cfg.n_layer > 1 else 0.0
        self.lstm = nn.LSTM(
            cfg.d_model, cfg.hidden_size, num_layers=cfg.n_layer, dropout=between, batch_first=True
        )
        if cfg.tie_weights:
            self.proj = nn.Linear(cfg.hidden_size, cfg.d_model, bias=False)
            self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
            self.lm_head.weight = self.wte.weight
        else:
            self.proj = nn.Identity()
            self.lm_head = nn.Linear(cfg.hidden_size, vocab_size, bias=False)
            init_normal(self.lm_head)

    def logits(self, idx: Tensor) -> Tensor:
        out, _ = self.lstm(self.drop(self.wte(idx)))
        return self._head(out)

    def init_state(self, batch_size: int, device: torch.device | str) -> LSTMState:
        shape = (self.lstm.num_layers, batch_size, self.lstm.hidden_size)
        zeros = torch.zeros(shape, dtype=self._param_dtype(), device=device)
        return LSTMState(zeros, zeros.clone())

    def decode(self, idx: Tensor, state: LSTMState) -> Tensor:
        out, (state.h, state.c) = self.lstm(self.drop(self.wte(idx)), (state.h, state.c))
        return self._head(out)

    def _head(self, out: Tensor) -> Tensor:
        return self.lm_head(self.proj(self.drop(out)))

    def flops_per_token(self) -> int:
        """6 * (sum over layers of 4*h*(in + h) + head), in = d for the first layer and h after,
        head = h*V (or h*d + d*V when tied): each LSTM gate is a matmul of the input and of the
        previous hidden state; 2 FLOPs per multiply-add, x3 for forward + backward. Gate
        nonlinearities and biases are left out."""
        gates = sum(
            getattr(self.lstm, f"weight_{kind}_l{layer}").numel()
            for layer in range(self.lstm.num_layers)
            for kind in ("ih", "hh")
        )
        return TRAIN_FLOPS_PER_WEIGHT * (gates + self.linear_weights())

    @property
    def token_embedding(self) -> Tensor:
        return self.wte.weight

    def hidden_units(self, idx: Tensor) -> Tensor:
        """The hidden units: every layer's cell state after each token, (B, T, n_layer,
        hidden_size). nn.LSTM returns no cell states per position, so the tokens are stepped
        through one at a time."""
        state = self.init_state(idx.size(0), idx.device)
        cells = []
        for t in range(idx.size(1)):
            x = self.drop(self.wte(idx[:, t : t + 1]))
            _, (state.h, state.c) = self.lstm(x, (state.h, state.c))
            cells.append(state.c.transpose(0, 1))  # (B, n_layer, hidden_size)
        return torch.stack(cells, dim=1)
