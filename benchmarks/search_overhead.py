"""Search overhead: N trials of fixed work through Ray Tune vs the same trials run directly.

    python benchmarks/search_overhead.py                       # 4 trials of 200 steps, 3 rounds
    python benchmarks/search_overhead.py --steps 280 --rounds 5

Both sides run the same named config N times, two at a time with one thread each, in two
processes that each run one trial after another, with the same evaluations and checkpoints:
  direct  a pool of two processes; each trial loads the prepared data and trains, and at each
          evaluation logs its record and saves a checkpoint in its trial folder, through the
          calls launch/trainable.py makes (launch/storage.py);
  tune    a search through launch/experiment.py (a one-point space, FIFO, the study, the results
          file kept current): launch/trainable.py's trial, which also hands each evaluation to
          `tune.report` and measures its decode latency once (tens of milliseconds a trial,
          charged to this side: the function lives beside Ray in launch/trainable.py, and
          importing Ray would cost the direct side more).

A trial's work is the time it spends inside Pico's training steps and evaluations, measured in
the same way on both sides: clocks around `_Run.train_step` and `_Run.evaluate` of pico/train.py,
installed in every trial process before it runs a trial (through a pool initializer, and Ray's
worker setup hook). Everything else in a side's trial slots (2 x its wall time) is overhead:
processes starting, imports, loading data, Tune's setup, hand-overs between trials, logging,
checkpoints, reports and the driver's work they wait for. Per round:

    overhead(side)  = 1 - work_s / (2 x wall_s)
    search_overhead = overhead(tune) - overhead(direct)

Each side is charged against its own work because identical trials train at speeds that differ
by 10% or more from one run to the next on a shared machine, which a difference of wall times
cannot tell apart from a few percent of overhead; that difference is printed too. Ray's own start
(once per search, seconds) is timed apart and left out. The sides take turns (direct, tune,
direct, tune, ...), one of each per round; the headline is the median over the rounds, printed
with its spread, and whether the rounds spread too wide to settle the goal (at most 0.05;
docs/benchmarks.md). Last line: `search_overhead: <median fraction>`.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Only what a direct trial needs is imported here: spawned pool processes import this module, and
# Ray, Optuna or Tune imported there would be charged to the direct side.
from benchmarks.rounds import goal_line, spread
from launch.storage import ExperimentStore
from pico.config import TrainConfig
from pico.errors import ArgumentParser, PicoError, run_cli

REPO = str(Path(__file__).resolve().parents[1])
CONCURRENCY = 2
GOAL = 0.05  # at most this fraction of the trial slots lost to the search, beyond the direct run
WORK_KEY = "bench_work_s"  # added to each evaluation's record by time_the_work


def parse_args(argv: list[str] | None) -> Any:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=4, help="trials on each side [4]")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of both sides [3]")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per trial [200]")
    p.add_argument("--eval-interval", type=int, default=50, help="steps between evaluations")
    p.add_argument("--config", default="tf-e64-l2-gelu", help="named config (search_spaces)")
    p.add_argument("--corpus", default="shakespeare")
    p.add_argument("--tokenizer", default="bpe:4096")
    args = p.parse_args(argv)
    for flag in ("trials", "rounds", "steps", "eval_interval"):
        if getattr(args, flag) < 1:
            name = "--" + flag.replace("_", "-")
            raise PicoError(f"{name} must be a positive integer, got {getattr(args, flag)}")
    return args


def bench_config(args: Any) -> TrainConfig:
    """The one config every trial trains (the fields a search adds, as the search sets them)."""
    from search_spaces import NAMED_CONFIGS

    if args.config not in NAMED_CONFIGS:
        raise PicoError(f"unknown named config {args.config!r}; see search_spaces/seed22.py")
    return TrainConfig(
        **NAMED_CONFIGS[args.config],
        corpus=args.corpus,
        tokenizer=args.tokenizer,
        max_steps=args.steps,
        eval_interval=args.eval_interval,
        eval_tokens=4096,
        device="cpu",
        num_threads=1,
    ).validate()


def time_the_work() -> None:
    """In a trial process: make each evaluation's record carry WORK_KEY, the seconds its run has
    spent so far inside training steps and evaluations (two clock reads a step, microseconds
    against milliseconds)."""
    if REPO not in sys.path:  # Ray runs its setup hook before the worker has the driver's path
        sys.path.insert(0, REPO)
    from pico.train import _Run

    step, evaluate = _Run.train_step, _Run.evaluate

    def timed_step(run: _Run) -> None:
        start = time.perf_counter()
        step(run)
        run.work_s = getattr(run, "work_s", 0.0) + time.perf_counter() - start

    def timed_evaluate(run: _Run) -> dict[str, Any]:
        start = time.perf_counter()
        record = evaluate(run)
        run.work_s = getattr(run, "work_s", 0.0) + time.perf_counter() - start
        return {**record, WORK_KEY: run.work_s}

    _Run.train_step, _Run.evaluate = timed_step, timed_evaluate


def direct_trial(cfg: TrainConfig, experiment: str, trial_id: str, data_dir: str) -> None:
    """One trial without Tune: the data, evaluation log and checkpoints as launch/trainable.py's
    trial has them, with no report to hand each evaluation to."""
    from pico.data import load_prepared
    from pico.train import train

    store = ExperimentStore(experiment)
    data = load_prepared(data_dir)

    def on_eval(record: dict[str, Any], save: Any) -> None:
        store.write_eval(trial_id, record)
        store.save_checkpoint(trial_id, int(record["step"]), save)

    train(cfg, data, on_eval=on_eval)


@dataclass(frozen=True)
class SideRun:
    """One side's run of the trials: its wall time and the work its trials did."""

    wall_s: float
    work_s: float  # summed over the trials

    @property
    def overhead(self) -> float:
        """The fraction of the trial slots (CONCURRENCY x wall) not spent working."""
        return 1 - self.work_s / (CONCURRENCY * self.wall_s)


