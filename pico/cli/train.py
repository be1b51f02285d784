"""`launch/train.py`: one training run from flags, a config file or a results file."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from pico.cli.config_flags import add_config_flags, config_overrides
from pico.config import MODEL_FIELDS, TrainConfig
from pico.errors import ArgumentParser, PicoError
from pico.files import check_output, is_run, write_atomic

# Fields a resumed run may change: they do not alter what has been computed so far.
RESUMABLE_CHANGES = ("max_steps", "eval_interval", "device", "num_threads", "compile")
DATA_FIELDS = ("corpus", "tokenizer", "max_docs")  # the fields prepare_data is given


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


def check_data(fingerprint: str, expected: str | None, source: str) -> None:
    """PicoError unless the prepared data is the data `source` trained on (None: unknown)."""
    if expected is not None and fingerprint != expected:
        raise PicoError(
            f"the data prepared for this run has fingerprint {fingerprint}, but {source} trained "
            f"on {expected}: the corpus or the tokenizer has changed since, so its run cannot be "
            "reproduced"
        )


def kept_metrics(path: Path, last_step: int) -> str:
    """The metrics log up to the checkpoint: the resumed run writes the records past it again."""
    if not path.exists():
        return ""
    kept = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            step = json.loads(line)["step"] if line else None
        except (json.JSONDecodeError, TypeError, KeyError):
            raise PicoError(f"{path} is damaged: line {number} is not a metrics record") from None
        if step is not None and step <= last_step:
            kept.append(line + "\n")
    return "".join(kept)


def check_new_run(out: Path) -> None:
    """PicoError unless a new run can be written to `out` without touching another run."""
    check_output(out, "--out", folder=True)
    if out.is_dir() and is_run(out):
        raise PicoError(
            f"{out} already holds a run: pass --resume to continue it, or choose another --out"
        )
    for parent in out.resolve().parents:
        if is_run(parent):
            raise PicoError(f"--out {out} lies inside the run {parent}: choose another --out")


@dataclass(frozen=True)
class BaseRun:
    """A run to start from (a search trial): its config, and the data it trained on, which a
    rerun must train on too."""

    cfg: TrainConfig
    source: str  # what it is, for messages: "trial 00003 of results.parquet"
    data_fingerprint: str | None  # None: unknown, not checked


def main(argv: list[str] | None = None, base: BaseRun | None = None) -> int:
    """Run the train command; returns the exit status (1 if the run diverged)."""
    from pico.checkpoint import read_meta
    from pico.data import prepare_data
    from pico.train import check_split_fits, resolve_device, train

    args = build_parser().parse_args(argv)
    out: Path = args.out or Path("runs") / "train"
    if args.resume:
        if not (out / "checkpoint").is_dir():
            raise PicoError(f"nothing to resume: {out} holds no checkpoint (check --out)")
        cfg = resume_config(args, out)
        meta = read_meta(out / "checkpoint")
        source, expected = f"the checkpoint in {out}", meta.get("data_fingerprint")
        kept = kept_metrics(out / "metrics.jsonl", int(meta["step"]))
    else:
        check_new_run(out)
        cfg = resolve_config(args, base.cfg if base else None)
        source, expected = "", None
        # Other data settings than the base run's ask for other data: nothing to match.
        if base is not None and all(getattr(cfg, f) == getattr(base.cfg, f) for f in DATA_FIELDS):
            source, expected = base.source, base.data_fingerprint
    resolve_device(cfg.device)
    data = prepare_data(cfg.corpus, cfg.tokenizer, cache_dir=args.cache_dir, max_docs=cfg.max_docs)
    check_data(data.fingerprint, expected, source)
    check_split_fits(len(data.train), cfg)
    if args.resume:
        write_atomic(out / "metrics.jsonl", kept)
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
