"""Turn one results file into one offline HTML report: `python analysis/report.py --help`.

Reads nothing but the Parquet file (docs/results.md). The logic lives in the `analysis` package;
this file only parses flags, prints progress and maps bad input to one line and exit status 2.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from analysis.build import Options, write_report
from analysis.importance import METHODS, check_method
from analysis.load import Results, load_results
from analysis.pareto import directions
from pico.errors import ArgumentParser, PicoError, run_cli
from pico.files import check_output


def build_parser() -> ArgumentParser:
    """The command line's flags."""
    parser = ArgumentParser(
        prog="report.py",
        description="Write a self-contained HTML report (plus PNGs) of one Pico results file.",
    )
    parser.add_argument("results", type=Path, help="results.parquet written by launch/search.py")
    parser.add_argument(
        "--out", type=Path, help="HTML file to write (default: report.html beside the results)"
    )
    parser.add_argument(
        "--png-dir", type=Path, help="folder for the PNGs (default: <out stem>_png beside --out)"
    )
    parser.add_argument(
        "--objectives",
        default="val_loss,n_params",
        help="comma-separated columns for the Pareto table, each optionally :min or :max "
        "(default: val_loss,n_params; directions from the file's metadata otherwise)",
    )
    parser.add_argument("--arch", help="comma-separated architectures to keep (default: all)")
    parser.add_argument(
        "--top", type=int, default=20, help="best trials per arch in parallel coordinates"
    )
    parser.add_argument(
        "--importance",
        choices=sorted(METHODS),
        default="ped-anova",
        help="Optuna importance evaluator (default: ped-anova; fanova needs scikit-learn)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, load the results file and write the report."""
    args = build_parser().parse_args(argv)
    if args.top < 1:
        raise PicoError(f"--top must be a positive integer, got {args.top}")
    check_method(args.importance)
    out = args.out or args.results.parent / "report.html"
    png_dir = args.png_dir or out.parent / f"{out.stem}_png"
    check_output(out, "--out", inputs=[args.results])
    check_output(png_dir, "--png-dir", inputs=[args.results], folder=True)
    log = _progress()
    archs = [a.strip() for a in args.arch.split(",") if a.strip()] if args.arch else None
    results = load_results(args.results, archs)
    objectives, maximize = parse_objectives(args.objectives, results)
    # Only now, with every input checked, does anything print.
    log(f"read {args.results}: {len(results.trials)} trials, {len(results.curves)} evaluations")
    options = Options(objectives, maximize, args.top, args.importance)
    write_report(results, options, out, png_dir, log)
    log("done")
    return 0


def parse_objectives(text: str, results: Results) -> tuple[list[str], list[bool]]:
    """`val_loss,n_params:min` -> names and whether to maximise each; checks the columns exist."""
    names, explicit = [], {}
    for item in (s.strip() for s in text.split(",")):
        name, _, direction = item.partition(":")
        if direction not in ("", "min", "max"):
            raise PicoError(f"--objectives {item}: the direction must be :min or :max")
        if name == "val_loss" and results.loss != "val_loss":
            name = results.loss  # the file mixes corpora or tokenizers: bits per byte (see notes)
        names.append(name)
        if direction:
            explicit[name] = "maximize" if direction == "max" else "minimize"
    if len(names) < 2 or len(set(names)) != len(names):
        raise PicoError(f"--objectives needs two or more different columns, got {text!r}")
    numeric = [c for c in results.points.columns if results.points[c].dtype.kind in "iuf"]
    unknown = [n for n in names if n not in numeric]
    if unknown:
        raise PicoError(
            f"--objectives: {', '.join(unknown)} is not a numeric column; "
            f"choose from {', '.join(c for c in numeric if not c.startswith('hp_'))}"
        )
    declared = {
        o.get("name"): o.get("direction")
        for o in results.meta.get("objectives", [])
        if isinstance(o, dict)
    }
    return names, directions(names, declared | explicit)


def _progress() -> Callable[[str], None]:
    """A logger that prints each step with the seconds since start, as it happens."""
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:5.1f}s] {message}", flush=True)

    return log


if __name__ == "__main__":
    sys.exit(run_cli(main))
