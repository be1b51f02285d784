"""Probes of what a model learned. Plain torch (no scikit-learn).

- Its input embeddings: nearest tokens, clusters, and how similar two models' embedding
  geometries are. Every model exposes its input embedding matrix (V, d) as
  `model.token_embedding`; similarity between tokens is the cosine of their embedding rows.
- Its hidden units (`model.hidden_units`): which tokens and contexts of held-out text activate
  each one most, and how selective it is (`probe_units`, defined in docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pico.errors import PicoError
from pico.models.base import LanguageModel

# What each architecture's hidden units are (see each model's `hidden_units`).
UNIT_KINDS = {
    "kgram_mlp": "hidden-layer activations",
    "lstm": "cell states",
    "kv_transformer": "MLP neurons",
}


class Tokenizer(Protocol):
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def raw_bytes(self, token_id: int) -> bytes | None: ...


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


def neighbour_lines(
    model: LanguageModel, tokenizer: Tokenizer, ids: Sequence[int], k: int
) -> list[str]:
    """One line per token of `ids`: the token and its k nearest tokens with their cosine
    similarity, e.g. `' king'  ->  ' queen' 0.71, ' prince' 0.66`."""
    ids = list(ids)
    if not ids:
        return []
    neighbours, sims = nearest_tokens(model, ids, k)
    lines = []
    for token, near, sim in zip(ids, neighbours.tolist(), sims.tolist(), strict=True):
        pairs = ", ".join(
            f"{tokenizer.decode([n])!r} {s:.2f}" for n, s in zip(near, sim, strict=True)
        )
        lines.append(f"{tokenizer.decode([token])!r:>16}  ->  {pairs}")
    return lines


def annotate(model: LanguageModel, tokenizer: Tokenizer, ids: Sequence[int], k: int) -> str:
    """The text of `ids`, a blank line, then `neighbour_lines` of every token."""
    ids = list(ids)
    if not ids:
        return ""
    return "\n".join([tokenizer.decode(ids), "", *neighbour_lines(model, tokenizer, ids, k)])


def word_tokens(tokenizer: Tokenizer, word: str) -> list[int]:
    """The tokens of `word` as running text has it: after a space. A byte-level BPE then gives
    its ` king` token, not the `king` that only starts a text. A space that the tokenizer keeps
    as a token of its own (char, byte) is not part of the word and is left out."""
    space = tokenizer.encode(" ")
    ids = tokenizer.encode(" " + word)
    if len(ids) > len(space) and ids[: len(space)] == space:
        return ids[len(space) :]
    return ids


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


def shared_vocabulary(tok_a: Tokenizer, tok_b: Tokenizer) -> tuple[list[int], list[int]]:
    """Ids in each vocabulary of the tokens that stand for the same bytes in both, and of their
    end-of-text tokens, in the order of the first vocabulary. Bytes, not decoded text: the bytes
    of partial characters all decode to the same replacement character."""
    by_bytes_b = {tok_b.raw_bytes(i): i for i in range(tok_b.vocab_size)}
    by_bytes_b.pop(None, None)  # end-of-text and unknown-character ids stand for no bytes
    pairs = [(tok_a.eot_id, tok_b.eot_id)]
    for i in range(tok_a.vocab_size):
        raw = tok_a.raw_bytes(i)
        if raw is not None and raw in by_bytes_b:
            pairs.append((i, by_bytes_b[raw]))
    pairs.sort()
    return [a for a, _ in pairs], [b for _, b in pairs]


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


@dataclass
class UnitProbe:
    """What one hidden unit responds to in held-out text; docs/metrics.md defines the scores."""

    layer: int
    unit: int
    selectivity: float  # the larger of the two below
    token_selectivity: float
    class_selectivity: float
    token: str  # the token its token selectivity is about
    token_class: str  # the token class its class selectivity is about
    top_tokens: list[dict[str, Any]]  # {"token", "mean", "count"}: the highest mean activations
    top_contexts: list[dict[str, Any]]  # {"context", "token", "activation"}: the highest ones


def probe_units(
    model: LanguageModel,
    tokenizer: Tokenizer,
    tokens: Sequence[int] | np.ndarray,
    window: int,
    *,
    n_tokens: int = 5,
    n_contexts: int = 5,
    context: int = 8,
    min_count: int = 3,
    batch_size: int = 16,
) -> list[UnitProbe]:
    """Probe every hidden unit of `model` on the held-out `tokens`, cut into windows of `window`
    tokens (at most the model's context; each window starts afresh, as in evaluation).

    A unit's selectivity for a token is `share - base`: `share` is the part of the unit's
    activation above its mean over the text that falls on that token, `base` the token's part
    of the text. The unit's token selectivity is the largest over tokens, clipped at 0: near 1
    when it rises above its mean on one rare token alone, 0 when no token gets more of its
    activation than of the text. Class selectivity is the same over `token_class`es; a common
    class can score no more than its rarity, 1 - base. A unit that never varies scores 0.

    Each unit also lists the `n_tokens` tokens seen at least `min_count` times with the highest
    mean activation, and its `n_contexts` highest activations with up to `context` tokens
    before each, in its window.
    """
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if ids.numel() < 2:
        raise PicoError(f"the unit probe needs at least 2 tokens of text, got {ids.numel()}")
    acts = unit_activations(model, ids, window, batch_size)  # (N, n_layer, width)
    width = acts.size(2)
    acts = acts.flatten(1)  # (N, units): unit u is unit u % width of layer u // width
    distinct, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    names = [tokenizer.decode([t]) for t in distinct.tolist()]
    class_names = [token_class(tokenizer, t) for t in distinct.tolist()]
    classes = sorted(set(class_names))
    class_of = torch.tensor([classes.index(c) for c in class_names])[inverse]

    live = acts.amax(0) > acts.amin(0)
    token_sel, best_token = _selectivity(acts, inverse, len(distinct), live)
    class_sel, best_class = _selectivity(acts, class_of, len(classes), live)

    sums = torch.zeros(len(distinct), acts.size(1)).index_add_(0, inverse, acts)
    means = (sums / counts[:, None]).masked_fill((counts < min_count)[:, None], float("-inf"))
    k = min(n_tokens, int((counts >= min_count).sum()))
    top_means, top_tokens = means.topk(k, dim=0)
    top_positions = acts.topk(min(n_contexts, ids.numel()), dim=0).indices

    probes = []
    for u in range(acts.size(1)):
        contexts = []
        for p in top_positions[:, u].tolist():
            start = max(p - p % window, p - context)  # what the model saw of it
            contexts.append(
                {
                    "context": tokenizer.decode(ids[start:p].tolist()),
                    "token": names[int(inverse[p])],
                    "activation": acts[p, u].item(),
                }
            )
        probes.append(
            UnitProbe(
                layer=u // width,
                unit=u % width,
                selectivity=max(token_sel[u].item(), class_sel[u].item()),
                token_selectivity=token_sel[u].item(),
                class_selectivity=class_sel[u].item(),
                token=names[best_token[u]],
                token_class=classes[best_class[u]],
                top_tokens=[
                    {"token": names[t], "mean": m, "count": int(counts[t])}
                    for t, m in zip(
                        top_tokens[:, u].tolist(), top_means[:, u].tolist(), strict=True
                    )
                ],
                top_contexts=contexts,
            )
        )
    return probes


@torch.inference_mode()
def unit_activations(
    model: LanguageModel, tokens: Tensor, window: int, batch_size: int = 16
) -> Tensor:
    """`model.hidden_units` over `tokens` (N,) cut into windows of `window` tokens, each started
    afresh: (N, n_layer, width) on the CPU. Runs in eval mode, then restores the model's mode."""
    if window < 1:
        raise PicoError(f"window must be a positive number of tokens, got {window}")
    device = next(model.parameters()).device
    n_full = tokens.numel() // window * window
    windows = list(tokens[:n_full].view(-1, window).split(batch_size))
    if n_full < tokens.numel():
        windows.append(tokens[n_full:][None])
    was_training = model.training
    model.eval()
    try:
        parts = [model.hidden_units(w.to(device)).float().cpu().flatten(0, 1) for w in windows]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def token_class(tokenizer: Tokenizer, token_id: int) -> str:
    """A coarse lexical class of a token, from the bytes it stands for, spaces around it aside:
    `newline`, `space`, `number`, `lowercase`, `capitalised` or `uppercase` (letters only),
    `punctuation` (no letter or digit), `mixed`, `partial character` (bytes of a multi-byte
    character), `end-of-text` or `unknown` (an id that stands for no fixed text)."""
    raw = tokenizer.raw_bytes(token_id)
    if raw is None:
        return "end-of-text" if token_id == tokenizer.eot_id else "unknown"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "partial character"
    word = text.strip()
    if "\n" in text:
        return "newline"
    if not word:
        return "space"
    if word.isdigit():
        return "number"
    if word.isalpha():
        if word.islower():
            return "lowercase"
        if word.isupper() and len(word) > 1:
            return "uppercase"
        return "capitalised" if word[0].isupper() else "mixed"
    return "mixed" if any(c.isalnum() for c in word) else "punctuation"


def _selectivity(
    acts: Tensor, labels: Tensor, n_labels: int, live: Tensor
) -> tuple[Tensor, Tensor]:
    """Each unit's selectivity (see `probe_units`) over the labels of the positions, and the
    label that reaches it. acts (N, units), labels (N,) in [0, n_labels), live (units,) bool:
    False for units that never vary, which score 0."""
    acts = acts.double()  # sums over many positions: keep the shares exact to float32
    excess = (acts - acts.mean(0)).clamp(min=0)
    share = torch.zeros(n_labels, acts.size(1), dtype=acts.dtype).index_add_(0, labels, excess)
    share /= excess.sum(0).clamp(min=torch.finfo(acts.dtype).tiny)
    base = (torch.bincount(labels, minlength=n_labels).double() / labels.numel())[:, None]
    best, label = (share - base).max(0)
    return torch.where(live, best.clamp(min=0.0), 0.0).float(), label


def _embeddings(model: LanguageModel) -> Tensor:
    """The model's input embeddings (V, d) as unit rows on the CPU, detached."""
    return F.normalize(model.token_embedding.detach().float().cpu(), dim=1)


def _neighbours(unit: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k cosine neighbours of rows `ids` among all rows of `unit` (unit rows), self excluded."""
    sims = unit[ids] @ unit.T
    sims[torch.arange(ids.numel()), ids] = float("-inf")
    top = sims.topk(k, dim=1)
    return top.indices, top.values
