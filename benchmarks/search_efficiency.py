"""Search efficiency: the training FLOPs TPE + ASHA (the default search) needs to find a model as
good as the best of the 22 named configs, over several seeds, judged on full-length runs only.

    nice -n 10 python benchmarks/search_efficiency.py     # 5 seeds, about an hour on 2 idle CPUs
    python benchmarks/search_efficiency.py --seeds 10 --max-steps 400 --eval-interval 50 \\
        --eval-tokens 4096 --grace-period 50 --max-concurrent 8   # the product's trial length

For each seed, four searches over the default corpus, each trial trained with that seed:
  seed22       the 22 named configs (`--space seed22`), each trained to --max-steps; its best final
               val_loss is the seed's target, and all its training FLOPs are the budget
  tpe_asha     TPE + ASHA over the `all` space: the default search
  random_asha  random search + ASHA: the same scheduler and seed, so the pair isolates the
               sampler (TPE's first 8 trials, drawn before its model starts, are random's first 8)
  random       random search without early stopping
The three searches get the sweep's FLOPs as their --compute-budget and run until it is spent.

The rule, as a sceptic would have it (benchmarks/efficiency.py): a config counts for a method only
once the method has trained it to the full --max-steps, and then with its final val_loss; what
ASHA stopped early, or the budget cut short, adds FLOPs to the bill and never a loss. Trials are
charged in the order the search asked for them, as if run one after another, so the full-length
run a method needs before it can claim a config is paid for by that method, at its full cost, and
before the loss counts.

Why full-length runs so far rather than the product's confirmation stage (--confirm-top/
--confirm-seeds): confirmation runs once, after the whole search, so it gives one point per
method, not an anytime curve, and a confirmed mean over fresh seeds would then be set against a
target that is itself one seed's best. Here every method, the sweep included, is scored the same
way: by the best final loss among the configs it trained to the end, all on the same seed. Such a
best is optimistic, the more so the more configs a method trains to the end (more draws at a lucky
seed); the output gives each method's number of full-length runs so that this can be weighed (on
seed 0 at the default scale: 22 for the sweep, 13 of 30 trials for TPE + ASHA).

The sweep is charged all its FLOPs: a fixed list cannot know it holds its best before it has run
them all, and the order of the list is arbitrary. Headline: the median over seeds of TPE + ASHA's
FLOPs to the target over the sweep's (inf on a seed where it never reached it), with its spread
and whether the spread is wider than the median's margin to the goal (at most 1/3); then the
paired t-tests over seeds on log FLOPs-to-target of TPE + ASHA against random + ASHA (the sampler
alone) and against random search without early stopping, Holm-corrected. Also printed: each
method's anytime curve, as the median over seeds of its best full-length val_loss by fractions of
the sweep's FLOPs; every trial's point of every curve goes to <folder>/anytime.csv. Last line:
`search_efficiency: <median ratio>`.

Experiments already in --folder are reused (an unfinished one is resumed), so the summary can be
recomputed without training; one run with other settings is refused.

The default scale is small so that the 20 searches fit in about an hour on 2 idle CPU cores
(docs/benchmarks.md has the measurement): 60 steps a trial, evaluations every 15 steps on 2,048
tokens, ASHA's rungs at 15, 30 and 60 steps, 2 trials at a time on one CPU each. Trials this short
favour configs that learn fast, and a sampled warmup of up to 100 steps can outlast a trial;
--max-steps and the flags beside it scale it up.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from dataclasses import fields
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.efficiency import METHODS, SWEEP, anytime_curve, summary_lines, total_flops
from launch.settings import SearchSettings
from launch.storage import MANIFEST
from launch.study import SearchStudy
from pico.errors import ArgumentParser, PicoError, run_cli

BIG = 10_000  # trials: the compute budget ends the searches long before
# What differs between the methods' searches.
METHOD_SETTINGS = {
    SWEEP: {"space": "seed22", "scheduler": "fifo", "num_samples": 22},
    "tpe_asha": {"space": "all", "sampler": "tpe", "scheduler": "asha", "num_samples": BIG},
    "random_asha": {"space": "all", "sampler": "random", "scheduler": "asha", "num_samples": BIG},
    "random": {"space": "all", "sampler": "random", "scheduler": "fifo", "num_samples": BIG},
}
# Settings a reused experiment may differ in: where it is, and the budget, which follows from
# the sweep (whose own settings are checked).
NOT_COMPARED = {"storage", "name", "output", "optuna_storage", "compute_budget"}
COLUMNS = ["trial_id", "step", "status", "val_loss", "train_flops", "is_last"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags; PicoError for fewer than two seeds."""
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", type=Path, default=Path("runs/search_efficiency"))
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 to N-1 [5]")
    p.add_argument("--max-steps", type=int, default=60, help="steps of a full-length trial [60]")
    p.add_argument("--eval-interval", type=int, default=15, help="steps between evaluations [15]")
    p.add_argument("--eval-tokens", type=int, default=2048, help="validation targets [2048]")
    p.add_argument("--grace-period", type=int, default=15, help="ASHA's first rung [15]")
    p.add_argument("--max-docs", type=int, default=None, help="documents of the corpus [all]")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once, 1 CPU each [2]")
    args = p.parse_args(argv)
    if args.seeds < 2:
        raise PicoError(f"--seeds must be at least 2 for a paired test, got {args.seeds}")
    return args


