"""Decoder-only Transformer with a preallocated KV cache (in the spirit of nanoGPT and gpt-fast).

Pre-norm blocks (RMSNorm or LayerNorm), causal self-attention through
`F.scaled_dot_product_attention`, rotary or learned positions, an MLP of width mlp_ratio * d_model,
optional weight tying. Linear layers and norms have no bias, as in modern nanoGPT.

Decoding keeps, per layer, a key and a value cache of shape (B, n_head, block_size, head_dim)
preallocated in the state object (never in the module, so checkpoints never contain it) and
indexed by absolute position: a prefill writes slots 0..T-1, then each step writes one slot and
attends to the filled prefix.

Past the block size, a full forward sees only the last block_size tokens, and the keys and values
of every layer after the first depend on where that window starts (each token attended to a
different past). No cache of earlier keys can reproduce that, with rotary positions either: a ring
buffer of keys rotated at absolute positions would give sliding-window attention, which equals the
cropped recompute only for a single layer. So once the cache is full, each new token re-prefills
the last block_size tokens from scratch: exact, and as slow as recomputing.

With `parametrization="mup"` the model follows the maximal-update parametrisation (muP; Yang et
al. 2022, "Tensor Programs V") for Adam, relative to a base width b = `mup_base_width`. With
d = d_model and r = b / d (1 at the base width, smaller when wider):

- hidden matrices (attention qkv and projection, MLP in and out: both sides grow with d) start
  with std 0.02 * sqrt(r), i.e. variance proportional to 1/fan_in, and learn at lr * r
  (`lr_scales`; pico/optim.py also divides their weight decay by r, keeping lr * weight_decay, the
  decay per step, as at the base width);
- the token and position embeddings and the norms' gains (one side fixed, or vectors) keep their
  init and their learning rate;
- the output logits are multiplied by r, with the head's weights initialised and trained as at
  the base width: the readout multiplier form of muP rather than a zero-initialised head, because
  only this form lets the head stay tied to the embedding. Under Adam a tied matrix asks the same
  of both roles here: a width-independent init and learning rate, the multiplier acting only in
  the forward pass of the head;
- attention logits are q.k * sqrt(b_head) / d_head instead of q.k / sqrt(d_head), with
  b_head = b / n_head: proportional to 1/d_head, and equal to the usual scale at the base width.
  Widening keeps n_head and grows d_head (`TrainConfig.widen`).

At the base width every one of these factors is 1, so a muP model is the standard one: same
weights from the same seed, same logits, same learning rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.config import TrainConfig
from pico.errors import PicoError
from pico.models.base import TRAIN_FLOPS_PER_WEIGHT, LanguageModel, activation, init_normal


@dataclass
class KVCache:
    """Decoding state: per-layer key/value caches, how many positions they hold, and the last
    block_size tokens (needed to re-prefill once generation runs past the block size)."""

    keys: list[Tensor]  # per layer (B, n_head, block_size, head_dim)
    values: list[Tensor]
    tokens: Tensor  # (B, <= block_size) long
    pos: int = 0


class Rotary(nn.Module):
    """Rotary position embedding (RoPE, rotate-half form) with a table for block_size positions."""

    def __init__(self, head_dim: int, block_size: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # (block_size, head_dim)
        # Derived from the config, so not saved in checkpoints.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, pos: int) -> Tensor:
        """Rotate x (B, n_head, T, head_dim) as if it sat at positions pos..pos+T-1."""
        T = x.size(2)
        cos, sin = self.cos[pos : pos + T], self.sin[pos : pos + T]
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.scale = attention_scale(cfg)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def heads(self, x: Tensor, rotary: Rotary | None, pos: int = 0) -> tuple[Tensor, ...]:
        """Queries, keys and values of x (B, T, d) at positions pos..: (B, n_head, T, head_dim)
        each, queries and keys rotated."""
        B, T, C = x.shape
        q, k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            for t in self.qkv(x).split(C, dim=2)
        )
        if rotary is not None:
            q, k = rotary(q, pos), rotary(k, pos)
        return q, k, v

    def forward(
        self,
        x: Tensor,
        rotary: Rotary | None,
        pos: int = 0,
        cache: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Attend x (B, T, d) at positions pos..pos+T-1; with a cache, also to what it holds."""
        B, T, C = x.shape
        q, k, v = self.heads(x, rotary, pos)
        if cache is None:
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=p, is_causal=True, scale=self.scale
            )
        else:
            k_cache, v_cache = cache
            k_cache[:, :, pos : pos + T] = k
            v_cache[:, :, pos : pos + T] = v
            k, v = k_cache[:, :, : pos + T], v_cache[:, :, : pos + T]
            mask = None  # a single query sees every key held so far
            if T > 1:  # query i sits at position pos+i and sees keys 0..pos+i
                mask = torch.ones(T, pos + T, dtype=torch.bool, device=x.device).tril(pos)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.act = activation(cfg.activation)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.norm1 = _norm(cfg.norm, cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = _norm(cfg.norm, cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: Tensor,
        rotary: Rotary | None,
        pos: int = 0,
        cache: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        x = x + self.attn(self.norm1(x), rotary, pos, cache)
        return x + self.mlp(self.norm2(x))


class Transformer(LanguageModel):
    """Token (+ learned position) embedding -> n_layer pre-norm blocks -> final norm -> head."""

    def __init__(self, cfg: TrainConfig, vocab_size: int) -> None:
        super().__init__()
        self.block_size = cfg.block_size
        self.max_context = cfg.block_size
        self.n_head = cfg.n_head
        self.d_model = cfg.d_model
        self.wte = nn.Embedding(vocab_size, cfg.d_model)
        rope = cfg.pos_embedding == "rope"
        self.wpe = None if rope else nn.Embedding(cfg.block_size, cfg.d_model)
        self.rotary = Rotary(cfg.d_model // cfg.n_head, cfg.block_size) if rope else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = _norm(cfg.norm, cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        # muP's base width over this width (module docstring); 1 under the standard
        # parametrization, where nothing below depends on width.
        self.width_ratio = mup_ratio(cfg)
        self._init_weights(cfg.n_layer)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight

    def _init_weights(self, n_layer: int) -> None:
        """Normal(0.02) everywhere; the projections that write into the residual stream are
        scaled by 1/sqrt(2 * n_layer) so the stream's variance does not grow with depth. Under
        muP the hidden matrices' std is further scaled by sqrt(width_ratio)."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                init_normal(module)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                init_normal(proj, std=0.02 / math.sqrt(2 * n_layer))
            if self.width_ratio != 1:
                # Rescaled rather than redrawn: the same seed gives the same draws at any width
                # ratio and in either parametrization.
                with torch.no_grad():
                    for matrix in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj):
                        matrix.weight.mul_(math.sqrt(self.width_ratio))

    def lr_scales(self) -> dict[str, float]:
        """Under muP, the hidden matrices learn at width_ratio times the learning rate."""
        if self.width_ratio == 1:
            return {}
        hidden = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.proj.weight")
        return {
            name: self.width_ratio
            for name, _ in self.named_parameters()
            if name.startswith("blocks.") and name.endswith(hidden)
        }

    def logits(self, idx: Tensor) -> Tensor:
        if idx.size(1) > self.block_size:
            raise PicoError(f"{idx.size(1)} tokens exceed block_size={self.block_size}")
        return self._run(idx)

    def _run(self, idx: Tensor, state: KVCache | None = None) -> Tensor:
        """Logits for idx (B, T) at positions state.pos.. (0 without a state), filling the cache."""
        pos = 0 if state is None else state.pos
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(pos, pos + idx.size(1), device=idx.device))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            cache = None if state is None else (state.keys[i], state.values[i])
            x = block(x, self.rotary, pos, cache)
        logits = self.lm_head(self.norm_f(x))
        if self.width_ratio != 1:  # muP's readout multiplier
            logits = logits * self.width_ratio
        return logits

    def init_state(self, batch_size: int, device: torch.device | str) -> KVCache:
        shape = (batch_size, self.n_head, self.block_size, self.d_model // self.n_head)
        dtype = self._param_dtype()
        n = len(self.blocks)
        return KVCache(
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)],
            tokens=torch.zeros((batch_size, 0), dtype=torch.long, device=device),
        )

    def decode(self, idx: Tensor, state: KVCache) -> Tensor:
        room = self.block_size - state.pos
        if idx.size(1) <= room:
            return self._extend(idx, state)
        logits = [self._extend(idx[:, :room], state)] if room > 0 else []
        # The cache is full: each further token re-prefills its own last block_size tokens (see the
        # module docstring for why no cached key can be reused).
        for t in range(room, idx.size(1)):
            window = torch.cat([state.tokens, idx[:, t : t + 1]], dim=1)[:, -self.block_size :]
            state.pos = 0
            logits.append(self._extend(window, state)[:, -1:])
        return torch.cat(logits, dim=1)

    def _extend(self, idx: Tensor, state: KVCache) -> Tensor:
        """Run idx through the cache at the next free positions (they must fit)."""
        logits = self._run(idx, state)
        state.pos += idx.size(1)
        state.tokens = torch.cat([state.tokens, idx], dim=1)[:, -self.block_size :]
        return logits

    def flops_per_token(self) -> int:
        """PaLM / nanoGPT estimate: 6*N + 12*L*d*T with T = block_size.

        N = weights of every matmul (attention qkv and projection, MLP, output head; embedding
        lookups and norms are left out), each one multiply-add per token: 2 FLOPs, x3 for forward
        + backward. Attention at full context adds QK^T and AV, 2*d*T multiply-adds per layer:
        x2 FLOPs x3 = 12*L*d*T.
        """
        attention = 12 * len(self.blocks) * self.d_model * self.block_size
        return TRAIN_FLOPS_PER_WEIGHT * self.linear_weights() + attention

    @property
    def token_embedding(self) -> Tensor:
        return self.wte.weight

    def _unit_modules(self) -> list[nn.Module]:
        """The hidden units: the MLP neurons of every block, after the activation."""
        return [block.mlp.act for block in self.blocks]


def mup_ratio(cfg: TrainConfig) -> float:
    """muP's base width over the model's width; 1 under the standard parametrization."""
    return cfg.mup_base_width / cfg.d_model if cfg.parametrization == "mup" else 1.0


def attention_scale(cfg: TrainConfig) -> float | None:
    """The factor on q.k: None (attention's own 1/sqrt(d_head)) under the standard
    parametrization; under muP 1/sqrt(d_head) at the base width and proportional to 1/d_head
    from there, since after training q and k are correlated and q.k grows as d_head."""
    if cfg.parametrization != "mup":
        return None
    head_dim, base_head_dim = cfg.d_model / cfg.n_head, cfg.mup_base_width / cfg.n_head
    return head_dim**-0.5 * (base_head_dim / head_dim) ** 0.5


def _norm(name: str, width: int) -> nn.Module:
    return nn.RMSNorm(width) if name == "rmsnorm" else nn.LayerNorm(width, bias=False)
