"""Does the best learning rate stay put as the Transformer widens? Standard vs muP.

    nice -n 10 python benchmarks/lr_transfer.py    # 54 min on the shared 2-core CPU (35 CPU-min)
    python benchmarks/lr_transfer.py --widths 32,64 --log2-lrs=-8,-6,-4 --seeds 1 --steps 20

Trains the Transformer at every width, learning rate and seed under both parametrizations
(depth, heads and every other setting fixed; muP's base width is the narrowest width, where the
two parametrizations are the same model) on the default corpus, Shakespeare, read as characters,
and scores each run by its final val_loss (figures: docs/benchmarks.md). For each
parametrization and width, the best log2 learning rate is the vertex of a parabola through the
seed-mean loss at the best grid point and its two neighbours (the grid point itself at an edge of
the grid). Reported:
  - the best log2 lr per width, with its spread: the same fit on each seed's own losses;
  - the drift: best log2 lr at the widest width minus at the narrowest, in octaves;
  - transfer: the widest width's loss at the grid lr that was best at the narrowest, relative to
    its loss at its own best grid lr (per seed, then mean and spread).
A run that diverges counts as worse than any that did not. Runs go two at a time, one thread each.
Last line: `mup_lr_drift_octaves: <|drift| under muP>` (goal: at most 0.5, and more under standard).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pico.config import TrainConfig
from pico.errors import ArgumentParser, PicoError, run_cli
from pico.files import check_output

PARAMETRIZATIONS = ("standard", "mup")
FIELDS = ("parametrization", "width", "log2_lr", "seed")  # of a run, in --json


def base_config(args: Any) -> TrainConfig:
    """The settings every run shares; width, lr, seed and parametrization vary."""
    return TrainConfig(
        corpus="shakespeare",
        tokenizer="char",
        n_layer=2,
        n_head=4,
        mlp_ratio=4,
        block_size=args.block_size,
        batch_size=args.batch_size,
        max_steps=args.steps,
        eval_interval=args.steps,
        eval_tokens=args.eval_tokens,
        warmup_steps=args.steps // 10,
        mup_base_width=min(args.widths),
        device="cpu",
        num_threads=1,
    )


def run_one(cfg_fields: dict[str, Any]) -> float:
    """Final val_loss of one run (inf if it diverged)."""
    from pico.data import prepare_data
    from pico.train import train

    cfg = TrainConfig.from_dict(cfg_fields)
    data = prepare_data(cfg.corpus, cfg.tokenizer)
    result = train(cfg, data)
    loss = result.metrics["val_loss"]
    return math.inf if result.status == "diverged" or not math.isfinite(loss) else loss


def best_log2_lr(log2_lrs: list[float], losses: list[float]) -> float:
    """The vertex of the parabola through the lowest loss and its two neighbours, kept between
    those neighbours; the grid point itself when it lies at an edge or the fit is not convex."""
    i = int(np.argmin(losses))
    if i == 0 or i == len(losses) - 1 or not all(map(math.isfinite, losses[i - 1 : i + 2])):
        return log2_lrs[i]
    a, b, _ = np.polyfit(log2_lrs[i - 1 : i + 2], losses[i - 1 : i + 2], 2)
    if a <= 0:
        return log2_lrs[i]
    return float(np.clip(-b / (2 * a), log2_lrs[i - 1], log2_lrs[i + 1]))


def summarise(losses: dict, args: Any) -> list[str]:
    """The report's lines from losses[(parametrization, width, log2_lr, seed)]."""
    lrs, seeds, narrow, wide = args.log2_lrs, range(args.seeds), min(args.widths), max(args.widths)
    lines, drifts = [], {}

    def curve(p: str, w: int, seed: int | None = None) -> list[float]:
        pick = seeds if seed is None else [seed]
        return [statistics.fmean(losses[p, w, lr, s] for s in pick) for lr in lrs]

    for p in PARAMETRIZATIONS:
        lines.append(f"{p}:")
        lines.append("  width  " + "  ".join(f"2^{lr:<5g}" for lr in lrs) + "  best log2 lr")
        best = {}
        for w in args.widths:
            mean = curve(p, w)
            per_seed = [best_log2_lr(lrs, curve(p, w, s)) for s in seeds]
            best[w] = (best_log2_lr(lrs, mean), per_seed)
            spread = f" (seeds: {', '.join(f'{b:.2f}' for b in per_seed)})"
            cells = "  ".join(f"{loss:7.4f}" for loss in mean)
            lines.append(f"  {w:>5}  {cells}  {best[w][0]:6.2f}{spread}")
        drift = best[wide][0] - best[narrow][0]
        seed_drifts = [b - a for a, b in zip(best[narrow][1], best[wide][1], strict=True)]
        drifts[p] = drift
        lines.append(
            f"  drift {narrow} -> {wide}: {drift:+.2f} octaves "
            f"(per seed {_mean_sd(seed_drifts, '+.2f')})"
        )
        chosen = lrs[int(np.argmin(curve(p, narrow)))]
        own = lrs[int(np.argmin(curve(p, wide)))]
        excess = [100 * (losses[p, wide, chosen, s] / losses[p, wide, own, s] - 1) for s in seeds]
        lines.append(
            f"  width {wide} at the lr best at width {narrow} (2^{chosen:g}) vs its own best "
            f"(2^{own:g}): loss {_mean_sd(excess, '+.2f')} %"
        )
    lines.append(f"standard_lr_drift_octaves: {abs(drifts['standard']):.2f}")
    lines.append(f"mup_lr_drift_octaves: {abs(drifts['mup']):.2f}")
    return lines


