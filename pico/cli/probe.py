"""`launch/probe.py`: what a trained model's token embeddings have learned."""

from __future__ import annotations

from pathlib import Path

from pico.errors import ArgumentParser, PicoError


def build_parser() -> ArgumentParser:
    """The probe command's flags: at least one of --tokens, --annotate, --clusters, --compare."""
    parser = ArgumentParser(
        prog="launch/probe.py",
        description="Probe a checkpoint's input embeddings: nearest tokens, clusters, similarity.",
        epilog="Example: python launch/probe.py --checkpoint runs/train/checkpoint "
        "--tokens king,queen,love --clusters 8",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint folder")
    parser.add_argument("--tokens", help="comma-separated words: the nearest tokens of each")
    parser.add_argument("--annotate", metavar="TEXT", help="text to show token by token")
    parser.add_argument("--clusters", type=int, help="k-means clusters of the embedding matrix")
    parser.add_argument("--compare", type=Path, help="another checkpoint: embedding similarity")
    parser.add_argument("-k", "--k", type=int, default=8, help="neighbours per token [8]")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed [0]")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run every probe that was asked for and print its result."""
    from pico.checkpoint import load_model
    from pico.probe import annotate, embedding_clusters, embedding_similarity

    args = build_parser().parse_args(argv)
    if not (args.tokens or args.annotate or args.clusters or args.compare):
        raise PicoError("nothing to probe: pass --tokens, --annotate, --clusters or --compare")
    if args.k < 1:
        raise PicoError(f"-k must be positive, got {args.k}")
    model, _, tokenizer = load_model(args.checkpoint)
    if tokenizer is None:
        raise PicoError(f"{args.checkpoint} holds no tokenizer/: it cannot name tokens")

    if args.tokens:
        words = [w for w in args.tokens.split(",") if w]
        print(annotate(model, tokenizer, [i for w in words for i in tokenizer.encode(w)], args.k))
    if args.annotate:
        print(annotate(model, tokenizer, tokenizer.encode(args.annotate), args.k))
    if args.clusters:
        if not 1 <= args.clusters <= tokenizer.vocab_size:
            raise PicoError(f"--clusters must be in [1, {tokenizer.vocab_size}]")
        clustering = embedding_clusters(model, args.clusters, seed=args.seed)
        for c, members in enumerate(clustering.representatives):
            print(f"cluster {c:>3}: " + " ".join(repr(tokenizer.decode([m])) for m in members))
    if args.compare:
        other, _, other_tokenizer = load_model(args.compare)
        if other_tokenizer is None:
            raise PicoError(f"{args.compare} holds no tokenizer/: its tokens cannot be matched")
        ids_a, ids_b = shared_vocabulary(tokenizer, other_tokenizer)
        if len(ids_a) <= args.k:
            raise PicoError(f"the two vocabularies share only {len(ids_a)} tokens (need > k)")
        scores = embedding_similarity(model, other, ids_a, args.k, ids_b=ids_b)
        print(f"shared tokens: {len(ids_a)}")
        for name, value in scores.items():
            print(f"{name}: {value:.4f}")
    return 0


def shared_vocabulary(tok_a, tok_b) -> tuple[list[int], list[int]]:
    """Ids in each vocabulary of the tokens that decode to the same text in both."""
    by_text_b = {tok_b.decode([i]): i for i in range(tok_b.vocab_size)}
    pairs = []
    for i in range(tok_a.vocab_size):
        text = tok_a.decode([i])
        if text in by_text_b:
            pairs.append((i, by_text_b[text]))
    return [a for a, _ in pairs], [b for _, b in pairs]
