"""Decoding: the logit-processing steps one by one, then `generate` through every model."""

from __future__ import annotations

import math

import pytest
import torch

from pico.config import TrainConfig
from pico.errors import PicoError
from pico.generate import (
    apply_repetition_penalty,
    apply_temperature,
    generate,
    next_token,
    sample,
    top_k_filter,
    top_p_filter,
)
from pico.models import build_model

V = 13
BLOCK = 8
CONFIGS = {
    "kgram": dict(arch="kgram_mlp", k=3, norm="layernorm"),
    "lstm": dict(arch="lstm"),
    "tf-rope": dict(arch="kv_transformer", pos_embedding="rope"),
    "tf-learned": dict(arch="kv_transformer", pos_embedding="learned", tie_weights=False),
}


def tiny_model(arch: str, **overrides):
    base = dict(d_model=16, n_layer=2, n_head=2, hidden_size=24, block_size=BLOCK)
    torch.manual_seed(0)
    model = build_model(TrainConfig(arch=arch, **{**base, **overrides}).validate(), V)
    # Larger output weights than at init, so that greedy choices are far from ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model


@pytest.fixture(params=list(CONFIGS), ids=list(CONFIGS))
def model(request):
    return tiny_model(**CONFIGS[request.param])


def prompts(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- logit processing


def test_top_k_keeps_exactly_k():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    kept = top_k_filter(logits, 5)
    assert (kept > float("-inf")).sum(dim=-1).tolist() == [5] * 4
    top = logits.topk(5).indices
    assert torch.equal(kept.gather(1, top), logits.gather(1, top))
    assert torch.equal(top_k_filter(logits, 500), logits)  # k beyond V keeps everything


def test_top_k_breaks_ties_by_index():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    kept = top_k_filter(logits, 2)
    assert (kept > float("-inf")).nonzero()[:, 1].tolist() == [1, 2]
    wide = torch.zeros(1, 64)  # every logit tied
    assert (top_k_filter(wide, 5) > float("-inf")).nonzero()[:, 1].tolist() == [0, 1, 2, 3, 4]


def test_top_p_of_one_keeps_every_token():
    logits = torch.tensor([[20.0, 0.0, -5.0, -30.0]])
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()

    def kept(p: float) -> int:
        return (top_p_filter(logits, p) > float("-inf")).sum().item()

    assert [kept(p) for p in (0.2, 0.45, 0.7, 0.9, 0.97, 1.0)] == [1, 1, 2, 3, 4, 4]
    # Surviving logits are untouched, and the order of the vocabulary is kept.
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.equal(top_p_filter(shuffled, 0.7)[0, [1, 3]], shuffled[0, [1, 3]])
    assert top_p_filter(shuffled, 0.7)[0, [0, 2]].isinf().all()


def test_top_p_is_never_empty():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(0)) * 5
    for p in (1e-9, 1e-3, 0.5):
        kept = top_p_filter(logits, p)
        assert ((kept > float("-inf")).sum(dim=-1) >= 1).all()
        assert torch.equal(kept.argmax(dim=-1), logits.argmax(dim=-1))


def test_repetition_penalty_makes_seen_tokens_less_likely():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    context = torch.tensor([[0, 1, 1]])  # repeats count once
    out = apply_repetition_penalty(logits, context, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]  # positive divided, negative multiplied
    assert torch.equal(apply_repetition_penalty(logits, context, 1.0), logits)
    assert logits.tolist() == [[2.0, -2.0, 1.0, -1.0]]  # pure: input untouched


def test_temperature_scales_and_approaches_greedy():
    logits = torch.randn(16, 30, generator=torch.Generator().manual_seed(0))
    assert torch.equal(apply_temperature(logits, 0.5), logits * 2)
    greedy = logits.argmax(dim=-1)
    cold = sample(apply_temperature(logits, 1e-4), torch.Generator().manual_seed(0))
    assert torch.equal(cold, greedy)
    # Hot sampling does not just follow the argmax.
    hot = sample(apply_temperature(logits, 100.0), torch.Generator().manual_seed(0))
    assert not torch.equal(hot, greedy)


def test_sample_is_reproducible_with_a_seed():
    logits = torch.randn(32, 30, generator=torch.Generator().manual_seed(0))

    def draw(seed: int) -> torch.Tensor:
        return sample(logits, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_next_token_greedy_ignores_sampling_options():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(0))
    context = torch.zeros(4, 1, dtype=torch.long)
    pick = next_token(
        logits,
        context,
        strategy="greedy",
        temperature=0.3,
        top_k=2,
        top_p=0.1,
        repetition_penalty=1.0,
        generator=torch.Generator(),
    )
    assert torch.equal(pick, logits.argmax(dim=-1))


