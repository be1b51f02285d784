"""How much the Transformer's KV cache speeds up greedy generation.

A randomly initialised Transformer (d_model 256, 4 layers, 8 heads, vocab 4096, block 1024)
continues a 32-token prompt by 512 tokens, once through its KV cache and once recomputing a full
forward over the whole sequence at every step. Both must give the same tokens. After one warmup
of each path, the two paths take turns for `--rounds` rounds (cached, recompute, cached, ...), so
that bursts of load from other work land on both; each round's speedup is its recompute time over
its cached time. It prints the median speedup with its spread over the rounds and whether the
rounds spread too wide to settle the goal (at least 5x; docs/benchmarks.md). The last line is
`kv_cache_speedup: X.X`, the median.

    python benchmarks/kv_cache.py [--device cpu|cuda] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.rounds import goal_line, spread
from pico.config import TrainConfig
from pico.errors import ArgumentParser, PicoError, run_cli
from pico.generate import generate
from pico.models import build_model

VOCAB = 4096
PROMPT_TOKENS = 32
NEW_TOKENS = 512
GOAL_SPEEDUP = 5.0
CONFIG = TrainConfig(
    arch="kv_transformer", d_model=256, n_layer=4, n_head=8, block_size=1024, dropout=0.0
)


def time_generation(
    model: torch.nn.Module, prompt: torch.Tensor, use_cache: bool
) -> tuple[float, list[list[int]]]:
    """Wall seconds of one greedy generation of NEW_TOKENS tokens, and the tokens."""
    _sync(prompt.device)
    start = time.perf_counter()
    tokens = generate(model, prompt, NEW_TOKENS, use_cache=use_cache)
    _sync(prompt.device)
    return time.perf_counter() - start, tokens


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise PicoError(f"--rounds must be a positive integer, got {args.rounds}")
    if args.threads < 0:
        raise PicoError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        # One-token steps are tiny ops: on a busy machine, syncing threads can cost more than
        # the arithmetic, so the cached path may run faster on one thread.
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PicoError("--device cuda asked for, but CUDA is not available here")

    torch.manual_seed(0)
    model = build_model(CONFIG.validate(), VOCAB).to(device)
    prompt = torch.randint(0, VOCAB, (1, PROMPT_TOKENS), device=device)
    for use_cache in (True, False):  # warmup: allocator, kernels, caches
        generate(model, prompt, 8, use_cache=use_cache)
    cached, full = [], []
    for i in range(args.rounds):
        cached_s, cached_tokens = time_generation(model, prompt, use_cache=True)
        full_s, full_tokens = time_generation(model, prompt, use_cache=False)
        if cached_tokens != full_tokens:
            raise AssertionError("the KV cache changed the generated tokens")
        cached.append(cached_s)
        full.append(full_s)
        print(
            f"round {i + 1}: kv cache {cached_s:.3f} s, full recompute {full_s:.3f} s, "
            f"speedup {full_s / cached_s:.1f}",
            flush=True,
        )
    speedup = spread([f / c for f, c in zip(full, cached, strict=True)])

    print(
        f"Transformer d_model={CONFIG.d_model} n_layer={CONFIG.n_layer} n_head={CONFIG.n_head} "
        f"vocab={VOCAB} on {device}: {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens, "
        f"greedy, {args.rounds} alternating rounds, {torch.get_num_threads()} CPU thread(s)"
    )
    print(f"{'path':<16}{'median s':>10}{'min s':>8}{'max s':>8}{'tokens/s':>10}")
    for name, seconds in (("kv cache", cached), ("full recompute", full)):
        middle = statistics.median(seconds)
        print(
            f"{name:<16}{middle:>10.3f}{min(seconds):>8.3f}{max(seconds):>8.3f}"
            f"{NEW_TOKENS / middle:>10.1f}"
        )
    print(f"speedup: {speedup.describe('.1f')}")
    print(goal_line(speedup, GOAL_SPEEDUP, at_least=True, fmt=".1f"))
    print(f"kv_cache_speedup: {speedup.median:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
