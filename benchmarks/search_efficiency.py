"""Search efficiency on the default corpus: the compute each strategy needs to reach the best
val_loss of the 22 named configs.

    python benchmarks/search_efficiency.py      # about an hour on 2 idle CPUs
    python benchmarks/search_efficiency.py --max-steps 200 --eval-interval 25 --grace-period 25

Three searches with the same compute budget, the training FLOPs of the first:
  seed22  the 22 named configs, each trained to --max-steps (no early stopping); its best final
          val_loss is the target
  random  random search over the `all` space, no early stopping
  asha    TPE + ASHA over `all`: the default search
For each, the compute spent until an evaluation first reached the target, counting trials in the
order they started (a sequential view of a search that ran two at a time). The sweep needs all of
its compute: its best is only known once every config has run. Experiments already in --folder
are reused, so the summary can be recomputed without training. Last line:
`search_efficiency: <asha compute / seed22 compute>` (the goal is at most 1/3).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.experiment import run_search
from launch.settings import SearchSettings
from launch.storage import MANIFEST

BIG = 10_000  # trials: the compute budget ends the searches long before


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", type=Path, default=Path("runs/search_efficiency"))
    p.add_argument("--max-steps", type=int, default=SearchSettings.max_steps)
    p.add_argument("--eval-interval", type=int, default=SearchSettings.eval_interval)
    p.add_argument("--grace-period", type=int, default=SearchSettings.grace_period)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def strategies(args: argparse.Namespace) -> dict[str, dict]:
    """The settings that differ between the three searches."""
    return {
        "seed22": {"space": "seed22", "scheduler": "fifo", "num_samples": 22},
        "random": {"space": "all", "sampler": "random", "scheduler": "fifo", "num_samples": BIG},
        "asha": {"space": "all", "sampler": "tpe", "scheduler": "asha", "num_samples": BIG},
    }


def run(name: str, changes: dict, args: argparse.Namespace, budget: float | None) -> Path:
    """Run one search (or reuse it if the folder already holds it); return its results file."""
    settings = SearchSettings(
        name=name,
        storage=str(args.folder.resolve()),
        max_steps=args.max_steps,
        eval_interval=args.eval_interval,
        grace_period=args.grace_period,
        seed=args.seed,
        compute_budget=budget,
        confirm_top=0,  # compared on the search phase, as before the confirmation stage
        confirm_seeds=0,
        **changes,
    )
    if not settings.store().exists(MANIFEST):
        run_search(settings, verbosity=0)
    return Path(settings.results_path)


def compute_to_reach(path: Path, target: float) -> float:
    """Training FLOPs spent, trials in start order, until an evaluation reached `target`."""
    df = pd.read_parquet(path, columns=["trial_id", "step", "val_loss", "train_flops"])
    spent = 0.0
    for _, trial in df.groupby("trial_id", sort=False):
        reached = trial[trial["val_loss"] <= target]
        if not reached.empty:
            return spent + float(reached["train_flops"].iloc[0])
        spent += float(trial["train_flops"].max())
    return math.inf


def total_compute(path: Path) -> tuple[float, int]:
    """All training FLOPs of a search, and its number of trials."""
    df = pd.read_parquet(path, columns=["trial_id", "train_flops"])
    return float(df.groupby("trial_id")["train_flops"].max().sum()), df["trial_id"].nunique()


def main() -> None:
    import ray

    args = parse_args()
    plans = strategies(args)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sweep = run("seed22", plans.pop("seed22"), args, None)
        budget, _ = total_compute(sweep)
        paths = {"seed22": sweep} | {name: run(name, p, args, budget) for name, p in plans.items()}
    finally:
        ray.shutdown()
    df = pd.read_parquet(sweep)
    target = float(df[df["is_last"] & (df["status"] == "completed")]["val_loss"].min())
    print(f"target: best final val_loss of the 22 named configs = {target:.4f}")
    print(f"budget: {budget:.3e} training FLOPs each")
    for name, path in paths.items():
        spent, trials = total_compute(path)
        needed = budget if name == "seed22" else compute_to_reach(path, target)
        best = pd.read_parquet(path, columns=["val_loss"])["val_loss"].min()
        print(
            f"{name:7s} {trials:4d} trials, best val_loss {best:.4f}, spent {spent:.3e} FLOPs, "
            f"reached the target after {needed:.3e} ({needed / budget:.2f} of the sweep's)"
        )
    ratio = compute_to_reach(paths["asha"], target) / budget
    print(f"search_efficiency: {ratio:.3f}")


if __name__ == "__main__":
    main()
