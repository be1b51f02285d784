"""How much the Transformer's KV cache speeds up greedy generation.

A randomly initialised Transformer (d_model 256, 4 layers, 8 heads, vocab 4096, block 1024)
continues a 32-token prompt by 512 tokens, once through its KV cache and once recomputing a full
forward over the whole sequence at every step. Both must give the same tokens. Each path gets a
warmup, then the best of `--repeats` timed runs. The last line is `kv_cache_speedup: X.X`.

    python -m benchmarks.kv_cache [--device cpu|cuda] [--repeats 3] [--threads N]

(from the repository root; `python benchmarks/kv_cache.py` works too once pico is installed).
"""

from __future__ import annotations

import time

import torch

from pico.config import TrainConfig
from pico.errors import ArgumentParser, PicoError, run_cli
from pico.generate import generate
from pico.models import build_model

VOCAB = 4096
PROMPT_TOKENS = 32
NEW_TOKENS = 512
CONFIG = TrainConfig(
    arch="kv_transformer", d_model=256, n_layer=4, n_head=8, block_size=1024, dropout=0.0
)


def time_generation(
    model: torch.nn.Module, prompt: torch.Tensor, use_cache: bool, repeats: int
) -> tuple[float, list[list[int]]]:
    """Best wall time of `repeats` greedy generations (after a short warmup) and their tokens."""
    generate(model, prompt, 8, use_cache=use_cache)  # warmup: allocator, kernels, caches
    best, tokens = float("inf"), []
    for _ in range(repeats):
        _sync(prompt.device)
        start = time.perf_counter()
        tokens = generate(model, prompt, NEW_TOKENS, use_cache=use_cache)
        _sync(prompt.device)
        best = min(best, time.perf_counter() - start)
    return best, tokens


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (best kept)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise PicoError(f"--repeats must be a positive integer, got {args.repeats}")
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
    cached, cached_tokens = time_generation(model, prompt, True, args.repeats)
    full, full_tokens = time_generation(model, prompt, False, args.repeats)
    if cached_tokens != full_tokens:
        raise AssertionError("the KV cache changed the generated tokens")

    print(
        f"Transformer d_model={CONFIG.d_model} n_layer={CONFIG.n_layer} n_head={CONFIG.n_head} "
        f"vocab={VOCAB} on {device}: {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens, "
        f"greedy, best of {args.repeats}, {torch.get_num_threads()} CPU thread(s)"
    )
    print(f"{'path':<16}{'seconds':>10}{'tokens/s':>12}")
    for name, seconds in (("kv cache", cached), ("full recompute", full)):
        print(f"{name:<16}{seconds:>10.3f}{NEW_TOKENS / seconds:>12.1f}")
    print(f"kv_cache_speedup: {full / cached:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
