"""Search driver: what the driver costs per result, with trials that do no training.

    python benchmarks/search_driver.py           # 100, 1,000 and 10,000 trials; 3, 3 and 1 rounds
    python benchmarks/search_driver.py --trials 100,1000 --repeats 3
    python benchmarks/search_driver.py --trials 1000 --repeats 2 --with-tune-default

Every trial is a stub that trains nothing: it sends `--evals` results to `tune.report` as fast as
the driver takes them, each with the metrics a real trial reports (docs/results.md), and times
how long each `tune.report` call blocks. Two sides (three with --with-tune-default) run the
same trials with the same Tune settings (trials, concurrency, actor reuse, one CPU per trial, ASHA
on val_loss by step, and the options Pico gives Tune, launch/experiment.py's `configure_tune`: no
per-trial JSON, CSV and TensorBoard logs):

  tune  Tune alone: a random search over a `tune.loguniform`/`tune.choice` space (Tune's
        BasicVariantGenerator), Ray's ASHAScheduler choosing no trial to run, as Pico's
        schedulers choose none (launch/scheduler.py's InOrderScheduler), no callbacks.
  pico  Pico's layer as launch/experiment.py builds it: a SearchStudy in its journal file (its
        writes made behind, by a thread), StudySearcher (the `random` sampler, so that a
        model-based sampler's own cost is not what is measured; it is asked ahead), StudyASHA
        with its rung records in the study, and the Recorder keeping the study and the live
        results table current while a ResultsWriter thread writes results.parquet.
  tune-default (with --with-tune-default) Tune alone with Ray's ASHAScheduler as it is, which
        chooses the trials to run as Tune's FIFOScheduler does: what Pico's schedulers change.

A trial's val_loss follows its position in the search (a fixed pseudo-random level per trial
number), so both sides make nearly the same ASHA decisions and count nearly the same results (the
order in which two concurrent trials reach a rung can differ). Ray's ASHA gets `max_t` one step
past the last evaluation: its milestones are StudyASHA's, and a trial that reaches its last step
ends by itself on both sides instead of being stopped by Ray's ASHA. The study, the results file
and Tune's own files go in a temporary folder: `TMPDIR=/dev/shm` puts them on a RAM disk, to see
what the disk's fsyncs cost.

Per side and number of trials it prints: results per second and microseconds per result over the
window from the first trial's start to the last result (Ray's and Tune's setup, and the
ResultGrid Tune builds at the end, are outside it and printed apart; so is collecting the
garbage of the earlier runs, done ahead of each run), the share of trial time spent blocked in
`tune.report` (each trial's time up to its last report, that report's own wait being unknowable
to a result), the mean wait of one report, the driver process's CPU time (all its threads) per
result within the window (sampled every 20 ms by a thread beside the fit, read off between the
samples), and for the pico side the seconds the study's queued writes took to finish after Tune
returned. Each round's line adds the driver's CPU per result over the whole fit, setup and end
included. The sides alternate, round by round. Headlines:
`per_result_cost_ratio_<largest>_vs_<smallest>` (pico side: the goal is flat, at most 1.5) and
the pico side's extra cost per result over the tune side at the largest size (goal: at most
0.10), medians over rounds with their spread. The extra cost is printed at every size, each
round's pico run against its tune run, in the window's time per result and in the driver's CPU
time per result within the window, which the machine's other work disturbs less. Where the pico
side's time goes: clocks around the methods of Pico's searcher, ASHA, recorder, study and
results writer (the study's write thread is in the driver CPU column only). Last line:
`search_driver_pico_overhead: <fraction>`.
Figures: docs/benchmarks.md#search-driver.
"""

from __future__ import annotations

import bisect
import functools
import gc
import importlib
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.results import EVAL_COLUMNS
from launch.trainable import SETTINGS_KEY
from pico.errors import ArgumentParser, PicoError, run_cli

