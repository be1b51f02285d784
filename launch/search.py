"""Hyperparameter search with Ray Tune, Optuna and ASHA: `python launch/search.py --help`.

    python launch/search.py --space kv_transformer          # a local search, ~5 minutes on 2 CPUs
    python launch/search.py --name demo --resume            # continue an interrupted one
    python launch/search.py --address head:6379 --gpus-per-trial 0.25 --num-samples 200
    python launch/search.py --name demo --export            # rebuild results.parquet from storage
    python launch/search.py --space kv_transformer --ladder 1e12,3e12,1e13 --target-flops 1e15

The logic lives in launch/experiment.py; this file only turns flags into `SearchSettings`.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from argparse import ArgumentTypeError
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.exposure import check_aws_keys, prepare_environment
from launch.predict import default_output
from launch.predict import main as predict_main
from launch.settings import (
    OBJECTIVES,
    SAMPLERS,
    SCHEDULERS,
    WANDB_MODES,
    SearchSettings,
    check_inputs,
)
from launch.storage import MANIFEST
from pico.errors import ArgumentParser, PicoError, run_cli
from search_spaces import SPACES

# Flags that a resumed search may change: they do not alter what the experiment computes.
RESUME_FLAGS = {"name", "storage", "resume", "export", "address", "verbose", "quiet", "dashboard"}
# ... and these add a confirmation stage to a search, or enlarge it.
CONFIRM_FLAGS = {"confirm_top", "confirm_seeds"}
EXIT_INTERRUPTED = 130


def build_parser() -> ArgumentParser:
    """Every flag of the search command; settings flags default to None (= not given)."""
    d = SearchSettings()
    p = ArgumentParser(
        prog="launch/search.py",
        description="Search hyperparameters of small language models with Ray Tune + Optuna.",
    )
    p.add_argument("--space", help=f"search space: {' | '.join(SPACES)} [{d.space}]")
    p.add_argument("--num-samples", type=int, help="trials [16; 22 for seed22]")
    p.add_argument("--max-steps", type=int, help=f"optimizer steps per full trial [{d.max_steps}]")
    p.add_argument(
        "--eval-interval", type=int, help=f"steps between evaluations [{d.eval_interval}]"
    )
    p.add_argument("--eval-tokens", type=int, help=f"validation targets scored [{d.eval_tokens}]")
    p.add_argument(
        "--time-budget", type=float, dest="time_budget_s", help="seconds for the whole search"
    )
    p.add_argument(
        "--compute-budget", type=float, help="training FLOPs for the whole search, e.g. 2e14"
    )
    p.add_argument("--sampler", help=f"{' | '.join(SAMPLERS)} [{d.sampler}]")
    p.add_argument("--objectives", help=f"comma-separated: {', '.join(OBJECTIVES)} [val_loss]")
    p.add_argument("--scheduler", help=f"{' | '.join(SCHEDULERS)} [asha; fifo for seed22]")
    p.add_argument(
        "--grace-period", type=int, help=f"ASHA: steps before a first stop [{d.grace_period}]"
    )
    p.add_argument(
        "--reduction-factor", type=float, help=f"ASHA: keep 1/rf per rung [{d.reduction_factor:g}]"
    )
    p.add_argument(
        "--warm-start",
        action="store_true",
        default=None,
        help="enqueue the seed22 configs that fit the space first",
    )
    p.add_argument("--seed", type=int, help=f"sampler and training seed [{d.seed}]")
    p.add_argument("--name", help="experiment name [<space>-<date>-<time>]")
    p.add_argument("--storage", help=f"experiments folder or URI [{d.storage}]")
    p.add_argument("--output", help="results Parquet file [<storage>/<name>/results.parquet]")
    p.add_argument(
        "--optuna-storage",
        help="the study's database, e.g. postgresql://USER@HOST/DB, or a journal file path "
        "[<storage>/<name>/study.journal]",
    )
    p.add_argument("--corpus", help=f"training corpus [{d.corpus}]")
    p.add_argument("--tokenizer", help=f"tokenizer spec [{d.tokenizer}]")
    p.add_argument("--max-docs", type=int, help="documents of the corpus to read [all]")
    p.add_argument("--cache-dir", help="prepared-data cache [$PICO_CACHE]")
    p.add_argument("--address", help="existing Ray cluster: host:port, ray://host:port or auto")
    p.add_argument(
        "--cpus-per-trial",
        type=float,
        help=f"CPUs (torch threads) per trial [{d.cpus_per_trial:g}]",
    )
    p.add_argument("--gpus-per-trial", type=float, help="GPU share per trial, e.g. 0.25 [0]")
    p.add_argument("--max-concurrent", type=int, help=f"trials at once [{d.max_concurrent}]")
    p.add_argument(
        "--max-failures", type=int, help=f"retries of a failing trial [{d.max_failures}]"
    )
    p.add_argument(
        "--confirm-top",
        type=int,
        help="after the search, rerun the best K trials of each architecture with fresh seeds "
        f"[{d.confirm_top}]",
    )
    p.add_argument(
        "--confirm-seeds",
        type=int,
        help=f"seeds per confirmed config, shared by all configs [{d.confirm_seeds}]",
    )
    p.add_argument(
        "--no-confirm",
        action="store_true",
        help="no confirmation stage (the same as --confirm-top 0 --confirm-seeds 0)",
    )
    p.add_argument(
        "--ladder",
        type=numbers(float),
        help="run an IsoFLOP ladder instead of a search: training-FLOP budgets, e.g. "
        "1e12,3e12,1e13, each trained at every --ladder-widths (launch/ladder.py)",
    )
    p.add_argument(
        "--ladder-widths",
        type=numbers(int),
        help=f"ladder: d_model of each size [{','.join(map(str, d.ladder_widths))}]",
    )
    p.add_argument(
        "--ladder-lrs",
        type=numbers(float),
        help="ladder: learning rates tried at each size [Transformer (muP): 3e-3; others: "
        "1.5e-3,3e-3,6e-3]",
    )
    p.add_argument(
        "--target-flops",
        type=float,
        help="after a ladder: fit scaling laws and print the config to train with this many "
        "training FLOPs and its predicted loss (launch/predict.py)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue experiment --name after an interrupt or crash, from any machine",
    )
    p.add_argument(
        "--export",
        action="store_true",
        help="rebuild experiment --name's results file from its study and trial folders, and exit",
    )
    p.add_argument("--wandb", help=f"{' | '.join(WANDB_MODES)} [off]")
    p.add_argument(
        "--no-dashboard",
        dest="dashboard",
        action="store_false",
        help="do not start Ray's dashboard",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="run optuna-dashboard on the study (127.0.0.1) while the search runs",
    )
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="only the final summary")
    loud.add_argument("-v", "--verbose", action="store_true", help="per-trial results and Ray logs")
    return p


def numbers(kind: type) -> Any:
    """An argparse type: a comma-separated list of `kind` numbers."""

    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",")]
        except ValueError:
            raise ArgumentTypeError(
                f"{text!r} is not a comma-separated list of {kind.__name__} numbers"
            ) from None

    return parse


def given_settings(args) -> dict:
    """The SearchSettings fields that were set on the command line."""
    names = {f.name for f in dataclasses.fields(SearchSettings)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.no_confirm:
        if "confirm_top" in values or "confirm_seeds" in values:
            raise PicoError("--no-confirm and --confirm-top/--confirm-seeds contradict: pass one")
        values.update(confirm_top=0, confirm_seeds=0)
    if "objectives" in values:
        values["objectives"] = [name.strip() for name in values["objectives"].split(",")]
    if "storage" in values and "://" not in values["storage"]:
        values["storage"] = str(Path(values["storage"]).resolve())
    if "output" in values:
        values["output"] = str(Path(values["output"]).resolve())
    if "optuna_storage" in values and "://" not in values["optuna_storage"]:  # a journal file
        values["optuna_storage"] = str(Path(values["optuna_storage"]).resolve())
    return values


def new_settings(given: dict) -> SearchSettings:
    """Settings of a new experiment: the flags given, and defaults that suit the space."""
    space = given.get("space", SearchSettings.space)
    fixed_sweep = space == "seed22"
    if fixed_sweep and given.get("warm_start"):
        raise PicoError("--warm-start enqueues the seed22 configs; --space seed22 runs only them")
    if given.get("scheduler") == "fifo" and {"grace_period", "reduction_factor"} & set(given):
        raise PicoError(
            "--grace-period and --reduction-factor are ASHA settings: drop --scheduler fifo"
        )
    ladder = given.get("ladder") is not None
    if ladder and "num_samples" in given:
        raise PicoError("a ladder runs budgets x widths x learning rates: drop --num-samples")
    if not ladder and {"ladder_widths", "ladder_lrs"} & set(given):
        raise PicoError("--ladder-widths and --ladder-lrs shape a ladder: pass --ladder too")
    defaults = {
        "name": f"{'ladder-' if ladder else ''}{space}-{time.strftime('%Y%m%d-%H%M%S')}",
        "storage": str(Path(SearchSettings.storage).resolve()),
        "num_samples": 22 if fixed_sweep else SearchSettings.num_samples,
        "scheduler": "fifo" if fixed_sweep or ladder else SearchSettings.scheduler,
    }
    if ladder:  # its runs are measured once each: a fit, not a winner to confirm
        defaults.update(confirm_top=0, confirm_seeds=0)
    return SearchSettings(**{**defaults, **given})


def resumed_settings(given: dict, allowed: set[str] = RESUME_FLAGS) -> SearchSettings:
    """The settings experiment --name was started with, read from its study; any flag given
    that is not in `allowed` must agree with them."""
    from launch.study import SearchStudy, without_password

    if "name" not in given:
        flag = "--export" if "output" in allowed else "--resume"
        raise PicoError(f"{flag} needs --name: the experiment to continue")
    probe = new_settings({k: v for k, v in given.items() if k in ("name", "storage")})
    try:
        manifest = probe.store().read_manifest()
    except (json.JSONDecodeError, UnicodeDecodeError):  # ValueErrors both: caught first
        raise PicoError(f"{probe.store().uri(MANIFEST)} is damaged: not JSON") from None
    except (OSError, ValueError) as exc:  # pyarrow: unknown scheme, no credentials, ...
        raise PicoError(f"cannot use storage {probe.storage}: {exc}") from None
    if manifest is None:
        raise PicoError(f"nothing to resume: no experiment {probe.name!r} in {probe.storage}")
    if not isinstance(manifest, dict):
        raise PicoError(
            f"{probe.store().uri(MANIFEST)} is damaged: not a JSON object (restore it from a "
            "backup, or start a new experiment)"
        )
    url = given.get("optuna_storage") or manifest.get("study") or probe.study_location
    if url is None:
        raise PicoError(f"the manifest of {probe.name!r} names no study: pass --optuna-storage")
    study = SearchStudy.load(url, probe.name)
    # The same storage, wherever it is mounted now.
    saved = SearchSettings.from_dict({**study.settings, "optuna_storage": url})
    saved.storage = probe.storage
    for key, value in given.items():
        if key == "optuna_storage":
            value, stored = without_password(value), study.settings.get(key)
            if stored is not None and value != stored:
                raise PicoError(
                    f"conflicting flags: experiment {saved.name!r} keeps its study in a "
                    "different --optuna-storage"
                )
        elif key in allowed:
            setattr(saved, key, value)
        elif getattr(saved, key) != value:
            flag = "--" + key.replace("_", "-")
            raise PicoError(
                f"conflicting flags: experiment {saved.name!r} was started with {flag} "
                f"{getattr(saved, key)!r}, not {value!r}; --resume continues it unchanged"
            )
    return saved


def export_results(settings: SearchSettings) -> int:
    """`--export`: rebuild the results file from the study and the trial folders alone."""
    from launch.export import export
    from launch.study import SearchStudy

    study = SearchStudy.load(settings.study_location, settings.name)
    table = export(study, settings.store(), settings.results_path)
    print(f"{len(table.trials)} trials written to {settings.results_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the search command; 0 when done, 130 when interrupted (resume with --resume)."""
    args = build_parser().parse_args(argv)
    given = given_settings(args)
    if args.resume and args.export:
        raise PicoError("--resume and --export do different things: pass one of them")
    if args.export:
        settings = resumed_settings(given, RESUME_FLAGS | {"output"})
        if settings.output and Path(settings.output).exists():
            raise PicoError(f"{settings.output} already exists: choose another --output")
        return export_results(settings)
    settings = (
        resumed_settings(given, RESUME_FLAGS | CONFIRM_FLAGS)
        if args.resume
        else new_settings(given)
    )
    if args.target_flops is not None:
        if not settings.ladder:
            raise PicoError("--target-flops predicts from a ladder's runs: pass --ladder")
        if not args.target_flops > 1:
            raise PicoError(f"--target-flops must be above 1 FLOP, got {args.target_flops}")
        if "://" in settings.results_path:
            raise PicoError(
                "--target-flops writes beside a local results file: drop it, and run "
                "launch/predict.py on a copy of the results when the ladder ends"
            )
        prediction = default_output(Path(settings.results_path), args.target_flops)
        if prediction.exists():
            raise PicoError(f"{prediction} already exists: run launch/predict.py --output")
    # Bad input fails here, in about a second, before Ray and torch are imported.
    check_aws_keys(args.address)
    check_inputs(settings, resume=args.resume, address=args.address)
    if args.address and not settings.is_remote:
        print(
            f"note: trials on other nodes write their folders to {settings.storage} there: it "
            "must be a shared file system (or pass --storage s3://...) for retries and --resume",
            file=sys.stderr,
        )
    with prepare_environment(args.address):  # before Ray is imported: Ray reads it once
        from launch.experiment import run_search
        from launch.study import redact
        from launch.summary import summary_lines

        verbosity = 0 if args.quiet else 2 if args.verbose else 1
        words = sys.argv[1:] if argv is None else argv
        command = shlex.join(["python", "launch/search.py", *map(redact, words)])
        outcome = run_search(
            settings,
            resume=args.resume,
            verbosity=verbosity,
            address=args.address,
            command=command,
            dashboard=args.dashboard,
            live=args.live,
        )
    print("\n".join(summary_lines(settings, outcome.table)))
    if outcome.ended and outcome.unfinished:
        print(
            f"the budget ended the search with {outcome.unfinished} trial(s) not run to their end"
        )
    elif not outcome.ended:
        print(
            f"interrupted with {outcome.unfinished} trial(s) unfinished; continue with: python "
            f"launch/search.py --name {settings.name} --storage {settings.storage} --resume"
        )
        return EXIT_INTERRUPTED
    if args.target_flops is not None:
        predict_main([settings.results_path, "--target-flops", str(args.target_flops)])
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
