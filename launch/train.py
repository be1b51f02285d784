"""Train one model: `python launch/train.py --help`. The logic lives in pico/cli/train.py."""

from __future__ import annotations

import sys
from pathlib import Path

from pico.cli.train import BaseRun, build_parser
from pico.cli.train import main as train_main
from pico.errors import PicoError, run_cli


def main(argv: list[str] | None = None) -> int:
    """Train from flags; `--from-results FILE --trial ID` starts from a search trial's config
    and refuses to train unless the data it prepares is the data the trial trained on."""
    parser = build_parser()
    parser.add_argument("--from-results", type=Path, help="results.parquet of a search")
    parser.add_argument("--trial", help="trial id in --from-results whose config to rerun")
    args, _ = parser.parse_known_args(argv)
    base = None
    if (args.from_results is None) != (args.trial is None):
        raise PicoError("--from-results and --trial go together: pass both or neither")
    if args.from_results is not None:
        from launch.results import load_trial_config, read_metadata

        base = BaseRun(
            cfg=load_trial_config(args.from_results, args.trial),
            source=f"trial {args.trial} of {args.from_results}",
            data_fingerprint=read_metadata(args.from_results).get("data_fingerprint"),
        )
    given = sys.argv[1:] if argv is None else argv
    return train_main(_without(given, ("--from-results", "--trial")), base=base)


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