SIDES = ("tune", "pico")
EVAL_INTERVAL = 10
PROGRESS_EVERY_S = 60.0
CPU_SAMPLE_S = 0.02
# Pico's layer by component: the seconds spent inside these methods, per pico run. The study's
# methods run inside the other three, and are counted in their caller's time too; the writer
# runs in a thread of its own.
COMPONENTS = {
    "searcher": [("launch.searcher", "StudySearcher", "suggest")],
    "asha": [("launch.scheduler", "StudyASHA", "on_trial_result")],
    "recorder": [
        ("launch.recorder", "Recorder", name)
        for name in ("on_trial_result", "on_trial_complete", "on_trial_error", "on_trial_recover")
    ],
    "study": [
        ("launch.study", "SearchStudy", name)
        for name in ("ask", "ask_behind", "take", "config", "set_attr", "report", "finish")
    ],
    "writer": [("launch.export", "ResultsWriter", "_write")],
}
LAYER_SECONDS = dict.fromkeys(COMPONENTS, 0.0)
# What a real trial reports (pico.train's record plus launch/trainable.py's extras), with values
# of the right types; the stub sets step, val_loss and train_flops at each report.
_KINDS = {"int64": 1, "double": 1.0, "bool": False}
RESULT_TEMPLATE: dict[str, Any] = {
    **{name: _KINDS[str(kind)] for name, kind in EVAL_COLUMNS if name != "is_last"},
    "diverged": False,
    "device": "cpu",
    "node": "127.0.0.1",
    "node_id": "0" * 56,
    "decode_latency_ms": 1.0,
}


def stub_trial(config: dict[str, Any]) -> None:
    """A trial that trains nothing: `max_steps / eval_interval` results, sent at once.

    Each result carries `report_wait_s` (seconds this trial has spent blocked in `tune.report`
    so far), `trial_s` (seconds since the trial started), and the wall-clock times of the trial's
    start and of this report. Nothing is written anywhere (no trial folder, no checkpoint).
    """
    from ray import tune

    started_at, clock = time.time(), time.perf_counter()
    pico = config.get(SETTINGS_KEY, {})
    if "trial_id" in pico:  # Pico's trial id is its Optuna trial number
        index = int(pico["trial_id"])
    else:  # Tune's BasicVariantGenerator numbers its trials from 0 too: <prefix>_<number>
        index = int(tune.get_context().get_trial_id().rsplit("_", 1)[1])
    level = random.Random(index).random()
    interval = config["eval_interval"]
    waited = 0.0
    for step in range(interval, config["max_steps"] + 1, interval):
        result = {
            **RESULT_TEMPLATE,
            "step": step,
            "val_loss": 2.0 + level + interval / step,
            "train_flops": 1e9 * step,
            "checkpoint": f"/nowhere/trials/{index:05d}/checkpoints/step-{step:09d}",
            "report_wait_s": waited,
            "trial_s": time.perf_counter() - clock,
            "started_at": started_at,
            "reported_at": time.time(),
        }
        before = time.perf_counter()
        tune.report(result)
        waited += time.perf_counter() - before


def time_components() -> None:
    """Count the seconds spent in each of Pico's components (COMPONENTS) in LAYER_SECONDS: two
    clock reads a call, about a microsecond, against milliseconds per result."""
    for bucket, methods in COMPONENTS.items():
        for module, cls_name, name in methods:
            cls = getattr(importlib.import_module(module), cls_name)
            setattr(cls, name, _timed(getattr(cls, name), bucket))


def _timed(method: Any, bucket: str) -> Any:
    @functools.wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            LAYER_SECONDS[bucket] += time.perf_counter() - start

    return timed


def timed_write(writer: Any) -> float:
    """Seconds of one write of the results file, as the writer thread makes it, at the end of
    the run (the table at its largest)."""
    from launch.export import write_results

    start = time.perf_counter()
    with writer.lock:
        data = writer.table.to_arrow()
    write_results(data, writer.path)
    return time.perf_counter() - start