def _mean_sd(values: list[float], fmt: str) -> str:
    if not all(map(math.isfinite, values)):
        return "diverged in some seed"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.fmean(values), fmt)} ± {sd:.2f} (sd over {len(values)} seeds)"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="benchmarks/lr_transfer.py", description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="32,64,128,256", help="d_model values [32,64,128,256]")
    p.add_argument(
        "--log2-lrs", default="-11,-10,-9,-8,-7,-6,-5", help="log2 learning rates [-11..-5]"
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per point [3]")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per run [200]")
    p.add_argument("--batch-size", type=int, default=16, help="[16]")
    p.add_argument("--block-size", type=int, default=64, help="[64]")
    p.add_argument("--eval-tokens", type=int, default=16384, help="validation targets [16384]")
    p.add_argument("--workers", type=int, default=2, help="runs at once, one thread each [2]")
    p.add_argument("--json", type=Path, help="also write every run's loss to this file")
    args = p.parse_args(argv)
    args.widths = _ints(args.widths, "--widths")
    args.log2_lrs = [float(x) for x in _ints(args.log2_lrs, "--log2-lrs", positive=False)]
    if len(args.widths) < 2 or len(args.log2_lrs) < 3:
        raise PicoError("give at least 2 --widths and 3 --log2-lrs")
    if args.seeds < 1 or args.workers < 1:
        raise PicoError("--seeds and --workers must be positive")
    if args.json is not None:
        check_output(args.json, "--json")
    base = base_config(args)
    for w in args.widths:
        base.replace(d_model=w, parametrization="mup").validate()
    from pico.data import prepare_data

    prepare_data(base.corpus, base.tokenizer)  # once, before the workers read the cache
    keys = [
        (p, w, lr, s)
        for w in sorted(args.widths, reverse=True)  # the longest runs first
        for lr in args.log2_lrs
        for s in range(args.seeds)
        for p in PARAMETRIZATIONS
    ]
    jobs = [
        base.replace(parametrization=p, d_model=w, lr=2.0**lr, min_lr=2.0**lr / 10, seed=s)
        for p, w, lr, s in keys
    ]
    started = time.perf_counter()
    print(f"{len(jobs)} runs of {args.steps} steps, {args.workers} at a time", flush=True)
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_one, cfg.to_dict()) for cfg in jobs]
        for done, _ in enumerate(as_completed(futures), 1):
            if done % 10 == 0 or done == len(jobs):
                elapsed = time.perf_counter() - started
                print(f"  {done}/{len(jobs)} runs done, {elapsed:.0f} s", flush=True)
        results = [future.result() for future in futures]
    losses = dict(zip(keys, results, strict=True))
    print(f"wall time: {time.perf_counter() - started:.0f} s on {os.cpu_count()} CPUs")
    if args.json is not None:
        rows = [dict(zip(FIELDS, k, strict=True)) for k in keys]
        for row, loss in zip(rows, results, strict=True):
            row["val_loss"] = loss if math.isfinite(loss) else None
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    print("\n".join(summarise(losses, args)))
    return 0


def _ints(text: str, flag: str, positive: bool = True) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise PicoError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if positive and min(values) < 1:
        raise PicoError(f"{flag} must be positive, got {text!r}")
    return values


if __name__ == "__main__":
    sys.exit(run_cli(main))
