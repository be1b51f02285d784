"""Search overhead: N trials of fixed work through Ray Tune vs the same work run directly.

    python benchmarks/search_overhead.py                  # 4 trials of about 20 s each
    python benchmarks/search_overhead.py --steps 50       # shorter trials

Both sides train the same named config N times, two at a time with one thread each, evaluating
every --eval-interval steps; through Tune each evaluation also writes a checkpoint and reports it,
and the results file is kept current, as in a real search. Each side's trial slots (2 x its wall
time) are either spent inside `pico.train.train` or not (processes starting, imports, Tune's setup,
checkpoints, reports, hand-overs). The overhead is the fraction of the Tune run's slots not spent
training, less the same fraction of the direct run:

    overhead = (1 - training_s / (2 x wall)) through Tune - (the same) direct

Each side is measured against its own training time because identical trials here train at speeds
that differ by up to 10% from one run to the next, which a difference of wall times cannot tell
apart from a few percent of overhead; that difference is printed too. Ray's own start (once per
search, seconds) is timed apart and left out. The sides are repeated alternately (--repeats) and
the lowest fraction of each kept. Last line: `search_overhead: <fraction>`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import search_spaces
from launch.experiment import run_search
from launch.settings import SearchSettings
from pico.config import TrainConfig
from pico.data import prepare_data
from search_spaces import NAMED_CONFIGS

CONCURRENCY = 2


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=4, help="trials on each side [4]")
    p.add_argument("--repeats", type=int, default=2, help="alternate runs of each side [2]")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per trial [200]")
    p.add_argument("--eval-interval", type=int, default=50, help="steps between evaluations")
    p.add_argument("--config", default="tf-e64-l2-gelu", help="named config (search_spaces)")
    p.add_argument("--corpus", default="shakespeare")
    p.add_argument("--tokenizer", default="bpe:4096")
    return p.parse_args()


def bench_config(args: argparse.Namespace) -> TrainConfig:
    """The one config every trial trains."""
    return TrainConfig(
        **NAMED_CONFIGS[args.config],
        corpus=args.corpus,
        tokenizer=args.tokenizer,
        max_steps=args.steps,
        eval_interval=args.eval_interval,
        eval_tokens=4096,
        device="cpu",
        num_threads=1,
    )


def train_once(cfg: TrainConfig) -> float:
    """One direct training run in a worker process; returns its training seconds."""
    from pico.data import prepare_data
    from pico.train import train

    data = prepare_data(cfg.corpus, cfg.tokenizer)
    return train(cfg, data).metrics["elapsed_s"]


def run_direct(cfg: TrainConfig, trials: int) -> tuple[float, float]:
    """Wall seconds for `trials` runs two at a time, and their summed training seconds."""
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(CONCURRENCY) as pool:
        seconds = pool.map(train_once, [cfg] * trials)
    return time.perf_counter() - start, sum(seconds)


class FixedSpace:
    """A search space of one point (picklable, as Tune saves its searcher)."""

    def __init__(self, fields: dict):
        self.fields = fields

    def __call__(self, trial) -> dict:
        return dict(self.fields)


def run_tune(args: argparse.Namespace, cfg: TrainConfig, folder: Path) -> tuple[float, float]:
    """Wall seconds for the same trials through a Tune search (Ray already started), and the
    seconds the trials spent training."""
    search_spaces.SPACES["overhead"] = FixedSpace(NAMED_CONFIGS[args.config])
    settings = SearchSettings(
        space="overhead",
        name=folder.name,
        storage=str(folder.parent),
        num_samples=args.trials,
        max_steps=args.steps,
        eval_interval=args.eval_interval,
        eval_tokens=cfg.eval_tokens,
        scheduler="fifo",
        sampler="random",
        corpus=args.corpus,
        tokenizer=args.tokenizer,
        max_concurrent=CONCURRENCY,
    )
    start = time.perf_counter()
    run_search(settings, verbosity=0)
    wall = time.perf_counter() - start
    path = settings.results_path
    last = pd.read_parquet(path, columns=["elapsed_s", "is_last"]).query("is_last")
    return wall, float(last["elapsed_s"].sum())


def main() -> None:
    import ray

    args = parse_args()
    cfg = bench_config(args)
    prepare_data(cfg.corpus, cfg.tokenizer)  # cached once, before either side
    start = time.perf_counter()
    ray.init(num_cpus=CONCURRENCY, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start
    direct, tune = [], []
    try:
        with tempfile.TemporaryDirectory() as folder:
            for i in range(args.repeats):
                direct.append(run_direct(cfg, args.trials))
                tune.append(run_tune(args, cfg, Path(folder) / f"overhead{i}"))
                (d_wall, d_train), (t_wall, t_train) = direct[-1], tune[-1]
                print(
                    f"round {i + 1}: direct {d_wall:.1f} s ({idle_fraction(d_wall, d_train):.3f} "
                    f"not training), tune {t_wall:.1f} s ({idle_fraction(t_wall, t_train):.3f})"
                )
    finally:
        ray.shutdown()
    (direct_wall, train_s), (tune_wall, _) = min(direct), min(tune)
    each = train_s / args.trials
    print(f"direct: {args.trials} trials in {direct_wall:.1f} s ({each:.1f} s of training each)")
    print(f"tune:   {args.trials} trials in {tune_wall:.1f} s (+ {ray_start:.1f} s to start Ray)")
    walls = (tune_wall - direct_wall) / tune_wall
    print(f"wall time, fastest rounds: tune {walls:+.3f} over direct (noise-bound)")
    idle_direct = min(idle_fraction(*run) for run in direct)
    idle_tune = min(idle_fraction(*run) for run in tune)
    print(f"slots not training: direct {idle_direct:.3f}, tune {idle_tune:.3f}")
    print(f"search_overhead: {idle_tune - idle_direct:.3f}")


def idle_fraction(wall: float, training_s: float) -> float:
    """The fraction of a run's trial slots (CONCURRENCY x wall) not spent training."""
    return 1 - training_s / (CONCURRENCY * wall)


if __name__ == "__main__":
    main()
