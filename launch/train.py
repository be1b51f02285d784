"""Train one model: `python launch/train.py --help`. The logic lives in pico/cli/train.py."""

from __future__ import annotations

import sys
from pathlib import Path

from pico.cli.train import BaseRun, build_parser
from pico.cli.train import main as train_main
from pico.errors import PicoError, run_cli


def main(argv: list[str] | None = None) -> int:
    """Train from flags; `--from-results FILE --trial ID` starts from a search trial's config
    and refuses to train unless the data it prepares is the data the trial trained on.
    `--width N` trains a muP trial's config at d_model N instead (TrainConfig.widen)."""
    parser = build_parser()
    parser.add_argument("--from-results", type=Path, help="results.parquet of a search")
    parser.add_argument("--trial", help="trial id in --from-results whose config to rerun")
    parser.add_argument(
        "--width",
        type=int,
        help="with --from-results: train the muP trial at this d_model, its tuned settings, "
        "base width and head count kept (docs/mup.md)",
    )
    args, _ = parser.parse_known_args(argv)
    base = None
    if (args.from_results is None) != (args.trial is None):
        raise PicoError("--from-results and --trial go together: pass both or neither")
    if args.width is not None:
        if args.from_results is None:
            raise PicoError(
                "--width widens a search trial: pass it with --from-results and --trial"
            )
        if args.d_model is not None:
            raise PicoError("--width sets d_model: pass one of --width and --d-model")
        if args.resume:
            raise PicoError("--width starts a new run: it cannot be combined with --resume")
    if args.from_results is not None:
        from launch.results import load_trial_config, read_metadata

        cfg = load_trial_config(args.from_results, args.trial)
        source = f"trial {args.trial} of {args.from_results}"
        if args.width is not None:
            if cfg.parametrization != "mup":
                raise PicoError(
                    f"{source} used the {cfg.parametrization} parametrization, whose tuned "
                    "settings do not carry over to another width: --width needs a muP trial "
                    "(a search with parametrization 'mup')"
                )
            cfg = cfg.widen(args.width)
            source += f" (widened to d_model {args.width})"
        base = BaseRun(
            cfg=cfg,
            source=source,
            data_fingerprint=read_metadata(args.from_results).get("data_fingerprint"),
        )
    given = sys.argv[1:] if argv is None else argv
    return train_main(_without(given, ("--from-results", "--trial", "--width")), base=base)


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """argv minus the given flags and their values (both `--f v` and `--f=v`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif not arg.startswith(tuple(f + "=" for f in flags)):
            out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main))
