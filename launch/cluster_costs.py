"""Measure what sizes a cluster search: the cost of one trial, and the driver's cost per result.

    python launch/cluster_costs.py trials [--configs tf-e128-l4-silu,...] [--device cuda]
    python launch/cluster_costs.py driver [--trials 200] [--evals 8] [--num-to-keep 2]

`trials` trains seed22 configs one after another as a search trial would (same loop, an
evaluation and a checkpoint every `--eval-interval` steps) and prints, per config, the wall
seconds of the whole trial, the seconds per optimizer step, the evaluations and the bytes of one
checkpoint. Run it on one worker of the cluster you plan: docs/scaling.md turns the numbers into
GPU-hours.

`driver` runs a Ray Tune experiment on this machine with Pico's own searcher (Optuna, every
evaluation told as an intermediate value), results exporter and checkpoint settings (two
checkpoints kept per trial; `--num-to-keep` to compare others), but trials
that only report: every trial sends `--evals` results, each with a small checkpoint, as fast as
the driver takes them. It prints results per second and trials per second, the most a search's
driver processes whatever the cluster's size; the time of one results-file write at the end, when
the file is largest; and how many experiment-state snapshots Tune took and how long they took.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pico.errors import ArgumentParser, PicoError, run_cli

DEFAULT_CONFIGS = "kgram-e32-k3-gelu-l1,lstm-e64-h128-l1,tf-e64-l2-gelu,tf-e128-l4-silu"


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under `folder`."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def trial_cost(fields: dict[str, Any], data: Any) -> dict[str, Any]:
    """Train one config as a trial does, checkpointing at every evaluation; what it cost."""
    from pico.config import TrainConfig
    from pico.train import train

    cfg = TrainConfig(**fields).validate()
    evaluations: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pico-cost-") as tmp:
        checkpoint = Path(tmp) / "checkpoint"

        def on_eval(metrics: dict[str, Any], save) -> None:
            save(checkpoint)
            evaluations.append(metrics)

        start = time.perf_counter()
        train(cfg, data, on_eval=on_eval)
        wall_s = time.perf_counter() - start
        size = folder_bytes(checkpoint)
    last = evaluations[-1]
    return {
        "config": fields.get("name", cfg.arch),
        "n_params": last["n_params"],
        "trial_s": round(wall_s, 2),
        "step_ms": round(1000 * wall_s / cfg.max_steps, 2),
        "evaluations": len(evaluations),
        "checkpoint_bytes": size,
        "val_loss": round(last["val_loss"], 4),
    }


def measure_trials(args: Any) -> list[dict[str, Any]]:
    """`trials`: the cost of each named config, trained one after another."""
    import torch

    from pico.data import prepare_data
    from search_spaces import NAMED_CONFIGS

    names = [name.strip() for name in args.configs.split(",")]
    unknown = [name for name in names if name not in NAMED_CONFIGS]
    if unknown:
        raise PicoError(f"unknown config(s) {', '.join(unknown)}; see search_spaces/seed22.py")
    torch.set_num_threads(args.threads)
    data = prepare_data(args.corpus, args.tokenizer)
    shape = {"batch_size": args.batch_size, "block_size": args.block_size}
    fixed = {
        **{name: value for name, value in shape.items() if value is not None},
        "corpus": args.corpus,
        "tokenizer": args.tokenizer,
        "max_steps": args.max_steps,
        "eval_interval": args.eval_interval,
        "eval_tokens": args.eval_tokens,
        "device": args.device,
        "num_threads": args.threads,
    }
    return [{**trial_cost({**NAMED_CONFIGS[n], **fixed}, data), "config": n} for n in names]


def stub_trial(config: dict[str, Any]) -> None:
    """A trial that only reports: one result with a small checkpoint per evaluation."""
    from ray import tune

    from launch.results import METRIC_NAMES

    settings = config["_cost"]
    interval = settings["eval_interval"]
    for step in range(interval, settings["max_steps"] + 1, interval):
        metrics = dict.fromkeys(METRIC_NAMES, 1.0)
        metrics.update(step=step, val_loss=config["lr"] * 100 + 1 / step)
        with tempfile.TemporaryDirectory(prefix="pico-stub-") as tmp:
            (Path(tmp) / "state.bin").write_bytes(bytes(settings["checkpoint_bytes"]))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def measure_driver(args: Any) -> dict[str, Any]:
    """`driver`: results/s and trials/s through Pico's searcher, exporter and checkpointing."""
    import ray
    from ray import tune

    from launch.experiment import make_callbacks, make_scheduler, make_searcher
    from launch.settings import SearchSettings
    from pico.data import prepare_data

    with tempfile.TemporaryDirectory(prefix="pico-driver-") as tmp:
        settings = SearchSettings(
            space="tiny",
            name="driver-cost",
            storage=tmp,
            num_samples=args.trials,
            max_steps=args.evals * 10,
            eval_interval=10,
            scheduler="fifo",
            sampler="tpe",
            corpus="3seqs",
            tokenizer="char",
            max_concurrent=args.concurrent,
        )
        settings.save()
        data = prepare_data(settings.corpus, settings.tokenizer)
        ray.init(address="local", num_cpus=args.concurrent, include_dashboard=False)
        try:
            cost = {
                "eval_interval": 10,
                "max_steps": settings.max_steps,
                "checkpoint_bytes": args.checkpoint_bytes,
            }
            callbacks = make_callbacks(settings, data, command="cluster_costs driver")
            tuner = tune.Tuner(
                tune.with_resources(stub_trial, {"cpu": 1}),
                param_space={**settings.fixed_fields(), "_cost": cost},
                tune_config=tune.TuneConfig(
                    search_alg=make_searcher(settings),
                    scheduler=make_scheduler(settings),
                    num_samples=settings.num_samples,
                    max_concurrent_trials=settings.max_concurrent,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=settings.name,
                    storage_path=settings.storage,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=args.num_to_keep or None),
                    callbacks=callbacks,
                    verbose=0,
                ),
            )
            with SnapshotTimes() as snapshots:
                start = time.perf_counter()
                grid = tuner.fit()
                wall_s = time.perf_counter() - start
        finally:
            ray.shutdown()
        results = sum(len(r.metrics_dataframe) for r in grid)
        exporter = callbacks[0]
        write_start = time.perf_counter()
        exporter.table.write()
        write_s = time.perf_counter() - write_start
        state_bytes = sum(
            p.stat().st_size for p in Path(settings.experiment_path).glob("experiment_state-*.json")
        )
    return {
        "trials": args.trials,
        "num_to_keep": args.num_to_keep,
        "results": results,
        "wall_s": round(wall_s, 1),
        "results_per_s": round(results / wall_s, 1),
        "trials_per_s": round(args.trials / wall_s, 2),
        "results_file_write_ms": round(1000 * write_s, 1),
        "experiment_state_bytes": state_bytes,
        "snapshots": len(snapshots.seconds),
        "snapshot_ms_mean": round(1000 * sum(snapshots.seconds) / len(snapshots.seconds), 1),
        "snapshot_ms_last": round(1000 * snapshots.seconds[-1], 1),
    }