def trials_work_s(store: ExperimentStore, trials: int, steps: int) -> float:
    """The work of the experiment's trials, from each one's last evaluation; an error unless
    all `trials` ran to `steps`."""
    last = [store.read_evals(trial_id)[-1] for trial_id in store.trial_ids()]
    if len(last) != trials or any(record["step"] != steps for record in last):
        raise RuntimeError(f"expected {trials} trials of {steps} steps in {store.location}")
    return sum(record[WORK_KEY] for record in last)


def run_direct(cfg: TrainConfig, args: Any, folder: Path, data_dir: str) -> SideRun:
    """The trials two at a time in a pool of fresh processes, each taking the next trial."""
    jobs = [(cfg, str(folder), str(i), data_dir) for i in range(args.trials)]
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(CONCURRENCY, initializer=time_the_work) as pool:
        pool.starmap(direct_trial, jobs, chunksize=1)
    wall = time.perf_counter() - start
    return SideRun(wall, trials_work_s(ExperimentStore(str(folder)), args.trials, args.steps))


class FixedSpace:
    """A search space of one point (picklable, as Tune saves its searcher)."""

    def __init__(self, fields: dict[str, Any]):
        self.fields = fields

    def __call__(self, trial: Any) -> dict[str, Any]:
        return dict(self.fields)


def run_tune(cfg: TrainConfig, args: Any, folder: Path) -> SideRun:
    """The same trials through a Tune search (Ray already started)."""
    import search_spaces
    from launch.experiment import run_search
    from launch.settings import SearchSettings

    search_spaces.SPACES["overhead"] = FixedSpace(search_spaces.NAMED_CONFIGS[args.config])
    settings = SearchSettings(
        space="overhead",
        name=folder.name,
        storage=str(folder.parent),
        num_samples=args.trials,
        max_steps=cfg.max_steps,
        eval_interval=cfg.eval_interval,
        eval_tokens=cfg.eval_tokens,
        scheduler="fifo",
        sampler="random",
        corpus=cfg.corpus,
        tokenizer=cfg.tokenizer,
        max_concurrent=CONCURRENCY,
        confirm_top=0,  # no confirmation stage: both sides run the same N trials
        confirm_seeds=0,
    )
    start = time.perf_counter()
    run_search(settings, verbosity=0)
    wall = time.perf_counter() - start
    return SideRun(wall, trials_work_s(settings.store(), args.trials, args.steps))


def summarize(args: Any, direct: list[SideRun], tune: list[SideRun], ray_start: float) -> float:
    """Print the figures over the rounds; returns the headline (the median overhead)."""
    for name, runs in (("direct", direct), ("tune", tune)):
        wall = statistics.median(run.wall_s for run in runs)
        work = statistics.median(run.work_s / args.trials for run in runs)
        idle = spread([run.overhead for run in runs])
        print(
            f"{name:<7} {args.trials} trials: median wall {wall:.1f} s, median work "
            f"{work:.1f} s a trial; slots not working: {idle.describe()}"
        )
    print(f"Ray's start, left out: {ray_start:.1f} s")
    walls = spread([(t.wall_s - d.wall_s) / t.wall_s for d, t in zip(direct, tune, strict=True)])
    print(f"wall time, tune over direct (noise-bound): {walls.describe('+.3f')}")
    overhead = spread([t.overhead - d.overhead for d, t in zip(direct, tune, strict=True)])
    print(f"search overhead: {overhead.describe('+.3f')}")
    print(goal_line(overhead, GOAL, at_least=False))
    return overhead.median


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray

    from pico.data import prepare_data

    cfg = bench_config(args)
    data = prepare_data(cfg.corpus, cfg.tokenizer)  # cached once, before either side
    start = time.perf_counter()
    ray.init(
        num_cpus=CONCURRENCY,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"worker_process_setup_hook": time_the_work},
    )
    ray_start = time.perf_counter() - start
    direct: list[SideRun] = []
    tune: list[SideRun] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            for i in range(args.rounds):
                direct.append(run_direct(cfg, args, Path(folder) / f"direct{i}", str(data.path)))
                tune.append(run_tune(cfg, args, Path(folder) / f"tune{i}"))
                d, t = direct[-1], tune[-1]
                print(
                    f"round {i + 1}: direct {d.wall_s:.1f} s ({d.overhead:.3f} not working), "
                    f"tune {t.wall_s:.1f} s ({t.overhead:.3f}): {t.overhead - d.overhead:+.3f}",
                    flush=True,
                )
    finally:
        ray.shutdown()
    print(f"search_overhead: {summarize(args, direct, tune, ray_start):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
