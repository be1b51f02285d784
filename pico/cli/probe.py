"""`launch/probe.py`: what a trained model's token embeddings and hidden units have learned."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from pico.config import TrainConfig
from pico.errors import ArgumentParser, PicoError
from pico.files import check_output

UNITS_SHOWN = 10  # most selective units printed
UNITS_CHARTED = 20  # most selective units in the chart


def build_parser() -> ArgumentParser:
    """The probe command's flags: at least one of --tokens, --annotate, --clusters, --compare,
    --units."""
    parser = ArgumentParser(
        prog="launch/probe.py",
        description="Probe a checkpoint: nearest tokens, clusters and similarity of its input "
        "embeddings; what its hidden units respond to in held-out text.",
        epilog="Example: python launch/probe.py --checkpoint runs/train/checkpoint "
        "--tokens king,queen,love --clusters 8 --units runs/train/units.json",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint folder")
    parser.add_argument(
        "--tokens",
        help="comma-separated words: the nearest tokens of each, as running text spells it "
        "(after a space)",
    )
    parser.add_argument("--annotate", metavar="TEXT", help="text to show token by token")
    parser.add_argument("--clusters", type=int, help="k-means clusters of the embedding matrix")
    parser.add_argument("--compare", type=Path, help="another checkpoint: embedding similarity")
    parser.add_argument(
        "--units",
        type=Path,
        metavar="FILE.json",
        help="probe every hidden unit on held-out text: JSON to FILE.json, chart to FILE.png",
    )
    parser.add_argument(
        "--units-tokens", type=int, default=8192, help="validation tokens the units see [8192]"
    )
    parser.add_argument("--cache-dir", type=Path, help="prepared-data cache [$PICO_CACHE]")
    parser.add_argument("-k", "--k", type=int, default=8, help="neighbours per token [8]")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed [0]")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run every probe that was asked for and print its result."""
    from pico.checkpoint import load_model
    from pico.probe import annotate, embedding_clusters

    args = build_parser().parse_args(argv)
    if not (args.tokens or args.annotate or args.clusters or args.compare or args.units):
        raise PicoError(
            "nothing to probe: pass --tokens, --annotate, --clusters, --compare or --units"
        )
    if args.k < 1:
        raise PicoError(f"-k must be positive, got {args.k}")
    if args.units is not None and args.units.suffix != ".json":
        raise PicoError(f"--units names a .json file, got {args.units}")
    if args.units_tokens < 2:
        raise PicoError(f"--units-tokens must be at least 2, got {args.units_tokens}")
    if args.units is not None:
        check_output(args.units, "--units")
        check_output(args.units.with_suffix(".png"), "--units (its chart)")
    model, cfg, tokenizer = load_model(args.checkpoint)
    if tokenizer is None:
        raise PicoError(f"{args.checkpoint} holds no tokenizer/: it cannot name tokens")
    if args.clusters is not None and not 1 <= args.clusters <= tokenizer.vocab_size:
        raise PicoError(f"--clusters must be in [1, {tokenizer.vocab_size}]")
    # Read the other checkpoint before printing anything: a bad one is refused on its own.
    other = load_other(args.compare, tokenizer, args.k) if args.compare else None

    if args.tokens:
        print_words(model, tokenizer, [w.strip() for w in args.tokens.split(",")], args.k)
    if args.annotate:
        print(annotate(model, tokenizer, tokenizer.encode(args.annotate), args.k))
    if args.clusters:
        clustering = embedding_clusters(model, args.clusters, seed=args.seed)
        for c, members in enumerate(clustering.representatives):
            print(f"cluster {c:>3}: " + " ".join(repr(tokenizer.decode([m])) for m in members))
    if other is not None:
        print_comparison(model, tokenizer, other, args.k)
    if args.units:
        probe_units_to_file(model, cfg, tokenizer, args)
    return 0


def print_words(model: Any, tokenizer: Any, words: list[str], k: int) -> None:
    """The nearest tokens of each word's tokens, saying when a word spans several."""
    from pico.probe import neighbour_lines, word_tokens

    for word in filter(None, words):
        ids = word_tokens(tokenizer, word)
        if len(ids) > 1:
            pieces = " ".join(repr(tokenizer.decode([i])) for i in ids)
            print(f"{word!r} spans {len(ids)} tokens in running text: {pieces}")
        print("\n".join(neighbour_lines(model, tokenizer, list(dict.fromkeys(ids)), k)))


def load_other(checkpoint: Path, tokenizer: Any, k: int) -> tuple[Any, Any]:
    """The model and tokenizer of the checkpoint to compare with, checked to share more than `k`
    tokens with `tokenizer`."""
    from pico.checkpoint import load_model
    from pico.probe import shared_vocabulary

    other, _, other_tokenizer = load_model(checkpoint)
    if other_tokenizer is None:
        raise PicoError(f"{checkpoint} holds no tokenizer/: its tokens cannot be matched")
    shared, _ = shared_vocabulary(tokenizer, other_tokenizer)
    if len(shared) <= k:
        raise PicoError(f"the two vocabularies share only {len(shared)} tokens (need > k)")
    return other, other_tokenizer


