"""Measure what sizes a cluster search: the cost of one trial.

    python launch/cluster_costs.py trials [--configs tf-e128-l4-silu,...] [--device cuda]

`trials` trains seed22 configs one after another as a search trial would (same loop, an
evaluation and a checkpoint every `--eval-interval` steps) and prints, per config, the wall
seconds of the whole trial, the seconds per optimizer step, the evaluations and the bytes of one
checkpoint. Run it on one worker of the cluster you plan: docs/scaling.md turns the numbers into
GPU-hours.

The driver's cost per result is measured by `benchmarks/search_driver.py` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
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
    args = parser.parse_args(argv)
    for row in measure_trials(args):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
