"""Bad input to analysis/report.py: one line on stderr, exit status 2, nothing clobbered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.synthetic import make_results

REPO = Path(__file__).resolve().parents[1]
OLD_REPORT = "<html>an earlier, good report</html>"


def run_report(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "analysis" / "report.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def rewrite(path: Path, change) -> Path:
    """Apply `change` to the rows of a results file, keeping its metadata."""
    table = pq.read_table(path)
    df = change(table.to_pandas())
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(
            table.schema.metadata
        ),
        path,
    )
    return path


def no_completed_trial(tmp: Path) -> Path:
    def fail_all(df):
        df["status"], df["val_loss"] = "errored", np.nan
        return df

    return rewrite(make_results(tmp / "r.parquet", n_trials=6), fail_all)


def nan_metrics(tmp: Path) -> Path:
    def nan_loss(df):
        df["val_loss"] = np.nan
        return df

    return rewrite(make_results(tmp / "r.parquet", n_trials=6), nan_loss)


def not_parquet(tmp: Path) -> Path:
    path = tmp / "r.parquet"
    path.write_text("trial_id,val_loss\na,1.0\n")
    return path


def missing_columns(tmp: Path) -> Path:
    path = tmp / "r.parquet"
    pq.write_table(pa.table({"trial_id": ["a"], "arch": ["lstm"], "val_loss": [1.0]}), path)
    return path


def empty(tmp: Path) -> Path:
    return rewrite(make_results(tmp / "r.parquet", n_trials=3), lambda df: df.iloc[:0])


CASES = {
    "missing file": (lambda tmp: tmp / "nowhere.parquet", [], "results file not found"),
    "not parquet": (not_parquet, [], "is not a readable Parquet file"),
    "missing columns": (missing_columns, [], "missing column(s) experiment, status, rung"),
    "no rows": (empty, [], "has no rows"),
    "no completed trial": (no_completed_trial, [], "no completed or early-stopped trial"),
    "NaN metrics": (nan_metrics, [], "finite val_loss"),
    "unknown objective": (
        lambda tmp: make_results(tmp / "r.parquet", n_trials=6),
        ["--objectives", "val_loss,size"],
        "size is not a numeric column",
    ),
    "unknown arch": (
        lambda tmp: make_results(tmp / "r.parquet", n_trials=6),
        ["--arch", "rnn"],
        "--arch rnn: not in",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path):
    make, flags, message = CASES[case]
    results = make(tmp_path)
    out = tmp_path / "report.html"
    out.write_text(OLD_REPORT)
    done = run_report(str(results), "--out", str(out), *flags, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert message in lines[0]
    # The earlier report survives and no temporary or PNG file is left behind.
    assert out.read_text() == OLD_REPORT
    assert {p.name for p in tmp_path.iterdir()} - {out.name, results.name} == set()


def test_bad_flag_is_one_line_and_exit_2(tmp_path):
    done = run_report("r.parquet", "--importance", "shap", cwd=tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "invalid choice" in done.stderr