def settings_for(
    method: str, seed: int, args: argparse.Namespace, budget: float | None
) -> SearchSettings:
    """The search `method` runs on `seed`, in its own experiment folder under --folder."""
    return SearchSettings(
        name=f"{method}-seed{seed}",
        storage=str(args.folder.resolve()),
        max_steps=args.max_steps,
        eval_interval=args.eval_interval,
        eval_tokens=args.eval_tokens,
        grace_period=args.grace_period,
        max_docs=args.max_docs,
        max_concurrent=args.max_concurrent,
        seed=seed,
        compute_budget=budget,
        # Judged on its own full-length runs (module docstring), not on a confirmation stage.
        confirm_top=0,
        confirm_seeds=0,
        **METHOD_SETTINGS[method],
    )


def state(settings: SearchSettings) -> str:
    """`new`, `unfinished` or `ended`; PicoError if the folder holds the experiment run with
    other settings, whose results would not answer this run's question."""
    if not settings.store().exists(MANIFEST):
        return "new"
    study = SearchStudy.load(settings.study_location, settings.name)
    saved = SearchSettings.from_dict(study.settings)
    for field in fields(SearchSettings):
        name = field.name
        if name not in NOT_COMPARED and getattr(saved, name) != getattr(settings, name):
            raise PicoError(
                f"{settings.experiment_path} was run with {name} = {getattr(saved, name)!r}, "
                f"not {getattr(settings, name)!r}: pass another --folder"
            )
    return "unfinished" if study.metadata.get("ended_at") is None else "ended"


def run(settings: SearchSettings, stack: ExitStack) -> pd.DataFrame:
    """Run, resume or reuse one search; its results, the columns the curves need."""
    import ray

    from launch.experiment import run_search

    found = state(settings)
    if found != "ended":
        if not ray.is_initialized():  # once, and only if something has to train
            ray.init(num_cpus=settings.max_concurrent, include_dashboard=False, log_to_driver=False)
            stack.callback(ray.shutdown)
        print(f"training {settings.name} ({found})", flush=True)
        run_search(settings, resume=found == "unfinished", verbosity=0)
    return pd.read_parquet(settings.results_path, columns=COLUMNS)


def main(argv: list[str] | None = None) -> int:
    """Run or reuse every search, then print the summary (module docstring)."""
    from launch.exposure import prepare_environment

    args = parse_args(argv)
    curves: dict[int, dict[str, pd.DataFrame]] = {}
    with prepare_environment(None), ExitStack() as stack:
        for seed in range(args.seeds):
            sweep = anytime_curve(run(settings_for(SWEEP, seed, args, None), stack))
            budget = total_flops(sweep)
            curves[seed] = {SWEEP: sweep} | {
                method: anytime_curve(run(settings_for(method, seed, args, budget), stack))
                for method in METHODS
                if method != SWEEP
            }
    points = [
        curve.assign(seed=seed, method=method)
        for seed, by_method in curves.items()
        for method, curve in by_method.items()
    ]
    pd.concat(points).to_csv(args.folder / "anytime.csv", index=False)
    print("\n".join(summary_lines(curves)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
