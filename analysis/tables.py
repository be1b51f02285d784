"""The report's tables, as small DataFrames rendered to escaped HTML."""

from __future__ import annotations

import html
import json
import math
import shlex
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import label

MAX_TABLE_ROWS = 200
TRAIN_COMMAND = "python launch/train.py --from-results {file} --trial {trial}"


def html_table(df: pd.DataFrame, caption: str = "", max_rows: int = MAX_TABLE_ROWS) -> str:
    """An HTML table of `df` (every cell escaped); longer tables are cut and say so."""
    note = ""
    if len(df) > max_rows:
        note = f" (the first {max_rows} of {len(df)} rows)"
        df = df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    cap = f"<caption>{html.escape(caption + note)}</caption>" if caption or note else ""
    return (
        f'<table class="pico-table">{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def fmt(value: Any) -> str:
    """A compact, readable rendering of one cell."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def config_text(row: pd.Series, hparams: list[str]) -> str:
    """`name=value` for each hyperparameter this trial has (null ones: not used by its arch)."""
    return ", ".join(f"{label(c)}={fmt(row[c])}" for c in hparams if not pd.isna(row[c]))


def reproduce_command(results_file: str, trial_id: str) -> str:
    """The command that retrains one trial from the results file."""
    return TRAIN_COMMAND.format(file=shlex.quote(results_file), trial=shlex.quote(str(trial_id)))


def best_configs(
    points: pd.DataFrame, loss: str, hparams: list[str], results_file: str
) -> pd.DataFrame:
    """The best trial of each architecture by `loss`, its config and how to reproduce it."""
    best = points.loc[points.groupby("arch")[loss].idxmin()].sort_values(loss)
    return pd.DataFrame(
        {
            "arch": best["arch"],
            "trial": best["trial_id"],
            "status": best["status"],
            loss: best[loss],
            "token_accuracy": best["token_accuracy"],
            "n_params": best["n_params"],
            "config": [config_text(row, hparams) for _, row in best.iterrows()],
            "reproduce with": [reproduce_command(results_file, t) for t in best["trial_id"]],
        }
    )


def frontier_table(front: pd.DataFrame, points: pd.DataFrame, hparams: list[str]) -> pd.DataFrame:
    """The non-dominated trials with their objectives, status, rung and config."""
    rows = points.set_index("trial_id").loc[front["trial_id"]]
    table = front.drop(columns=["frontier", "arch_frontier"], errors="ignore").reset_index(
        drop=True
    )
    table["config"] = [config_text(row, hparams) for _, row in rows.iterrows()]
    return table


def status_counts(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials by architecture and status, with totals."""
    counts = pd.crosstab(trials["arch"], trials["status"], margins=True, margins_name="total")
    return counts.reset_index()


def error_counts(trials: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The most common error messages of errored trials."""
    errors = trials.loc[trials["status"] == "errored", "error"].fillna("(no message)")
    counts = errors.astype(str).str.slice(0, 300).value_counts().head(top)
    return pd.DataFrame({"error": counts.index, "trials": counts.to_numpy()})


def metadata_table(meta: dict[str, Any]) -> pd.DataFrame:
    """The experiment's `pico` metadata, one key per row."""
    return pd.DataFrame({"key": list(meta), "value": [fmt(v) for v in meta.values()]})