def print_comparison(model: Any, tokenizer: Any, other: tuple[Any, Any], k: int) -> None:
    """How alike this model's embeddings and another checkpoint's are on their shared tokens."""
    from pico.probe import embedding_similarity, shared_vocabulary

    other_model, other_tokenizer = other
    ids_a, ids_b = shared_vocabulary(tokenizer, other_tokenizer)
    scores = embedding_similarity(model, other_model, ids_a, k, ids_b=ids_b)
    print(f"shared tokens: {len(ids_a)}")
    for name, value in scores.items():
        print(f"{name}: {value:.4f}")


def probe_units_to_file(
    model: Any, cfg: TrainConfig, tokenizer: Any, args: argparse.Namespace
) -> None:
    """Probe every hidden unit on the validation split of the data the checkpoint trained on;
    write the JSON and its chart, and print the most selective units."""
    from pico.checkpoint import read_meta
    from pico.data import prepare_data
    from pico.files import write_atomic
    from pico.probe import UNIT_KINDS, probe_units

    data = prepare_data(cfg.corpus, cfg.tokenizer, cache_dir=args.cache_dir, max_docs=cfg.max_docs)
    expected = read_meta(args.checkpoint).get("data_fingerprint")
    if data.fingerprint != expected:
        raise PicoError(
            f"{cfg.corpus} / {cfg.tokenizer} now prepares to data {data.fingerprint}, not the "
            f"{expected} that {args.checkpoint} trained on: the corpus or the tokenizer has "
            "changed since, so its held-out text cannot be rebuilt"
        )
    tokens = data.val[: args.units_tokens]
    probes = probe_units(model, tokenizer, tokens, cfg.block_size)
    report = {
        "checkpoint": str(args.checkpoint),
        "arch": cfg.arch,
        "unit_kind": UNIT_KINDS[cfg.arch],
        "text": {
            "corpus": cfg.corpus,
            "split": "val",
            "tokens": len(tokens),
            "data_fingerprint": data.fingerprint,
        },
        "units": [dataclasses.asdict(p) for p in probes],
    }
    write_atomic(args.units, json.dumps(report, indent=1, ensure_ascii=False).encode())
    chart = args.units.with_suffix(".png")
    write_atomic(chart, selectivity_chart(probes, f"{cfg.arch}: {UNIT_KINDS[cfg.arch]}"))
    ranked = sorted(probes, key=lambda p: -p.selectivity)
    print(f"{len(probes)} {UNIT_KINDS[cfg.arch]} on {len(tokens)} held-out tokens; most selective:")
    for p in ranked[:UNITS_SHOWN]:
        best = p.top_contexts[0]
        example = f"{best['context'][-30:]}[{best['token']}]"
        print(
            f"  layer {p.layer} unit {p.unit:>4}  selectivity {p.selectivity:.2f}  "
            f"{_meaning(p)}, e.g. {example!r}"
        )
    print(f"wrote {args.units} and {chart}")


def selectivity_chart(probes: list[Any], title: str) -> bytes:
    """A PNG: how selectivity spreads over the units of each layer, and the most selective
    units, each labelled with what it is selective for."""
    import altair as alt
    import vl_convert

    rows = [
        {
            "unit": f"layer {p.layer} unit {p.unit}: {_meaning(p)}",
            "selectivity": p.selectivity,
            "layer": str(p.layer),
        }
        for p in probes
    ]
    scale = alt.Scale(domain=[0, 1])
    spread = (
        alt.Chart(alt.Data(values=rows), title="Units by selectivity")
        .mark_bar()
        .encode(
            x=alt.X("selectivity:Q", bin=alt.Bin(extent=[0, 1], step=0.05), scale=scale),
            y=alt.Y("count():Q", title="units"),
            color=alt.Color("layer:N"),
        )
        .properties(width=240, height=240)
    )
    ranked = sorted(rows, key=lambda r: -r["selectivity"])[:UNITS_CHARTED]
    best = (
        alt.Chart(alt.Data(values=ranked), title=f"The {len(ranked)} most selective")
        .mark_bar()
        .encode(
            x=alt.X("selectivity:Q", scale=scale),
            y=alt.Y("unit:N", sort="-x", title=None),
            color=alt.Color("layer:N"),
        )
        .properties(width=240)
    )
    chart = alt.hconcat(spread, best, title=title)
    return vl_convert.vegalite_to_png(chart.to_dict())


def _meaning(probe: Any) -> str:
    """What a unit is selective for: a token, or a token class when that scores higher."""
    if probe.token_selectivity >= probe.class_selectivity:
        return f"token {probe.token!r}"
    return f"class {probe.token_class}"
