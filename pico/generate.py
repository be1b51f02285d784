"""Text generation for every Pico model through its decoding state.

`generate` prefills the prompt once, then feeds one token per step into the model's decoding
state (`use_cache=False` instead recomputes a full forward over the last `max_context` tokens each
step: the slow reference). The next token is chosen by a chain of small pure functions on the
last logits: repetition penalty, then temperature, top-k and top-p, then sampling or argmax.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from pico.errors import PicoError
from pico.models.base import LanguageModel

STRATEGIES = ("greedy", "sample")


def apply_repetition_penalty(logits: Tensor, context: Tensor, penalty: float) -> Tensor:
    """CTRL-style penalty (Keskar et al. 2019): for every token already in `context` (B, T),
    divide its logit by `penalty` if positive and multiply it if negative, so that penalty > 1
    always makes a repeat less likely. logits (B, V) -> new (B, V)."""
    if penalty == 1.0:
        return logits
    seen = logits.gather(1, context)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, context, seen)


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Sharpen (< 1) or flatten (> 1) the distribution: logits / temperature."""
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep exactly the k largest logits of each row (ties broken by index: the lower index is
    kept); the rest -> -inf."""
    # topk does not promise an order among equal values; a stable sort keeps index order.
    indices = logits.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, logits.gather(-1, indices))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability reaches p; the rest -> -inf. The most likely token is always kept, and p = 1
    keeps every token."""
    if p >= 1.0:
        # Not left to the cumulative sum below: in float32 it reaches 1.0 while tokens remain.
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # A token is dropped when the tokens ranked above it already reach p. The first never is.
    drop = probs.cumsum(dim=-1) - probs >= p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter(-1, order, sorted_logits)


def sample(logits: Tensor, generator: torch.Generator) -> Tensor:
    """One token per row (B, V) -> (B,), drawn from softmax(logits) with `generator`."""
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def next_token(
    logits: Tensor,
    context: Tensor,
    *,
    strategy: str,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    generator: torch.Generator,
) -> Tensor:
    """The next token of each row from its last logits (B, V) and its context (B, T) -> (B,)."""
    logits = apply_repetition_penalty(logits, context, repetition_penalty)
    if strategy == "greedy":  # temperature, top-k and top-p never change the argmax
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return sample(logits, generator)


def generate(
    model: LanguageModel,
    prompt_ids: Tensor | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    strategy: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eot_id: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` tokens; return the new tokens of each row.

    `prompt_ids` is a (B, T) tensor or B lists of the same length T >= 1. A row stops after it
    produces `eot_id` (which ends its list); the batch stops when every row has. Sampling draws
    from a local generator seeded with `seed` (a random seed when None), never the global RNG.
    `use_cache=False` recomputes a full forward over the last `model.max_context` tokens every
    step instead of using the decoding state (the same tokens, slower). Runs in eval mode under
    `torch.inference_mode()`, then restores the model's previous mode.
    """
    _check_options(strategy, temperature, top_k, top_p, repetition_penalty, max_new_tokens)
    device = next(model.parameters()).device
    idx = _as_batch(prompt_ids, device)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    choose = functools.partial(
        next_token,
        strategy=strategy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        generator=generator,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            new = _decode_loop(model, idx, max_new_tokens, choose, eot_id, use_cache)
    finally:
        model.train(was_training)
    return [_until_eot(row, eot_id) for row in new.tolist()]


def _decode_loop(
    model: LanguageModel,
    idx: Tensor,
    max_new_tokens: int,
    choose: Callable[[Tensor, Tensor], Tensor],
    eot_id: int | None,
    use_cache: bool,
) -> Tensor:
    """The new tokens (B, <= max_new_tokens); rows that ended are padded with eot_id."""
    prompt_len = idx.size(1)
    state = model.init_state(idx.size(0), idx.device) if use_cache else None
    new = idx  # what the decoding state has not consumed yet: first the prompt (a prefill)
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        logits = model.decode(new, state) if use_cache else _recompute(model, idx)
        token = choose(logits[:, -1], idx)
        if eot_id is not None:
            token = token.masked_fill(finished, eot_id)
            finished |= token == eot_id
        new = token[:, None]
        idx = torch.cat([idx, new], dim=1)
        if eot_id is not None and finished.all():
            break
    return idx[:, prompt_len:]


def _recompute(model: LanguageModel, idx: Tensor) -> Tensor:
    """The reference: a full forward over what the model can see (the last max_context tokens)."""
    window = idx if model.max_context is None else idx[:, -model.max_context :]
    return model(window)[0]


def _until_eot(row: list[int], eot_id: int | None) -> list[int]:
    if eot_id is not None and eot_id in row:
        return row[: row.index(eot_id) + 1]
    return row


def _as_batch(prompt_ids: Tensor | Sequence[Sequence[int]], device: torch.device) -> Tensor:
    if not isinstance(prompt_ids, Tensor):
        lengths = {len(row) for row in prompt_ids}
        if len(lengths) > 1:
            raise PicoError(f"prompts must all have the same length, got lengths {sorted(lengths)}")
        prompt_ids = torch.tensor(list(map(list, prompt_ids)), dtype=torch.long)
    if prompt_ids.dim() != 2 or prompt_ids.size(0) == 0 or prompt_ids.size(1) == 0:
        raise PicoError(
            f"prompt_ids must be a non-empty (batch, time) array, got {tuple(prompt_ids.shape)}"
        )
    return prompt_ids.to(device=device, dtype=torch.long)


def _check_options(
    strategy: str,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    max_new_tokens: int,
) -> None:
    if strategy not in STRATEGIES:
        raise PicoError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if not temperature > 0:
        raise PicoError(f"temperature must be positive, got {temperature}")
    if top_k is not None and top_k < 1:
        raise PicoError(f"top_k must be a positive integer, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise PicoError(f"top_p must be in (0, 1], got {top_p}")
    if not repetition_penalty > 0:
        raise PicoError(f"repetition_penalty must be positive, got {repetition_penalty}")
    if max_new_tokens < 0:
        raise PicoError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
