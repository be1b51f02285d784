"""The three models behind one interface: forward, masked loss, decoding state, sizes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pico.config import TrainConfig
from pico.errors import PicoError
from pico.models import Transformer, build_model

V = 11  # a vocabulary small enough to hand-count, not a multiple of anything
BLOCK = 8

# (name, arch, overrides): every architecture with each of its options exercised somewhere.
CONFIGS = [
    ("kgram-none-relu", "kgram_mlp", dict(k=3, norm="none", activation="relu")),
    ("kgram-layernorm-gelu", "kgram_mlp", dict(k=4, norm="layernorm", n_layer=1)),
    ("kgram-rmsnorm-silu-k1", "kgram_mlp", dict(k=1, norm="rmsnorm", activation="silu")),
    ("lstm-tied", "lstm", dict(tie_weights=True)),
    ("lstm-untied-1layer", "lstm", dict(tie_weights=False, n_layer=1)),
    ("tf-rope-rmsnorm-tied", "kv_transformer", dict(pos_embedding="rope", norm="rmsnorm")),
    (
        "tf-learned-layernorm-untied",
        "kv_transformer",
        dict(pos_embedding="learned", norm="layernorm", tie_weights=False, activation="relu"),
    ),
    ("tf-rope-1layer-silu", "kv_transformer", dict(n_layer=1, activation="silu")),
]
IDS = [name for name, _, _ in CONFIGS]


def tiny_config(arch: str, **overrides) -> TrainConfig:
    base = dict(arch=arch, d_model=16, n_layer=2, n_head=2, hidden_size=24, k=3, block_size=BLOCK)
    return TrainConfig(**{**base, **overrides}).validate()


def tiny_model(arch: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_config(arch, **overrides), V).eval()


@pytest.fixture(params=CONFIGS, ids=IDS)
def spec(request) -> tuple[str, dict]:
    """(arch, overrides) of one tiny configuration."""
    _, arch, overrides = request.param
    return arch, overrides


@pytest.fixture
def model(spec):
    arch, overrides = spec
    return tiny_model(arch, **overrides)


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def reference_logits(model, seq: torch.Tensor) -> torch.Tensor:
    """Logits at every position from a full forward over the last max_context tokens only."""
    ctx = model.max_context or seq.size(1)
    return torch.stack(
        [model(seq[:, max(0, t + 1 - ctx) : t + 1])[0][:, -1] for t in range(seq.size(1))], dim=1
    )


def decode_in_chunks(model, seq: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    assert sum(sizes) == seq.size(1)
    state = model.init_state(seq.size(0), seq.device)
    chunks, start = [], 0
    for size in sizes:
        chunks.append(model.decode(seq[:, start : start + size], state))
        start += size
    return torch.cat(chunks, dim=1)


def test_forward_shapes_and_initial_loss(model):
    x = tokens(3, BLOCK)
    logits, loss = model(x)
    assert logits.shape == (3, BLOCK, V)
    assert loss is None
    _, loss = model(x, tokens(3, BLOCK, seed=2))
    # Small output weights at init: every token about equally likely.
    assert abs(loss.item() - math.log(V)) < 0.3


def test_padding_targets_never_count(model):
    x, y = tokens(2, BLOCK), tokens(2, BLOCK, seed=2)
    y[0, :3] = -1
    y[1, -2:] = -1
    logits, loss = model(x, y)
    keep = y != -1
    expected = F.cross_entropy(logits[keep], y[keep])
    torch.testing.assert_close(loss, expected)
    # The mask matters: counting the padded positions too gives another loss.
    assert not torch.allclose(model(x, tokens(2, BLOCK, seed=2))[1], loss)


@pytest.mark.parametrize(
    "sizes", [[8], [1] * 8, [3, 1, 1, 1, 2], [5, 3], [2, 6], [1, 4, 1, 2]], ids=str
)
def test_decode_matches_full_forward(model, sizes):
    x = tokens(2, BLOCK)
    full, _ = model(x)
    torch.testing.assert_close(decode_in_chunks(model, x, sizes), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sizes", [[3] + [1] * 17, [12, 1, 1, 6], [20], [7, 3, 1, 9]], ids=str)
def test_decode_past_block_size_matches_cropped_forward(model, sizes):
    x = tokens(2, 20)
    expected = reference_logits(model, x)
    torch.testing.assert_close(decode_in_chunks(model, x, sizes), expected, atol=1e-5, rtol=1e-5)


def test_fresh_state_forgets_the_previous_sequence(model):
    first, second = tokens(2, 5), tokens(2, 5, seed=3)
    decode_in_chunks(model, first, [5])
    torch.testing.assert_close(decode_in_chunks(model, second, [2, 3]), model(second)[0])


def test_kgram_sees_exactly_the_last_k_tokens():
    model = tiny_model("kgram_mlp", k=3)
    x = tokens(1, BLOCK)
    base, _ = model(x)
    t = 5
    for j, visible in [
        (t + 1, False),
        (BLOCK - 1, False),
        (t - 3, False),
        (t - 2, True),
        (t, True),
    ]:
        changed = x.clone()
        changed[0, j] = (x[0, j] + 1) % V
        moved = (model(changed)[0][0, t] - base[0, t]).abs().max().item()
        assert (moved > 1e-4) == visible, f"token {j} visible={moved > 1e-4} at position {t}"


def test_kgram_start_is_padded_with_a_dedicated_token():
    model = tiny_model("kgram_mlp", k=3)
    assert model.pad_id == V
    assert model.wte.num_embeddings == V + 1
    assert model.token_embedding.shape == (V, 16)
    # Position 0 sees [pad, pad, x0], which no sequence of real tokens reproduces.
    for filler in range(V):
        real = model(torch.tensor([[filler, filler, 4]]))[0][0, -1]
        assert not torch.allclose(model(torch.tensor([[4]]))[0][0, 0], real)


def test_transformer_rejects_sequences_longer_than_the_block():
    with pytest.raises(PicoError, match="block_size"):
        tiny_model("kv_transformer")(tokens(1, BLOCK + 1))


def test_param_counts_match_hand_computation():
    d, h, k, r = 16, 24, 3, 4
    kgram = tiny_model("kgram_mlp", norm="layernorm")
    # pad row + (k*d -> h) + (h -> h) + 2 layernorms (weight, bias) + (h -> V), biases included.
    assert kgram.num_params() == (V + 1) * d + (k * d * h + h) + (h * h + h) + 2 * 2 * h + (
        h * V + V
    )
    lstm = tiny_model("lstm", tie_weights=True)
    # Each layer: 4 gates x (input and recurrent weights + two biases); projection to d; tied head.
    layer0 = 4 * h * (d + h) + 2 * 4 * h
    layer1 = 4 * h * (h + h) + 2 * 4 * h
    assert lstm.num_params() == V * d + layer0 + layer1 + h * d
    assert tiny_model("lstm", tie_weights=False).num_params() == V * d + layer0 + layer1 + h * V
    tf = tiny_model("kv_transformer", pos_embedding="rope", tie_weights=True)
    block = 2 * d + 3 * d * d + d * d + 2 * r * d * d  # two norms, qkv, proj, MLP
    assert tf.num_params() == V * d + 2 * block + d
    untied = tiny_model("kv_transformer", pos_embedding="learned", tie_weights=False)
    assert untied.num_params() == V * d + BLOCK * d + 2 * block + d + d * V


def test_flops_per_token_match_hand_computation():
    d, h, k, r, L = 16, 24, 3, 4, 2
    assert tiny_model("kgram_mlp").flops_per_token() == 6 * (k * d * h + h * h + h * V)
    lstm_gates = 4 * h * (d + h) + 4 * h * (h + h)
    assert tiny_model("lstm").flops_per_token() == 6 * (lstm_gates + h * d + d * V)
    matmuls = L * (3 * d * d + d * d + 2 * r * d * d) + d * V
    expected = 6 * matmuls + 12 * L * d * BLOCK
    assert tiny_model("kv_transformer").flops_per_token() == expected


def test_state_dict_holds_parameters_only(spec, model):
    decode_in_chunks(model, tokens(2, 12), [5, 1, 6])  # a cache exists and is filled
    names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    assert set(model.state_dict()) == names
    arch, overrides = spec
    twin = tiny_model(arch, seed=1, **overrides)
    twin.load_state_dict(model.state_dict())
    x = tokens(2, BLOCK)
    torch.testing.assert_close(twin(x)[0], model(x)[0])


def test_tied_head_shares_the_embedding():
    tf = tiny_model("kv_transformer", tie_weights=True)
    assert tf.lm_head.weight is tf.wte.weight
    lstm = tiny_model("lstm", tie_weights=True)
    assert lstm.lm_head.weight is lstm.wte.weight


def test_max_context_and_embeddings(spec, model):
    arch, overrides = spec
    expected = {"kgram_mlp": overrides.get("k"), "lstm": None, "kv_transformer": BLOCK}
    assert model.max_context == expected[arch]
    assert model.token_embedding.shape == (V, 16)


def test_train_mode_dropout_and_gradients_reach_every_parameter(spec):
    arch, overrides = spec
    noisy = tiny_model(arch, **{**overrides, "dropout": 0.5}).train()
    x, y = tokens(2, BLOCK), tokens(2, BLOCK, seed=2)
    first, loss = noisy(x, y)
    assert not torch.equal(first, noisy(x)[0])
    loss.backward()
    for name, p in noisy.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_residual_projections_are_scaled_down():
    torch.manual_seed(0)
    cfg = tiny_config("kv_transformer", d_model=64, n_layer=8, n_head=4)
    tf = Transformer(cfg, V)
    expected = 0.02 / math.sqrt(2 * 8)
    assert abs(tf.blocks[0].mlp.proj.weight.std().item() - expected) < 0.2 * expected
    assert abs(tf.blocks[0].mlp.fc.weight.std().item() - 0.02) < 0.1 * 0.02


def test_unknown_arch_is_a_pico_error():
    cfg = TrainConfig(arch="kgram_mlp").replace(arch="gru")
    with pytest.raises(PicoError, match="unknown arch"):
        build_model(cfg, V)
