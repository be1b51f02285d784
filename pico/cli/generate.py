"""`launch/generate.py`: continue a prompt with a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

from pico.errors import ArgumentParser, PicoError

STRATEGIES = ("greedy", "sample", "top_k", "top_p")


def build_parser() -> ArgumentParser:
    """The generate command's flags."""
    parser = ArgumentParser(
        prog="launch/generate.py",
        description="Generate text from a trained Pico checkpoint.",
        epilog="Example: python launch/generate.py --checkpoint runs/train/checkpoint "
        '--prompt "ROMEO:" --strategy top_p --top-p 0.9',
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint folder")
    parser.add_argument("--prompt", default="", help="text to continue [start of a document]")
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="greedy",
        help="greedy; sample (temperature only); top_k; top_p (nucleus) [greedy]",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="[1.0]")
    parser.add_argument("--top-k", type=int, default=40, help="tokens kept by top_k [40]")
    parser.add_argument("--top-p", type=float, default=0.9, help="probability kept by top_p [0.9]")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL-style [1.0]")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="[200]")
    parser.add_argument("--num-samples", type=int, default=1, help="continuations, batched [1]")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed [0]")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto [cpu]")
    parser.add_argument(
        "--no-cache", action="store_true", help="recompute every step (the slow reference)"
    )
    parser.add_argument(
        "--neighbours",
        type=int,
        default=0,
        metavar="K",
        help="annotate each generated token with its K nearest tokens by input embedding [0: off]",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load the checkpoint, generate, print each continuation."""
    from pico.checkpoint import load_model
    from pico.generate import generate
    from pico.probe import neighbour_lines
    from pico.train import resolve_device

    args = build_parser().parse_args(argv)
    if args.num_samples < 1:
        raise PicoError(f"--num-samples must be positive, got {args.num_samples}")
    if args.neighbours < 0:
        raise PicoError(f"--neighbours must be >= 0, got {args.neighbours}")
    model, _, tokenizer = load_model(args.checkpoint, resolve_device(args.device))
    if tokenizer is None:
        raise PicoError(f"{args.checkpoint} holds no tokenizer/: it cannot decode text")
    if args.neighbours >= tokenizer.vocab_size:
        raise PicoError(f"--neighbours must be below the vocabulary size {tokenizer.vocab_size}")
    # An empty prompt starts where a document starts: right after an end-of-text token.
    prompt = tokenizer.encode(args.prompt) if args.prompt else [tokenizer.eot_id]
    rows = generate(
        model,
        [prompt] * args.num_samples,
        args.max_new_tokens,
        strategy="greedy" if args.strategy == "greedy" else "sample",
        temperature=args.temperature,
        top_k=args.top_k if args.strategy == "top_k" else None,
        top_p=args.top_p if args.strategy == "top_p" else None,
        repetition_penalty=args.repetition_penalty,
        eot_id=tokenizer.eot_id,
        seed=args.seed,
        use_cache=not args.no_cache,
    )
    for i, row in enumerate(rows):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(args.prompt + tokenizer.decode(row))
        if args.neighbours:
            print(f"\neach generated token and its {args.neighbours} nearest tokens:")
            print("\n".join(neighbour_lines(model, tokenizer, row, args.neighbours)))
    return 0
