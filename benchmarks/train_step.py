"""Pico's training loop vs a bare forward/backward/step loop on the same model and batches.

Both run in one process, on the same device and threads, taking turns for `--rounds` rounds
(bare, pico, bare, pico, ...) so that bursts of load from other work land on both:
  bare  - the batches are drawn up front; the timed loop is forward, backward, optimizer step.
  pico  - `pico.train.train` with its batch sampling, schedule, clipping, loss bookkeeping and a
          metrics callback; its throughput is measured over the same number of steps, with the
          one evaluation at the end excluded (evaluation is work, not overhead).
Each round's figure is its pico tokens/s over its bare tokens/s. It prints the median with its
spread over the rounds and whether the rounds spread too wide to settle the goal (at least 0.95;
docs/benchmarks.md), and the achieved FLOP/s (from the model's flops_per_token) against a
measured matmul peak. Last line: `harness_efficiency: <median pico / bare>`.

    python benchmarks/train_step.py [--device cpu|cuda] [--steps 20] [--rounds 7] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.rounds import goal_line, spread
from pico.config import TrainConfig
from pico.data import prepare_data
from pico.models import build_model
from pico.optim import make_optimizer
from pico.train import BatchSampler, resolve_device, seed_everything, train

GOAL = 0.95  # Pico's tokens/s at least this fraction of the bare loop's


def matmul_peak(
    device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 10
) -> float:
    """FLOP/s of the best of `repeats` n x n matmuls: the practical ceiling on this device (a
    ceiling, so the best is the figure here, unlike the comparison's median)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(cfg: TrainConfig, data, device: torch.device, steps: int, warmup: int) -> float:
    """Tokens/s of forward, backward and AdamW step over pre-drawn batches."""
    seed_everything(cfg.seed)
    model = build_model(cfg, data.vocab_size).to(device)
    optimizer = make_optimizer(model, cfg, device)
    sampler = BatchSampler(data.train, cfg, device)
    batches = [sampler.next() for _ in range(warmup + steps)]
    autocast = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return steps * cfg.batch_size * cfg.block_size / (time.perf_counter() - t0)


def pico_loop(cfg: TrainConfig, data, steps: int) -> float:
    """Tokens/s of Pico's loop over `steps` steps that follow `steps` warm-up steps.

    Evaluating only at the end of each window keeps the timed window one unbroken run of steps,
    as the bare loop's is; the record's tokens_per_s excludes the evaluation itself.
    """
    cfg = cfg.replace(max_steps=2 * steps, eval_interval=steps, eval_tokens=cfg.block_size)
    records: list[dict] = []
    train(cfg, data, on_eval=lambda record, save: records.append(record))
    return records[1]["tokens_per_s"]


def alternate(
    cfg: TrainConfig, data, device: torch.device, steps: int, warmup: int, rounds: int
) -> tuple[list[float], list[float]]:
    """Tokens/s of the bare loop and of Pico's, one of each per round, taking turns."""
    bare, pico = [], []
    for i in range(rounds):
        bare.append(bare_loop(cfg, data, device, steps, warmup))
        pico.append(pico_loop(cfg, data, steps))
        print(
            f"round {i + 1}: bare {bare[-1]:,.0f} tokens/s, pico {pico[-1]:,.0f} "
            f"({pico[-1] / bare[-1]:.3f})",
            flush=True,
        )
    return bare, pico


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds [7]")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be a positive integer, got {args.rounds}")

    device = resolve_device(args.device)
    cfg = TrainConfig(
        arch="kv_transformer",
        d_model=args.d_model,
        n_layer=args.n_layer,
        n_head=max(1, args.d_model // 64),
        batch_size=args.batch_size,
        block_size=args.block_size,
        device=device.type,
        dtype=args.dtype,
        warmup_steps=0,
    ).validate()
    data = prepare_data(cfg.corpus, cfg.tokenizer)
    model = build_model(cfg, data.vocab_size)
    peak_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32

    bare, pico = alternate(cfg, data, device, args.steps, args.warmup, args.rounds)
    efficiency = spread([p / b for p, b in zip(pico, bare, strict=True)])
    peak = matmul_peak(device, peak_dtype)
    flops = model.flops_per_token()
    print(f"device {device} ({torch.get_num_threads()} threads), dtype {args.dtype}")
    print(f"model  kv_transformer d={cfg.d_model} L={cfg.n_layer} params={model.num_params():,}")
    print(
        f"batch  {cfg.batch_size} x {cfg.block_size} tokens, {args.steps} timed steps, "
        f"{args.rounds} alternating rounds"
    )
    print(f"{'loop':<6}{'median tok/s':>14}{'min':>10}{'max':>10}{'TFLOP/s':>10}{'MFU':>8}")
    for name, rates in (("bare", bare), ("pico", pico)):
        achieved = statistics.median(rates) * flops
        print(
            f"{name:<6}{statistics.median(rates):>14,.0f}{min(rates):>10,.0f}{max(rates):>10,.0f}"
            f"{achieved / 1e12:>10.3f}{achieved / peak:>8.1%}"
        )
    print(f"matmul peak: {peak / 1e12:.3f} TFLOP/s ({peak_dtype})")
    print(f"pico / bare: {efficiency.describe()}")
    print(goal_line(efficiency, GOAL, at_least=True))
    print(f"harness_efficiency: {efficiency.median:.3f}")


if __name__ == "__main__":
    main()
