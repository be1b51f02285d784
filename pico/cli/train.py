"""`launch/train.py`: one training run from flags, a config file or a results file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pico.cli.config_flags import add_config_flags, config_overrides
from pico.config import MODEL_FIELDS, TrainConfig
from pico.errors import ArgumentParser, PicoError

# Fields a resumed run may change: they do not alter what has been computed so far.
RESUMABLE_CHANGES = ("max_steps", "eval_interval", "device", "num_threads", "compile")


def build_parser() -> ArgumentParser:
    """The train command's flags: run options, then every hyperparameter."""
    parser = ArgumentParser(
        prog="launch/train.py",
        description="Train one Pico language model and evaluate it on held-out data.",
        epilog="Example: python launch/train.py --arch lstm --d-model 128 --max-steps 500",
    )
    parser.add_argument("--config", type=Path, help="JSON file of TrainConfig fields")
    parser.add_argument(
        "--out", type=Path, help="run folder: metrics.jsonl, checkpoint/, summary.json"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--cache-dir", type=Path, help="prepared-data cache [$PICO_CACHE]")
    parser.add_argument("--max-docs", type=int, help="cap on documents read (tinystories)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_config_flags(parser)
    return parser


def resolve_config(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """Defaults < base (a results file) < --config file < explicit flags; then validate."""
    cfg = base or TrainConfig()
    if args.config is not None:
        cfg = TrainConfig.from_file(args.config)
    return cfg.replace(**config_overrides(args)).validate()


def resume_config(args: argparse.Namespace, out: Path) -> TrainConfig:
    """The checkpointed run's config, with only the changes a resume allows."""
    from pico.checkpoint import load_checkpoint

    saved = load_checkpoint(out / "checkpoint").cfg
    for name, value in config_overrides(args).items():
        if getattr(saved, name) == value or name in RESUMABLE_CHANGES:
            continue
        what = "architecture" if name == "arch" else "model" if name in MODEL_FIELDS else "run"
        raise PicoError(
            f"the checkpoint in {out} has {name}={getattr(saved, name)!r}; a resumed run cannot "
            f"change its {what} to {value!r} (start a new run with another --out)"
        )
    changes = {k: v for k, v in config_overrides(args).items() if k in RESUMABLE_CHANGES}
    return saved.replace(**changes).validate()


def load_checkpoint_step(folder: Path) -> int:
    """The optimizer step a checkpoint was taken at."""
    return int(json.loads((folder / "meta.json").read_text())["step"])


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop records past the checkpoint: the resumed run writes them again."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line and json.loads(line)["step"] <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def main(argv: list[str] | None = None, base: TrainConfig | None = None) -> int:
    """Run the train command; returns the exit status (1 if the run diverged)."""
    from pico.data import prepare_data
    from pico.train import train

    args = build_parser().parse_args(argv)
    if args.max_docs is not None and args.max_docs < 1:
        raise PicoError(f"--max-docs must be positive, got {args.max_docs}")
    out: Path = args.out or Path("runs") / "train"
    if args.resume:
        if not (out / "checkpoint").is_dir():
            raise PicoError(f"nothing to resume: {out} holds no checkpoint (check --out)")
        cfg = resume_config(args, out)
        trim_metrics(out / "metrics.jsonl", load_checkpoint_step(out / "checkpoint"))
    else:
        if (out / "metrics.jsonl").exists():
            raise PicoError(
                f"{out} already holds a run: pass --resume to continue it, or choose another --out"
            )
        cfg = resolve_config(args, base)
    data = prepare_data(cfg.corpus, cfg.tokenizer, cache_dir=args.cache_dir, max_docs=args.max_docs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    print(f"training {cfg.arch} ({cfg.fingerprint()}) on {cfg.corpus} / {cfg.tokenizer} -> {out}")
    result = train(
        cfg,
        data,
        out_dir=out,
        resume_from=out / "checkpoint" if args.resume else None,
        progress=not args.quiet,
    )
    summary = {"status": result.status, "fingerprint": cfg.fingerprint(), **result.metrics}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if result.status == "diverged":
        step = result.metrics.get("step")
        print(f"run diverged at step {step}: lower --lr or raise --warmup-steps")
        return 1
    return 0
