"""What to train with a given compute, from a ladder's results: `python launch/predict.py --help`.

    python launch/predict.py experiments/ladder/results.parquet --target-flops 1e15

For each architecture with enough converged runs (pico/ladder.py `recommend`): the
compute-optimal size and tokens, a config, and the predicted val loss with its 90% interval,
printed and written to `prediction-<target>.json` beside the results (or `--output`). Method,
assumptions and when not to trust it: docs/scaling_laws.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from pico.config import ARCHS
from pico.errors import ArgumentParser, PicoError, run_cli
from pico.files import check_output, write_atomic


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="launch/predict.py",
        description="Fit scaling laws to a ladder's results and say what to train with a "
        "target compute.",
    )
    p.add_argument("results", type=Path, help="results.parquet of a ladder run (--ladder)")
    p.add_argument(
        "--target-flops", type=float, required=True, help="training FLOPs to plan for, e.g. 1e15"
    )
    p.add_argument("--arch", choices=ARCHS, help="one architecture [every one with a ladder]")
    p.add_argument("--output", type=Path, help="JSON file [prediction-<target>.json beside]")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed [0]")
    return p


def default_output(results: Path, target_flops: float) -> Path:
    """`prediction-<target>.json` in the results file's folder."""
    return results.parent / f"prediction-{target_flops:.3g}.json"


def predictions(
    frame: pd.DataFrame, target_flops: float, archs: list[str], *, seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """`recommend` for each of `archs`: the predictions, and why each other one has none."""
    from pico.ladder import recommend

    done, failed = [], {}
    for arch in archs:
        try:
            done.append(recommend(frame, arch, target_flops, seed=seed))
        except PicoError as exc:
            failed[arch] = str(exc)
    return done, failed


def prediction_lines(prediction: dict[str, Any]) -> list[str]:
    """A few lines a person reads: size, tokens, config and loss, with intervals."""

    def interval(name: str, fmt: str) -> str:
        v = prediction[name]
        return f"{v['value']:{fmt}} [{v['low']:{fmt}}, {v['high']:{fmt}}]"

    c = prediction["config"]
    level = round(100 * prediction["level"])
    shape = f"d_model {c['d_model']}, n_layer {c['n_layer']}"
    if c["arch"] == "kv_transformer":
        shape += f", n_head {c['n_head']}, {c['parametrization']}"
    else:
        shape += f", hidden_size {c['hidden_size']}"
    lines = [
        f"{prediction['arch']} at {prediction['target_flops']:.3g} training FLOPs "
        f"({prediction['extrapolation']:.3g}x the ladder's largest budget):",
        f"  compute-optimal size {interval('n_params', '.3g')} parameters, "
        f"{interval('tokens', '.3g')} tokens ({level}% intervals)",
        f"  config: {shape}, {prediction['config_n_params']:.3g} parameters; lr {c['lr']:.3g} "
        f"({prediction['lr_source']}), batch {c['batch_size']} x {c['block_size']}, "
        f"{c['max_steps']} steps",
        f"  predicted val_loss {interval('val_loss', '.4f')} (one run: {level}%)",
    ]
    if not prediction["size_inside"]:
        low, high = prediction["sizes_run"]
        lines.append(
            f"  warning: the optimal size lies outside the sizes the ladder ran ({low:.3g} to "
            f"{high:.3g} parameters): add widths on that side before trusting it"
        )
    if prediction["extrapolation"] > 100:
        lines.append(
            "  warning: more than 100x beyond the largest budget run; small errors in the "
            "exponents grow with the distance (docs/scaling_laws.md)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Check every input, fit, print the predictions and write them as JSON."""
    args = build_parser().parse_args(argv)
    if not args.target_flops > 1:
        raise PicoError(
            f"--target-flops must be a number of FLOPs above 1, got {args.target_flops}"
        )
    if not args.results.is_file():
        raise PicoError(f"no results file at {args.results}: pass a ladder's results.parquet")
    output = args.output or default_output(args.results, args.target_flops)
    check_output(output, "--output", inputs=[args.results])
    if output.exists():
        raise PicoError(f"{output} already exists: choose another --output")
    try:
        frame = pd.read_parquet(args.results)
    except Exception as exc:  # pyarrow raises several kinds for a file that is not Parquet
        raise PicoError(f"cannot read {args.results} as a results file: {exc}") from None
    archs = [args.arch] if args.arch else [a for a in ARCHS if a in set(frame.get("arch", []))]
    done, failed = predictions(frame, args.target_flops, archs, seed=args.seed)
    if not done:
        raise PicoError(
            " ; ".join(f"{arch}: {why}" for arch, why in failed.items())
            or (f"{args.results} holds no runs of any architecture")
        )
    for prediction in done:
        print("\n".join(prediction_lines(prediction)))
    for arch, why in failed.items():
        print(f"{arch}: no prediction: {why}")
    write_atomic(output, json.dumps({"predictions": done, "not_predicted": failed}, indent=2))
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