def parse_args(argv: list[str] | None) -> Any:
    p = ArgumentParser(prog="benchmarks/search_driver.py", description=__doc__.split("\n")[0])
    p.add_argument("--trials", default="100,1000,10000", help="numbers of trials [100,1000,10000]")
    p.add_argument(
        "--repeats",
        default="3,3,1",
        help="rounds of each side per number of trials, one for all or one each [3,3,1]",
    )
    p.add_argument("--concurrency", type=int, default=2, help="trials at once [2]")
    p.add_argument("--evals", type=int, default=4, help="results per trial ASHA lets run [4]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--with-tune-default",
        action="store_true",
        help="also run Tune alone with Ray's ASHAScheduler choosing trials as it does by default",
    )
    args = p.parse_args(argv)
    args.sides = (*SIDES, "tune-default") if args.with_tune_default else SIDES
    args.sizes = _numbers("--trials", args.trials)
    repeats = _numbers("--repeats", args.repeats)
    if len(repeats) == 1:
        repeats = repeats * len(args.sizes)
    if len(repeats) != len(args.sizes):
        raise PicoError("--repeats needs one number, or one per number in --trials")
    args.rounds = dict(zip(args.sizes, repeats, strict=True))
    if args.concurrency < 1 or args.evals < 1:
        raise PicoError("--concurrency and --evals must be positive")
    return args


