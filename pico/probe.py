"""Probes of what a model's input embeddings learned: nearest tokens, clusters, and how similar
two models' embedding geometries are. Plain torch (no scikit-learn).

Every model exposes its input embedding matrix (V, d) as `model.token_embedding`; similarity
between tokens is the cosine of their embedding rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from pico.errors import PicoError
from pico.models.base import LanguageModel


class Tokenizer(Protocol):
    vocab_size: int

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class Clustering:
    """Cluster label of every token (V,) and each cluster's tokens nearest to its centroid."""

    labels: Tensor
    representatives: list[list[int]]


def nearest_tokens(
    model: LanguageModel, token_ids: Sequence[int] | Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """The k tokens most cosine-similar to each of `token_ids` (n,), the token itself excluded:
    (ids (n, k), similarities (n, k)), most similar first."""
    emb = _embeddings(model)
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    if not 1 <= k < emb.size(0):
        raise PicoError(f"k must be in [1, {emb.size(0) - 1}] for {emb.size(0)} tokens, got {k}")
    return _neighbours(emb, ids, k)


def annotate(model: LanguageModel, tokenizer: Tokenizer, ids: Sequence[int], k: int) -> str:
    """The text of `ids`, then one line per token: the token and its k nearest tokens with their
    cosine similarity, e.g. `' king'  ->  ' queen' 0.71, ' prince' 0.66`."""
    ids = list(ids)
    if not ids:
        return ""
    neighbours, sims = nearest_tokens(model, ids, k)
    lines = [tokenizer.decode(ids), ""]
    for token, near, sim in zip(ids, neighbours.tolist(), sims.tolist(), strict=True):
        pairs = ", ".join(
            f"{tokenizer.decode([n])!r} {s:.2f}" for n, s in zip(near, sim, strict=True)
        )
        lines.append(f"{tokenizer.decode([token])!r:>16}  ->  {pairs}")
    return "\n".join(lines)


def embedding_clusters(
    model: LanguageModel, n_clusters: int, seed: int = 0, n_representatives: int = 8
) -> Clustering:
    """k-means (seeded k-means++) of the unit-normalised embedding rows, so that clusters follow
    cosine similarity; each cluster's representatives are its members nearest to its centroid."""
    emb = _embeddings(model)
    labels, centroids = kmeans(emb, n_clusters, seed)
    representatives = []
    for c in range(n_clusters):
        members = (labels == c).nonzero().squeeze(1)
        dist = (emb[members] - centroids[c]).norm(dim=1)
        order = dist.argsort()[:n_representatives]
        representatives.append(members[order].tolist())
    return Clustering(labels, representatives)


def embedding_similarity(
    model_a: LanguageModel,
    model_b: LanguageModel,
    shared_ids: Sequence[int] | Tensor,
    k: int,
    ids_b: Sequence[int] | Tensor | None = None,
) -> dict[str, float]:
    """How alike two models' embeddings are on the tokens `shared_ids` (ids valid in both):
    `neighbour_overlap`, the mean fraction of each token's k nearest neighbours (among the
    shared tokens) that both models agree on, and `linear_cka` of the two (n, d) matrices.
    Both are 1 for identical geometries and do not need the widths to match. When the two
    vocabularies number tokens differently, `ids_b[i]` is model_b's id of `shared_ids[i]`."""
    ids_a = torch.as_tensor(shared_ids, dtype=torch.long)
    ids_b = ids_a if ids_b is None else torch.as_tensor(ids_b, dtype=torch.long)
    a = model_a.token_embedding.detach().float().cpu()[ids_a]
    b = model_b.token_embedding.detach().float().cpu()[ids_b]
    return {"neighbour_overlap": neighbour_overlap(a, b, k), "linear_cka": linear_cka(a, b)}


def neighbour_overlap(a: Tensor, b: Tensor, k: int) -> float:
    """Mean over rows of |N_a(i) ∩ N_b(i)| / k, where N(i) are row i's k cosine-nearest other
    rows in a (n, d_a) and in b (n, d_b): 1 when both agree on every neighbourhood."""
    if not 1 <= k < a.size(0):
        raise PicoError(f"k must be in [1, {a.size(0) - 1}] for {a.size(0)} shared tokens, got {k}")
    rows = torch.arange(a.size(0))
    near_a, _ = _neighbours(F.normalize(a, dim=1), rows, k)
    near_b, _ = _neighbours(F.normalize(b, dim=1), rows, k)
    shared = (near_a[:, :, None] == near_b[:, None, :]).any(-1).sum(-1)
    return (shared.float() / k).mean().item()


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) of x (n, d1) and y (n, d2):
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred matrices. 1 for x with itself;
    invariant to orthogonal transforms and isotropic scaling of either."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    return ((y.T @ x).square().sum() / ((x.T @ x).norm() * (y.T @ y).norm())).item()


def kmeans(x: Tensor, n_clusters: int, seed: int, max_iter: int = 100) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means of the rows of x (n, d) from a seeded k-means++ start:
    (labels (n,), centroids (n_clusters, d)). An empty cluster keeps its previous centroid."""
    if not 1 <= n_clusters <= x.size(0):
        raise PicoError(f"n_clusters must be in [1, {x.size(0)}], got {n_clusters}")
    x = x.detach().float().cpu()
    generator = torch.Generator().manual_seed(seed)
    centroids = _kmeans_plus_plus(x, n_clusters, generator)
    labels = torch.cdist(x, centroids).argmin(dim=1)
    for _ in range(max_iter):
        counts = torch.bincount(labels, minlength=n_clusters)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        new_labels = torch.cdist(x, centroids).argmin(dim=1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels, centroids


def _kmeans_plus_plus(x: Tensor, n_clusters: int, generator: torch.Generator) -> Tensor:
    """Arthur & Vassilvitskii (2007): each next centre drawn with probability ∝ squared distance
    to the nearest centre chosen so far, which spreads the start over the data."""
    first = torch.randint(x.size(0), (1,), generator=generator)
    centroids = [x[first[0]]]
    dist2 = (x - centroids[0]).square().sum(dim=1)
    for _ in range(1, n_clusters):
        # All points already coincide with centres (duplicates): any pick is as good.
        weights = dist2 if dist2.sum() > 0 else torch.ones_like(dist2)
        pick = torch.multinomial(weights, 1, generator=generator)[0]
        centroids.append(x[pick])
        dist2 = torch.minimum(dist2, (x - x[pick]).square().sum(dim=1))
    return torch.stack(centroids)


def _embeddings(model: LanguageModel) -> Tensor:
    """The model's input embeddings (V, d) as unit rows on the CPU, detached."""
    return F.normalize(model.token_embedding.detach().float().cpu(), dim=1)


def _neighbours(unit: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k cosine neighbours of rows `ids` among all rows of `unit` (unit rows), self excluded."""
    sims = unit[ids] @ unit.T
    sims[torch.arange(ids.numel()), ids] = float("-inf")
    top = sims.topk(k, dim=1)
    return top.indices, top.values
