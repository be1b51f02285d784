"""Embedding probes: nearest tokens, k-means clusters, CKA and neighbour overlap."""

from __future__ import annotations

import pytest
import torch

from pico.config import TrainConfig
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