def _numbers(flag: str, text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise PicoError(f"{flag} takes positive integers separated by commas, got {text!r}")
    return values


def bench_settings(args: Any, n_trials: int, folder: Path, name: str) -> Any:
    """The search settings both sides share (the tune side uses their numbers only)."""
    from launch.settings import SearchSettings

    return SearchSettings(
        space="tiny",
        name=name,
        storage=str(folder),
        num_samples=n_trials,
        max_steps=args.evals * EVAL_INTERVAL,
        eval_interval=EVAL_INTERVAL,
        scheduler="asha",
        grace_period=EVAL_INTERVAL,
        reduction_factor=2.0,
        sampler="random",
        seed=args.seed,
        corpus="3seqs",
        tokenizer="char",
        max_concurrent=args.concurrency,
        confirm_top=0,  # the driver's cost per result: the search phase only
        confirm_seeds=0,
    )


def tune_configs(settings: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Tune settings both sides share: TuneConfig and RunConfig keyword arguments."""
    from ray import tune

    tune_config = {
        "num_samples": settings.num_samples,
        "max_concurrent_trials": settings.max_concurrent,
        "reuse_actors": True,
    }
    run_config = {
        "name": settings.name,
        "storage_path": settings.storage,
        "failure_config": tune.FailureConfig(max_failures=settings.max_failures),
        "verbose": 0,
    }
    return tune_config, run_config


def tune_side(settings: Any, in_order: bool = True) -> tuple[Any, None]:
    """Tune alone: the tiny space's shape as a Tune param space, Ray's ASHA (choosing no trial
    to run when `in_order`), no callbacks."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from launch.scheduler import InOrderScheduler
    from search_spaces.tiny import SHAPES

    class InOrderASHA(ASHAScheduler):
        choose_trial_to_run = InOrderScheduler.choose_trial_to_run

    tune_config, run_config = tune_configs(settings)
    space = {
        **settings.fixed_fields(),
        **SHAPES["lstm"],
        "arch": tune.choice(sorted(SHAPES)),
        "d_model": tune.choice([16, 32]),
        "n_layer": 1,
        "lr": tune.loguniform(1e-3, 3e-2),
        "min_lr": tune.loguniform(1e-4, 3e-3),
        "batch_size": 8,
        "block_size": 32,
        "warmup_steps": 0,
    }
    scheduler = (InOrderASHA if in_order else ASHAScheduler)(
        time_attr="step",
        metric="val_loss",
        mode="min",
        max_t=settings.max_steps + 1,  # see the module docstring
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )
    tuner = tune.Tuner(
        tune.with_resources(stub_trial, {"cpu": settings.cpus_per_trial}),
        param_space=space,
        tune_config=tune.TuneConfig(scheduler=scheduler, **tune_config),
        run_config=tune.RunConfig(**run_config),
    )
    return tuner, None


def pico_side(settings: Any) -> tuple[Any, Any]:
    """Pico's layer, as launch/experiment.py's make_tuner builds it, around the stub trial."""
    from types import SimpleNamespace

    from ray import tune

    from launch.experiment import (
        TrialNamer,
        experiment_metadata,
        make_callbacks,
        make_scheduler,
        make_searcher,
    )
    from launch.export import ResultsWriter, build_table
    from launch.study import SearchStudy

    Path(settings.experiment_path).mkdir(parents=True)
    data = SimpleNamespace(manifest={}, fingerprint=None)
    study = SearchStudy.create(
        settings.study_location,
        settings.name,
        ["minimize"],
        settings.to_dict(),
        experiment_metadata(settings, data, "benchmarks/search_driver.py"),
    )
    writer = ResultsWriter(build_table(study, settings.store()), settings.results_path)
    tune_config, run_config = tune_configs(settings)
    shared = {"experiment": settings.experiment_path, "data_dir": "/nowhere", "max_docs": None}
    namer = TrialNamer()
    tuner = tune.Tuner(
        tune.with_resources(stub_trial, {"cpu": settings.cpus_per_trial}),
        param_space={SETTINGS_KEY: {**shared, "fail_at_step": None}},
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(settings, study, []),
            scheduler=make_scheduler(settings, study),
            trial_name_creator=namer,
            trial_dirname_creator=namer,
            **tune_config,
        ),
        run_config=tune.RunConfig(callbacks=make_callbacks(settings, study, writer), **run_config),
    )
    return tuner, (study, writer)


def run_side(side: str, args: Any, n_trials: int, folder: Path, label: str) -> dict[str, Any]:
    """One run of `side` with `n_trials` trials; its measurements."""
    settings = bench_settings(args, n_trials, folder, f"{side}-{n_trials}-{label}")
    if side == "pico":
        tuner, pico = pico_side(settings)
    else:
        tuner, pico = tune_side(settings, in_order=side == "tune")
    watch = Watch(f"{side} {n_trials} trials", Path(settings.experiment_path))
    LAYER_SECONDS.update(dict.fromkeys(LAYER_SECONDS, 0.0))
    # Every side runs in this one process: collect the earlier runs' garbage now, so that no
    # run's window pays for another's (full collections of it paused runs by 2.7 s).
    gc.collect()
    cpu_before = driver_cpu_s()
    start = time.perf_counter()
    try:
        grid = tuner.fit()
        fit_s = time.perf_counter() - start
    finally:
        watch.stop()
    final_write_s = flush_s = 0.0
    if pico is not None:
        study, writer = pico
        start = time.perf_counter()
        study.close()  # the study's writes still queued when Tune returned
        flush_s = time.perf_counter() - start
        writer.close()
        if len(writer.table.trials) != n_trials:
            raise RuntimeError(f"the live table holds {len(writer.table.trials)} trials")
        final_write_s = timed_write(writer)
    lasts = [r.metrics for r in grid]
    errors = sum(1 for r in grid if r.error is not None)
    shutil.rmtree(settings.experiment_path, ignore_errors=True)
    if errors or len(lasts) != n_trials or any("started_at" not in m for m in lasts):
        raise RuntimeError(f"{side}: {errors} of {len(lasts)} trials failed")
    cpu_s = driver_cpu_s() - cpu_before
    results = sum(m["training_iteration"] for m in lasts)
    first, last = min(m["started_at"] for m in lasts), max(m["reported_at"] for m in lasts)
    window = last - first
    waits = sum(m["report_wait_s"] for m in lasts)
    return {
        "side": side,
        "trials": n_trials,
        "results": results,
        "window_s": window,
        "fit_s": fit_s,
        "final_write_s": final_write_s,
        "flush_s": flush_s,
        "cpu_ms_per_result": 1000 * watch.cpu_between(first, last) / results,
        "fit_cpu_ms_per_result": 1000 * cpu_s / results,
        "results_per_s": results / window,
        "us_per_result": 1e6 * window / results,
        "report_wait_share": waits / sum(m["trial_s"] for m in lasts),
        # The last report of each trial has no result after it to carry its wait.
        "report_wait_ms": 1000 * waits / max(1, results - n_trials),
        **{f"{name}_us": 1e6 * seconds / results for name, seconds in LAYER_SECONDS.items()},
    }


def driver_cpu_s() -> float:
    """CPU seconds this process (the driver, all its threads) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Watch:
    """A thread beside a run's `fit`: it samples the driver's CPU time every `CPU_SAMPLE_S`, so
    that the CPU used within the run's window can be read off afterwards (`cpu_between`), and
    prints, every minute of a long run, how many trial folders Tune has made so far (it makes
    them in bursts, when it saves its experiment state, so the count lags the trials that have
    reported). A thread, so that neither side carries a callback."""

    def __init__(self, what: str, folder: Path):
        self.what, self.folder = what, folder
        self.start = time.perf_counter()
        self.samples = [(time.time(), driver_cpu_s())]  # (wall-clock time, CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        print_at = self.start + PROGRESS_EVERY_S
        while not self._stop.wait(CPU_SAMPLE_S):
            self.samples.append((time.time(), driver_cpu_s()))
            if time.perf_counter() >= print_at:
                print_at += PROGRESS_EVERY_S
                self._print_progress()

    def _print_progress(self) -> None:
        try:
            seen = sum(1 for entry in os.scandir(self.folder) if entry.is_dir())
        except OSError:
            seen = 0
        elapsed = time.perf_counter() - self.start
        print(f"  ... {self.what}: {seen} trial folders, {elapsed:.0f} s", flush=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), driver_cpu_s()))

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the driver used between wall-clock times `start` and `end`, each read
        off the samples around it by linear interpolation."""
        return self._cpu_at(end) - self._cpu_at(start)

    def _cpu_at(self, when: float) -> float:
        times = [t for t, _ in self.samples]
        after = min(max(bisect.bisect_left(times, when), 1), len(times) - 1)
        (t0, cpu0), (t1, cpu1) = self.samples[after - 1], self.samples[after]
        return cpu1 if t1 == t0 else cpu0 + (cpu1 - cpu0) * (when - t0) / (t1 - t0)


def median_spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def show(value: float, low: float, high: float, fmt: str) -> str:
    """`value`, with the rounds' range when there are several."""
    text = format(value, fmt)
    return text if low == high else f"{text} [{low:{fmt}}-{high:{fmt}}]"


def summarize(args: Any, runs: list[dict[str, Any]]) -> float:
    """Print the table and the headlines; returns the pico side's overhead."""
    print(
        f"{'side':12s} {'trials':>6s} {'results':>7s} {'results/s':>11s} {'us/result':>22s} "
        f"{'report-wait share':>19s} {'ms/report':>19s} {'driver CPU ms/result':>21s} "
        f"{'setup+end s':>11s} {'study flush s':>13s} {'last write s':>12s}"
    )
    cost: dict[tuple[str, int], float] = {}
    for n in args.sizes:
        for side in args.sides:
            rows = [r for r in runs if r["side"] == side and r["trials"] == n]
            rate = median_spread([r["results_per_s"] for r in rows])
            us = median_spread([r["us_per_result"] for r in rows])
            share = median_spread([r["report_wait_share"] for r in rows])
            wait = median_spread([r["report_wait_ms"] for r in rows])
            cpu = median_spread([r["cpu_ms_per_result"] for r in rows])
            fixed = statistics.median(r["fit_s"] - r["window_s"] for r in rows)
            flush = statistics.median(r["flush_s"] for r in rows)
            write = statistics.median(r["final_write_s"] for r in rows)
            cost[side, n] = us[0]
            print(
                f"{side:12s} {n:6d} {statistics.median(r['results'] for r in rows):7.0f} "
                f"{show(*rate, '.0f'):>11s} {show(*us, '.0f'):>22s} {show(*share, '.3f'):>19s} "
                f"{show(*wait, '.1f'):>19s} {show(*cpu, '.1f'):>21s} {fixed:11.1f} {flush:13.2f} "
                f"{write:12.2f}"
            )
    for n in args.sizes:
        rows = [r for r in runs if r["side"] == "pico" and r["trials"] == n]
        parts = {name: statistics.median(r[f"{name}_us"] for r in rows) for name in COMPONENTS}
        print(
            f"pico layer at {n} trials, us per result: searcher {parts['searcher']:.0f}, asha "
            f"{parts['asha']:.0f}, recorder {parts['recorder']:.0f} (study calls in these three: "
            f"{parts['study']:.0f}), results writer thread {parts['writer']:.0f}"
        )
    small, large = min(args.sizes), max(args.sizes)
    print(
        f"per_result_cost_ratio_{large}_vs_{small}: {cost['pico', large] / cost['pico', small]:.2f}"
        f" (tune side: {cost['tune', large] / cost['tune', small]:.2f}; goal: at most 1.5)"
    )
    # Each round's overhead (its pico run against its tune run), then their median: in the
    # window's time per result (the headline, at the largest size), and in the driver's CPU
    # time per result, which the machine's other work disturbs less.
    overheads = {}
    for n in args.sizes:
        wall = median_spread(round_overheads(runs, n, "us_per_result"))
        cpu = median_spread(round_overheads(runs, n, "cpu_ms_per_result"))
        overheads[n] = wall[0]
        print(
            f"pico overhead per result at {n} trials over {args.rounds[n]} round(s): "
            f"{show(*wall, '.3f')}; in driver CPU {show(*cpu, '.3f')} (goal: at most 0.10)"
        )
    return overheads[large]


def round_overheads(runs: list[dict[str, Any]], n_trials: int, key: str) -> list[float]:
    """pico / tune - 1 in `key`, for each round at `n_trials`."""
    rounds: dict[int, dict[str, float]] = {}
    for r in runs:
        if r["trials"] == n_trials:
            rounds.setdefault(r["round"], {})[r["side"]] = r[key]
    return [sides["pico"] / sides["tune"] - 1 for sides in rounds.values()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from launch.experiment import configure_tune

    configure_tune()  # both sides run Tune as Pico runs it
    import ray

    time_components()
    started = time.perf_counter()
    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
    ray_s = time.perf_counter() - started
    print(f"ray started in {ray_s:.1f} s; {args.concurrency} trials at once", flush=True)
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="pico-driver-") as tmp:
            for n in args.sizes:
                for i in range(args.rounds[n]):
                    # Alternate who goes first.
                    order = args.sides if i % 2 == 0 else args.sides[::-1]
                    for side in order:
                        run = run_side(side, args, n, Path(tmp), f"r{i}")
                        runs.append({**run, "round": i})
                        print(
                            f"{n} trials, round {i + 1}, {side}: {run['results']} results in "
                            f"{run['window_s']:.1f} s ({run['us_per_result']:.0f} us each, "
                            f"{run['fit_s']:.1f} s in fit; driver CPU per result "
                            f"{run['cpu_ms_per_result']:.2f} ms in the window, "
                            f"{run['fit_cpu_ms_per_result']:.2f} ms over the fit)",
                            flush=True,
                        )
    finally:
        ray.shutdown()
    overhead = summarize(args, runs)
    print(f"search_driver_pico_overhead: {overhead:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
