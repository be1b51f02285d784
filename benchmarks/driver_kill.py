"""Kill the search driver at random moments and check that the resumed search loses nothing.

Each round starts a new tiny search (`launch/search.py`, as a user runs it), SIGKILLs the driver
and everything it started at a random moment of the search, resumes it with `--resume` from
another working directory, lets it finish, and checks the experiment:

  * the study holds exactly `--num-samples` trials, none of them still running;
  * the results file has each of them once, each step once, with the study's status;
  * `--export` rebuilds exactly the same file from the study and the trial folders.

The moments are drawn uniformly over the length of an uninterrupted search of the same settings
(timed first), so they fall before Ray is up, between trials, during evaluations and checkpoint
writes, and at the end. The last line is `driver_kill_consistent: K/N`, the rounds that passed.

    python benchmarks/driver_kill.py [--rounds 20] [--seed 0] [--num-samples 6]
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

from launch.study import STUDY_FILE, SearchStudy  # noqa: E402
from pico.errors import ArgumentParser, run_cli  # noqa: E402

TINY = [
    "--space", "tiny", "--corpus", "3seqs", "--tokenizer", "char", "--max-steps", "200",
    "--eval-interval", "20", "--eval-tokens", "256", "--grace-period", "20", "--no-dashboard",
    "-q", "--no-confirm",
]  # fmt: skip


def search(args: list[str], cwd: Path) -> subprocess.Popen:
    """Start the search command in its own process group (so that a kill takes Ray with it)."""
    command = [sys.executable, str(REPO / "launch" / "search.py"), *args]
    return subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the driver and every process of its group (its local Ray) at once, as when its
    machine is lost."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def check(storage: Path, name: str, samples: int, cwd: Path) -> list[str]:
    """What is wrong with a finished experiment (nothing: an empty list)."""
    study = SearchStudy.load(str(storage / name / STUDY_FILE), name).study
    told = {f"{t.number:05d}": t.user_attrs.get("status") for t in study.trials}
    problems = []
    if len(told) != samples or "running" in told.values() or None in told.values():
        problems.append(f"study holds {told}")
    df = pd.read_parquet(storage / name / "results.parquet")
    if df.duplicated(["trial_id", "step"]).any():
        problems.append("a step appears twice")
    last = df[df.is_last].set_index("trial_id")
    if not last.index.is_unique or last.status.to_dict() != told:
        problems.append(f"results {last.status.to_dict()} != study {told}")
    rebuilt = cwd / "rebuilt.parquet"
    export = subprocess.run(
        [sys.executable, str(REPO / "launch" / "search.py"), "--storage", str(storage),
         "--name", name, "--export", "--output", str(rebuilt)],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if export.returncode != 0 or not pd.read_parquet(rebuilt).equals(df):
        problems.append(f"--export differs from the live file: {export.stderr.strip()[-300:]}")
    return problems


def one_round(index: int, delay_s: float, args, root: Path) -> list[str]:
    """A search killed after `delay_s` seconds, then resumed to its end; its problems."""
    storage, name = root / "storage", f"round{index}"
    first, second = root / f"cwd{index}a", root / f"cwd{index}b"
    first.mkdir()
    second.mkdir()
    where = ["--storage", str(storage), "--name", name]
    process = search([*where, "--num-samples", str(args.num_samples), *TINY], first)
    try:
        process.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        kill_group(process)
    if not (storage / name / "experiment.json").exists():
        # Killed before the experiment existed: nothing to resume, start it again.
        process = search([*where, "--num-samples", str(args.num_samples), *TINY], second)
    else:
        process = search([*where, "--resume"], second)
    out, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        return [f"resume exited {process.returncode}: {out.strip()[-500:]}"]
    return check(storage, name, args.num_samples, second)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds; print one line per round and the headline."""
    p = ArgumentParser(prog="benchmarks/driver_kill.py", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20, help="searches killed and resumed [20]")
    p.add_argument("--num-samples", type=int, default=6, help="trials per search [6]")
    p.add_argument("--seed", type=int, default=0, help="draws the kill moments [0]")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="pico-kill-") as tmp:
        root = Path(tmp)
        (root / "ref").mkdir()
        start = time.monotonic()
        reference = search(
            ["--storage", str(root / "ref"), "--name", "ref", "--num-samples",
             str(args.num_samples), *TINY], root / "ref",
        )  # fmt: skip
        reference.communicate(timeout=600)
        length = time.monotonic() - start
        print(f"an uninterrupted search takes {length:.1f} s; killing at random moments in it")
        passed = 0
        for index in range(args.rounds):
            delay = rng.uniform(0, length)
            problems = one_round(index, delay, args, root)
            passed += not problems
            verdict = "ok" if not problems else "FAILED: " + "; ".join(problems)
            print(
                f"round {index + 1}/{args.rounds}: killed at {delay:5.1f} s, {verdict}", flush=True
            )
    print(f"driver_kill_consistent: {passed}/{args.rounds}")
    return 0 if passed == args.rounds else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
