"""Probes: nearest tokens, k-means clusters, CKA and neighbour overlap across vocabularies,
words as running text spells them, and what each hidden unit responds to."""

from __future__ import annotations

import pytest
import torch

from pico.config import TrainConfig
from pico.data import build_tokenizer
from pico.errors import PicoError
from pico.models import build_model
from pico.probe import (
    annotate,
    embedding_clusters,
    embedding_similarity,
    kmeans,
    linear_cka,
    nearest_tokens,
    neighbour_overlap,
    probe_units,
    shared_vocabulary,
    token_class,
    word_tokens,
)

V, D = 40, 16
ARCHS = ("kgram_mlp", "lstm", "kv_transformer")


def tiny_model(arch: str = "kv_transformer", seed: int = 0):
    torch.manual_seed(seed)
    cfg = TrainConfig(arch=arch, d_model=D, n_layer=1, n_head=2, hidden_size=24, block_size=8)
    return build_model(cfg.validate(), V).eval()


def with_embeddings(emb: torch.Tensor):
    """A model whose input embedding rows are `emb` (V, D)."""
    model = tiny_model()
    with torch.no_grad():
        model.wte.weight.copy_(emb)
    return model


def random(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class CharTokenizer:
    vocab_size = V

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("A") + i) for i in ids)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_model_exposes_its_input_embeddings(arch):
    model = tiny_model(arch)
    assert model.token_embedding.shape == (V, D)  # the K-gram's pad row is left out
    ids, sims = nearest_tokens(model, [0, 5], k=3)
    assert ids.shape == sims.shape == (2, 3)


def test_nearest_tokens_exclude_self_and_are_ordered():
    emb = random(V, D)
    model = with_embeddings(emb)
    query = torch.tensor([0, 7, 39])
    ids, sims = nearest_tokens(model, query, k=5)
    assert not (ids == query[:, None]).any()
    assert (sims[:, :-1] >= sims[:, 1:]).all()
    unit = emb / emb.norm(dim=1, keepdim=True)
    brute = unit[query] @ unit.T
    brute[torch.arange(3), query] = -2
    assert torch.equal(ids, brute.topk(5).indices)
    torch.testing.assert_close(sims, brute.topk(5).values)


def test_nearest_tokens_follow_cosine_not_length():
    emb = random(V, D)
    emb[1] = 100 * emb[0]  # same direction, much longer
    emb[2] = emb[0] + 0.5 * random(D, seed=1)
    ids, _ = nearest_tokens(with_embeddings(emb), [0], k=2)
    assert ids[0].tolist() == [1, 2]


def test_nearest_tokens_reject_bad_k():
    with pytest.raises(PicoError, match="k must be"):
        nearest_tokens(tiny_model(), [0], k=V)


def test_annotate_lists_each_token_with_its_neighbours():
    model = tiny_model()
    text = annotate(model, CharTokenizer(), [0, 1, 2], k=2)
    lines = text.splitlines()
    assert lines[0] == "ABC"
    assert len(lines) == 2 + 3
    ids, _ = nearest_tokens(model, [1], k=2)
    assert lines[3].strip().startswith("'B'")
    for neighbour in ids[0].tolist():
        assert repr(CharTokenizer().decode([neighbour])) in lines[3]


def test_linear_cka_of_a_matrix_with_itself_is_one_and_invariant():
    x = random(200, D)
    q, _ = torch.linalg.qr(random(D, D, seed=1))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x + 3.0) == pytest.approx(1.0, abs=1e-9)  # centred
    # Widths may differ; unrelated matrices score low.
    assert linear_cka(x, random(200, 3 * D, seed=2)) < 0.3


def test_neighbour_overlap_is_one_for_the_same_geometry():
    x = random(60, D)
    q, _ = torch.linalg.qr(random(D, D, seed=1))
    assert neighbour_overlap(x, x, 5) == 1.0
    assert neighbour_overlap(x, 3 * x @ q, 5) == 1.0
    assert neighbour_overlap(x, random(60, D, seed=2), 5) < 0.5


def test_embedding_similarity_of_a_model_with_itself_and_a_rotation():
    model = tiny_model()
    shared = list(range(0, V, 2))
    same = embedding_similarity(model, model, shared, k=4)
    assert same["neighbour_overlap"] == 1.0
    assert same["linear_cka"] == pytest.approx(1.0, abs=1e-9)
    q, _ = torch.linalg.qr(random(D, D, seed=1))
    rotated = with_embeddings(model.token_embedding.detach() @ q)
    turned = embedding_similarity(model, rotated, shared, k=4)
    assert turned["neighbour_overlap"] == 1.0
    assert turned["linear_cka"] == pytest.approx(1.0, abs=1e-6)
    other = embedding_similarity(model, tiny_model(seed=1), shared, k=4)
    assert other["linear_cka"] < 0.9


