"""Pico's training loop vs a bare forward/backward/step loop on the same model and batches.

Both run in one process, one after the other, on the same device and threads:
  bare  - the batches are drawn up front; the timed loop is forward, backward, optimizer step.
  pico  - `pico.train.train` with its batch sampling, schedule, clipping, loss bookkeeping and a
          metrics callback; its throughput is measured over the same number of steps, with the
          one evaluation at the end excluded (evaluation is work, not overhead).
It also reports the achieved FLOP/s (from the model's flops_per_token) against a measured matmul
peak. Last line: `harness_efficiency: <pico tokens/s / bare tokens/s>`.

    python benchmarks/train_step.py [--device cpu|cuda] [--steps 20] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import torch

from pico.config import TrainConfig
from pico.data import prepare_data
from pico.models import build_model
from pico.optim import make_optimizer
from pico.train import BatchSampler, resolve_device, seed_everything, train


def matmul_peak(
    device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 10
) -> float:
    """FLOP/s of the best of `repeats` n x n matmuls: the practical ceiling on this device."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, best kept")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args()

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

    # Alternate the two loops and keep each one's best round, so that a burst of load from
    # other processes on a shared machine does not land on one side only.
    bare, pico = 0.0, 0.0
    for _ in range(args.rounds):
        bare = max(bare, bare_loop(cfg, data, device, args.steps, args.warmup))
        pico = max(pico, pico_loop(cfg, data, args.steps))
    peak = matmul_peak(device, peak_dtype)
    flops = model.flops_per_token()
    print(f"device {device} ({torch.get_num_threads()} threads), dtype {args.dtype}")
    print(f"model  kv_transformer d={cfg.d_model} L={cfg.n_layer} params={model.num_params():,}")
    print(
        f"batch  {cfg.batch_size} x {cfg.block_size} tokens, {args.steps} timed steps, "
        f"best of {args.rounds} alternating rounds"
    )
    print(f"{'loop':<6}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}")
    for name, rate in (("bare", bare), ("pico", pico)):
        achieved = rate * flops
        print(f"{name:<6}{rate:>12,.0f}{achieved / 1e12:>10.3f}{achieved / peak:>8.1%}")
    print(f"matmul peak: {peak / 1e12:.3f} TFLOP/s ({peak_dtype})")
    print(f"harness_efficiency: {pico / bare:.3f}")


if __name__ == "__main__":
    main()