# ---------------------------------------------------------------- generate


@pytest.mark.parametrize("prompt_len", [3, BLOCK + 3], ids=["short", "longer-than-block"])
def test_greedy_cached_equals_recompute_past_block_size(model, prompt_len):
    x = prompts(2, prompt_len)
    cached = generate(model, x, 4 * BLOCK, use_cache=True)
    recomputed = generate(model, x, 4 * BLOCK, use_cache=False)
    assert cached == recomputed
    assert [len(row) for row in cached] == [4 * BLOCK] * 2


def test_sampling_cached_equals_recompute(model):
    x = prompts(2, 4)
    options = dict(strategy="sample", temperature=0.8, top_k=8, top_p=0.95, seed=7)
    assert generate(model, x, 2 * BLOCK, **options) == generate(
        model, x, 2 * BLOCK, use_cache=False, **options
    )


def test_batch_rows_match_single_prompts(model):
    x = prompts(3, 4)
    batched = generate(model, x, 12)
    assert batched == [generate(model, x[i : i + 1], 12)[0] for i in range(3)]


def test_rows_stop_at_end_of_text():
    model = tiny_model(**CONFIGS["tf-rope"])
    x = prompts(3, 4)
    free = generate(model, x, 10)
    eot = free[0][3]
    stopped = generate(model, x, 10, eot_id=eot)
    for row, full in zip(stopped, free, strict=True):
        expected = full[: full.index(eot) + 1] if eot in full else full
        assert row == expected
    assert stopped[0][-1] == eot and len(stopped[0]) <= 4


def test_generation_stops_once_every_row_has_ended(monkeypatch):
    model = tiny_model(**CONFIGS["lstm"])
    x = prompts(1, 4)
    first = generate(model, x, 1)[0][0]
    calls = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda idx, state: calls.append(1) or decode(idx, state))
    assert generate(model, x, 50, eot_id=first) == [[first]]
    assert len(calls) == 1  # the prefill only: no step after the last row ended


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(model):
    x = prompts(2, 3)
    rng = torch.get_rng_state()
    a = generate(model, x, 20, strategy="sample", seed=11)
    assert torch.equal(torch.get_rng_state(), rng)
    assert a == generate(model, x, 20, strategy="sample", seed=11)
    assert a != generate(model, x, 20, strategy="sample", seed=12)


def test_list_prompts_equal_tensor_prompts():
    model = tiny_model(**CONFIGS["kgram"])
    x = prompts(2, 5)
    assert generate(model, x.tolist(), 6) == generate(model, x, 6)


def test_repetition_penalty_changes_greedy_output():
    model = tiny_model(**CONFIGS["lstm"])
    x = prompts(1, 4)
    plain = generate(model, x, 30)[0]
    penalised = generate(model, x, 30, repetition_penalty=50.0)[0]
    assert penalised != plain
    assert len(set(penalised)) >= len(set(plain))


def test_zero_new_tokens_and_mode_restored():
    model = tiny_model(**CONFIGS["tf-learned"]).train()
    assert generate(model, prompts(2, 3), 0) == [[], []]
    assert model.training


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(strategy="beam"), "strategy"),
        (dict(strategy="sample", temperature=0.0), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
    ],
)
def test_bad_options_are_pico_errors(options, message):
    model = tiny_model(**CONFIGS["kgram"])
    options = {"max_new_tokens": 3, **options}
    with pytest.raises(PicoError, match=message):
        generate(model, prompts(1, 3), **options)


def test_ragged_or_empty_prompts_are_pico_errors():
    model = tiny_model(**CONFIGS["kgram"])
    with pytest.raises(PicoError, match="same length"):
        generate(model, [[1, 2], [3]], 3)
    with pytest.raises(PicoError, match="non-empty"):
        generate(model, [[]], 3)


def test_sampling_follows_the_model_distribution():
    # One step from a fixed prompt: sampled frequencies approach the softmax of the logits.
    model = tiny_model(**CONFIGS["kgram"])
    x = prompts(1, 3).repeat(4000, 1)
    draws = torch.tensor([row[0] for row in generate(model, x, 1, strategy="sample", seed=0)])
    probs = model(x[:1])[0][0, -1].softmax(-1)
    freq = torch.bincount(draws, minlength=V).float() / len(draws)
    assert (freq - probs).abs().max() < 4 * math.sqrt(0.25 / len(draws))