class SnapshotTimes(logging.Handler):
    """Collects the seconds of each experiment-state snapshot that Tune logs (at DEBUG level)."""

    LOGGER = "ray.tune.execution.experiment_state"
    PATTERN = re.compile(r"snapshotting took ([0-9.]+) seconds")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = self.PATTERN.search(record.getMessage())
        if match:
            self.seconds.append(float(match.group(1)))

    def __enter__(self) -> SnapshotTimes:
        logger = logging.getLogger(self.LOGGER)
        self._level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeHandler(self)
        logger.setLevel(self._level)


def main(argv: list[str] | None = None) -> int:
    """Print the measurements as one JSON object per line."""
    parser = ArgumentParser(prog="launch/cluster_costs.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    trials = sub.add_parser("trials", help="cost of one trial per named config")
    trials.add_argument("--configs", default=DEFAULT_CONFIGS, help="seed22 config names")
    trials.add_argument("--corpus", default="shakespeare")
    trials.add_argument("--tokenizer", default="bpe:4096")
    trials.add_argument("--max-steps", type=int, default=400)
    trials.add_argument("--eval-interval", type=int, default=50)
    trials.add_argument("--eval-tokens", type=int, default=4096)
    trials.add_argument("--batch-size", type=int, help="instead of the configs' (16)")
    trials.add_argument("--block-size", type=int, help="instead of the configs' (64)")
    trials.add_argument("--device", default="cpu", help="cpu | cuda")
    trials.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    driver = sub.add_parser("driver", help="results/s a search driver processes")
    driver.add_argument("--trials", type=int, default=200)
    driver.add_argument("--evals", type=int, default=8, help="results per trial")
    driver.add_argument("--concurrent", type=int, default=2, help="trials at once")
    driver.add_argument("--checkpoint-bytes", type=int, default=100_000)
    driver.add_argument(
        "--num-to-keep", type=int, default=2, help="checkpoints kept per trial, 0: all [2, as Pico]"
    )
    args = parser.parse_args(argv)
    rows = measure_trials(args) if args.what == "trials" else [measure_driver(args)]
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
