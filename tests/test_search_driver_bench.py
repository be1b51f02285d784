"""benchmarks/search_driver.py at a tiny size: it runs its sides and prints its figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_search_driver_benchmark_prints_every_side(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, str(REPO / "benchmarks" / "search_driver.py")]
    command += ["--trials", "3,6", "--repeats", "1", "--evals", "2", "--with-tune-default"]
    out = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    rows = {
        (m[1], int(m[2])): int(m[3])
        for m in (re.match(r"(tune|pico|tune-default)\s+(\d+)\s+(\d+)\s", line) for line in lines)
        if m
    }
    sides = ("tune", "pico", "tune-default")
    assert set(rows) == {(side, n) for side in sides for n in (3, 6)}
    for (_, n), results in rows.items():
        assert n <= results <= 2 * n  # at least one result per trial, at most --evals
    assert any(line.startswith("pico layer at 6 trials, us per result: searcher") for line in lines)
    assert any(line.startswith("per_result_cost_ratio_6_vs_3: ") for line in lines)
    for n in (3, 6):
        overhead = rf"pico overhead per result at {n} trials over 1 round\(s\): -?\d+\.\d{{3}}; "
        overhead += r"in driver CPU -?\d+\.\d{3} \(goal: at most 0\.10\)"
        assert any(re.fullmatch(overhead, line) for line in lines), lines
    assert re.fullmatch(r"search_driver_pico_overhead: -?\d+\.\d{3}", lines[-1])
    assert not list(tmp_path.iterdir())  # nothing left behind where it ran


def test_bad_flags_are_one_line():
    command = [sys.executable, str(REPO / "benchmarks" / "search_driver.py"), "--trials", "10,x"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: --trials takes positive integers separated by commas, got '10,x'"
    )
