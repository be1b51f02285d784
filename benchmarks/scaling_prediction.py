"""Does a ladder's scaling law predict the loss at a budget it has not run? An honest check.

    python benchmarks/scaling_prediction.py            # 3 seeds; about 20 minutes on 2 CPUs

For each seed, the Transformer (muP, one learning rate: launch/ladder.py) is trained as an
IsoFLOP ladder at every width and all budgets but the largest. The loss law fitted to those runs
(pico/ladder.py `recommend`) predicts the val loss at the compute-optimal size for the largest
budget, with a 90% interval for one run, and the prediction is written to
`<folder>/prediction-seed<N>.json` before the largest budget runs. Then every width runs at that
budget, and the truth is the lowest val loss among them (what the ladder, run to that budget,
would have found). Reported per seed: the relative error |predicted - truth| / truth and whether
the truth lies inside the interval; the headline is the median error over the seeds, last line
`scaling_prediction_error: <median>`. Goal: at most 0.02, the truth inside in at least 2 of 3
seeds.

Experiments already in --folder are continued or reused, so a rerun only reports; a held-out
run whose prediction file is missing is refused, since its prediction would no longer be blind.
Scale: character-level Shakespeare, widths 16 to 64 at depth 2, budgets doubling from 8e10
FLOPs, each run evaluated once at its end on 32,768 validation characters (so that the truth's
own noise, about 0.3%, is well under the goal).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.experiment import run_search
from launch.settings import SearchSettings
from launch.storage import MANIFEST
from pico.errors import ArgumentParser, PicoError, run_cli
from pico.files import write_atomic
from pico.ladder import recommend

ARCH = "kv_transformer"
GOAL = 0.02


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", type=Path, default=Path("runs/scaling_prediction"))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 to N-1 [3]")
    p.add_argument(
        "--budgets",
        default="8e10,1.6e11,3.2e11,6.4e11",
        help="training-FLOP budgets; the largest is held out [8e10,1.6e11,3.2e11,6.4e11]",
    )
    p.add_argument("--widths", default="16,24,32,48,64", help="d_model of each size")
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--max-docs", type=int, default=None, help="documents of the corpus [all]")
    args = p.parse_args(argv)
    try:
        args.budgets = sorted(float(b) for b in args.budgets.split(","))
        args.widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        raise PicoError("--budgets and --widths are comma-separated numbers") from None
    if len(set(args.budgets)) < 4:
        raise PicoError("--budgets needs >= 4 budgets: >= 3 to fit and the largest to hold out")
    if args.seeds < 1:
        raise PicoError(f"--seeds must be at least 1, got {args.seeds}")
    return args


def ladder(args: argparse.Namespace, name: str, seed: int, budgets: list[float]) -> pd.DataFrame:
    """Run (or continue, or reuse) one ladder experiment; its results."""
    settings = SearchSettings(
        space=ARCH,
        name=name,
        storage=str(args.folder.resolve()),
        corpus="shakespeare",
        tokenizer="char",
        max_docs=args.max_docs,
        eval_tokens=args.eval_tokens,
        seed=seed,
        scheduler="fifo",
        confirm_top=0,
        confirm_seeds=0,
        ladder=budgets,
        ladder_widths=args.widths,
    )
    resume = settings.store().exists(MANIFEST)
    started = time.monotonic()
    outcome = run_search(settings, resume=resume, verbosity=0)
    if not outcome.ended:
        raise PicoError(f"ladder {name} did not end; rerun to continue it")
    print(f"  {name}: {len(outcome.table.trials)} runs ({time.monotonic() - started:.0f} s)")
    return pd.read_parquet(settings.results_path)


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Fit on all budgets but the largest, predict, then run the largest: the seed's record."""
    target = args.budgets[-1]
    fitted = ladder(args, f"fit-seed{seed}", seed, args.budgets[:-1])
    path = args.folder / f"prediction-seed{seed}.json"
    held_out = args.folder / f"holdout-seed{seed}" / MANIFEST
    if path.exists():
        prediction = json.loads(path.read_text())
    elif held_out.exists():
        raise PicoError(
            f"{held_out.parent} ran without a recorded prediction: delete it to rerun blind"
        )
    else:
        prediction = recommend(fitted, ARCH, target, seed=seed)
        write_atomic(path, json.dumps(prediction, indent=2))
    truth_runs = ladder(args, f"holdout-seed{seed}", seed, [target])
    last = truth_runs[truth_runs["is_last"] & truth_runs["status"].eq("completed")]
    best = last.loc[last["val_loss"].idxmin()]
    loss = prediction["val_loss"]
    truth = float(best["val_loss"])
    return {
        "seed": seed,
        "predicted": loss["value"],
        "low": loss["low"],
        "high": loss["high"],
        "truth": truth,
        "error": abs(loss["value"] - truth) / truth,
        "inside": loss["low"] <= truth <= loss["high"],
        "n_star": prediction["n_params"]["value"],
        "best_n": float(best["n_params"]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    records = []
    for seed in range(args.seeds):
        print(f"seed {seed}:")
        records.append(one_seed(args, seed))
    table = pd.DataFrame(records)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    errors = table["error"].tolist()
    inside = int(table["inside"].sum())
    median = statistics.median(errors)
    print(
        f"relative error of the predicted loss at {args.budgets[-1]:.3g} FLOPs, held out: median "
        f"{median:.4f} (range {min(errors):.4f}-{max(errors):.4f}, {len(errors)} seeds); the "
        f"truth inside the 90% interval in {inside} of {len(errors)} seeds"
    )
    meets = median <= GOAL and 3 * inside >= 2 * len(errors)
    verdict = "met" if meets else "not met"
    print(f"goal: error <= {GOAL}, the truth inside in >= 2 of 3 seeds: {verdict}")
    print(f"scaling_prediction_error: {median:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