def planted(n_per: int = 25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    centres = 10 * random(4, D, seed=seed)
    truth = torch.arange(4).repeat_interleave(n_per)
    return centres[truth] + 0.3 * random(4 * n_per, D, seed=seed + 1), truth


def test_kmeans_recovers_planted_clusters():
    x, truth = planted()
    labels, centroids = kmeans(x, 4, seed=0)
    # One label per planted cluster, different labels for different clusters.
    pairs = set(zip(truth.tolist(), labels.tolist(), strict=True))
    assert len(pairs) == 4 and len({label for _, label in pairs}) == 4
    for true_c, label in pairs:
        torch.testing.assert_close(centroids[label], x[truth == true_c].mean(0))


def test_kmeans_is_seeded_and_survives_duplicates():
    x, _ = planted()
    assert torch.equal(kmeans(x, 4, seed=3)[0], kmeans(x, 4, seed=3)[0])
    labels, _ = kmeans(torch.ones(10, 3), 3, seed=0)
    assert labels.shape == (10,)
    with pytest.raises(PicoError, match="n_clusters"):
        kmeans(x, 0, seed=0)


def test_embedding_clusters_give_representatives_nearest_their_centroid():
    emb, truth = planted(n_per=10)
    model = with_embeddings(emb)
    clustering = embedding_clusters(model, 4, seed=0, n_representatives=3)
    assert clustering.labels.shape == (V,)
    # Unit-normalised planted clusters stay separated: the partition is recovered.
    assert len(set(zip(truth.tolist(), clustering.labels.tolist(), strict=True))) == 4
    unit = emb / emb.norm(dim=1, keepdim=True)
    for c, reps in enumerate(clustering.representatives):
        assert 1 <= len(reps) <= 3
        members = (clustering.labels == c).nonzero().squeeze(1)
        assert all(clustering.labels[r] == c for r in reps)
        centroid = unit[members].mean(0)
        dist = (unit[members] - centroid).norm(dim=1)
        assert reps[0] == members[dist.argmin()].item()


# ------------------------------------------------------------------- across vocabularies

ROYAL = "the king and the queen spoke of love; the king's men, the queen's court. " * 40


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE that has merged ` king` but not ` queen` whole."""
    return build_tokenizer("bpe:300", [ROYAL, "Ünïcödé ✓ ∑ € 😀 " * 5])


def test_a_vocabulary_shares_every_token_with_itself(bpe):
    ids_a, ids_b = shared_vocabulary(bpe, bpe)
    assert ids_a == ids_b == list(range(bpe.vocab_size))
    # So a model compared with itself is identical on every token, partial characters included.
    model = build_model(TrainConfig(d_model=D, n_layer=1, n_head=2).validate(), bpe.vocab_size)
    same = embedding_similarity(model, model, ids_a, k=5, ids_b=ids_b)
    assert same == {"neighbour_overlap": 1.0, "linear_cka": pytest.approx(1.0, abs=1e-9)}


def test_tokens_are_matched_by_their_bytes_not_their_text(bpe):
    byte = build_tokenizer("byte")
    ids_a, ids_b = shared_vocabulary(bpe, byte)
    assert len(ids_a) == 257  # the 256 single bytes and end-of-text, nothing spurious
    assert len(set(ids_b)) == 257
    assert all(bpe.raw_bytes(a) == byte.raw_bytes(b) for a, b in zip(ids_a, ids_b, strict=True))
    assert (bpe.eot_id, byte.eot_id) in zip(ids_a, ids_b, strict=True)


def test_words_are_probed_as_running_text_spells_them(bpe):
    king = word_tokens(bpe, "king")
    assert king == bpe.encode(" king") and len(king) == 1 and bpe.decode(king) == " king"
    assert bpe.decode(word_tokens(bpe, "queen")) == " queen"
    char = build_tokenizer("char", [ROYAL])
    assert char.decode(word_tokens(char, "king")) == "king"  # the space token is not the word


# ------------------------------------------------------------------------ hidden units


@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_units_are_causal_and_leave_no_hooks(arch):
    model = tiny_model(arch)
    x = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(0))
    units = model.hidden_units(x)
    assert units.shape[:3] == (2, 8, 1)
    changed = x.clone()
    changed[:, 5] = (x[:, 5] + 1) % V
    again = model.hidden_units(changed)
    assert torch.equal(units[:, :5], again[:, :5]) and not torch.equal(units[:, 5], again[:, 5])
    assert not any(m._forward_hooks for m in model.modules())


def test_lstm_units_are_its_cell_states():
    torch.manual_seed(0)
    cfg = TrainConfig(arch="lstm", d_model=D, n_layer=2, hidden_size=24).validate()
    model = build_model(cfg, V).eval()
    x = torch.randint(0, V, (3, 7), generator=torch.Generator().manual_seed(1))
    _, (_, c_n) = model.lstm(model.wte(x))
    torch.testing.assert_close(model.hidden_units(x)[:, -1], c_n.transpose(0, 1))


class ByteList:
    """A tokenizer over a fixed list of byte strings, end-of-text last."""

    def __init__(self, pieces: list[bytes]):
        self.pieces, self.eot_id, self.vocab_size = pieces, len(pieces), len(pieces) + 1

    def raw_bytes(self, token_id: int) -> bytes | None:
        return None if token_id == self.eot_id else self.pieces[token_id]


def test_token_classes():
    pieces = [b" the", b"King", b" KING", b"I", b"42", b"\n", b"  ", b"!?", b"a1", b"\xc3", b"kING"]
    tok = ByteList(pieces)
    assert [token_class(tok, i) for i in range(tok.vocab_size)] == [
        "lowercase",
        "capitalised",
        "uppercase",
        "capitalised",
        "number",
        "newline",
        "space",
        "punctuation",
        "mixed",
        "partial character",
        "mixed",
        "end-of-text",
    ]


def planted_units():
    """A one-layer K-gram MLP (k=1, ReLU) on one-hot embeddings whose hidden units are: 0 fires
    on `a` only, 1 on every digit, 2 never (dead), 3 on every token by degrees; and a text in
    which digits are rare, as they are in prose."""
    tok = build_tokenizer("char", ["abcdef 0123456789.,\n"])
    cfg = TrainConfig(
        arch="kgram_mlp", k=1, d_model=tok.vocab_size, n_layer=1, hidden_size=4,
        activation="relu", norm="none", block_size=8,
    )  # fmt: skip
    model = build_model(cfg.validate(), tok.vocab_size).eval()
    digits = tok.encode("0123456789")
    with torch.no_grad():
        model.token_embedding.copy_(torch.eye(tok.vocab_size))
        layer = model.mlp[0]
        layer.bias.zero_()
        layer.weight.zero_()
        layer.weight[0, tok.encode("a")] = 1.0
        layer.weight[1, digits] = 1.0
        layer.weight[3] = torch.linspace(0, 1, tok.vocab_size)
    weights = torch.full((tok.vocab_size,), 9.0)
    weights[digits] = 1.0
    weights[[tok.unk_id, tok.eot_id]] = 0.0
    text = torch.multinomial(
        weights, 2000, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    return model, tok, text.numpy()


def test_probe_units_finds_the_planted_token_and_class_units():
    model, tok, text = planted_units()
    probes = probe_units(model, tok, text, window=8, context=8)
    assert [(p.layer, p.unit) for p in probes] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    a_unit, digit_unit, dead, mixed = probes
    # All of the unit's activation falls on `a`: its selectivity is how rare `a` is.
    n_a = int((text == tok.encode("a")[0]).sum())
    assert a_unit.token == "a" and a_unit.token_selectivity == pytest.approx(1 - n_a / len(text))
    assert a_unit.selectivity == a_unit.token_selectivity
    assert a_unit.top_tokens[0] == {"token": "a", "mean": 1.0, "count": n_a}
    assert all(c["token"] == "a" and c["activation"] == 1.0 for c in a_unit.top_contexts)
    # A window starts afresh: no context reaches back past its start.
    assert all(len(c["context"]) <= 7 for p in probes for c in p.top_contexts)
    # Ten digits share the unit: the class, not any one token, is what it means.
    n_digits = int(sum((text == d).sum() for d in tok.encode("0123456789")))
    assert digit_unit.token_class == "number" and digit_unit.token in "0123456789"
    assert digit_unit.class_selectivity == pytest.approx(1 - n_digits / len(text))
    assert digit_unit.token_selectivity < 0.2
    assert digit_unit.selectivity == digit_unit.class_selectivity
    assert (dead.selectivity, dead.token_selectivity, dead.class_selectivity) == (0, 0, 0)
    assert mixed.selectivity < 0.5  # graded over every token: not selective


@pytest.mark.parametrize("arch", ARCHS)
def test_probe_units_covers_every_unit_of_every_architecture(arch):
    tok = build_tokenizer("char", ["abcdefghijklmnopqrstuvwxyz0123456789 .,;:!?\nABCDEF"])
    torch.manual_seed(0)
    cfg = TrainConfig(arch=arch, d_model=D, n_layer=2, n_head=2, hidden_size=24, block_size=8)
    model = build_model(cfg.validate(), tok.vocab_size)
    text = tok.encode("the quick brown fox jumps over the lazy dog. " * 4)
    probes = probe_units(model, tok, text, window=8)
    width = {"kgram_mlp": 24, "lstm": 24, "kv_transformer": 4 * D}[arch]
    units = [(layer, unit) for layer in range(2) for unit in range(width)]
    assert [(p.layer, p.unit) for p in probes] == units
    assert all(0 <= p.selectivity <= 1 for p in probes)
    assert all(p.selectivity == max(p.token_selectivity, p.class_selectivity) for p in probes)
    assert model.training  # probed in eval mode, then left as it was


def test_probe_units_rejects_too_little_text():
    model, tok, _ = planted_units()
    with pytest.raises(PicoError, match="at least 2 tokens"):
        probe_units(model, tok, [1], window=8)
