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
from pico.stats import is_confirmation

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
    points: pd.DataFrame,
    loss: str,
    hparams: list[str],
    results_file: str,
    confirmed: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The best trial of each architecture by `loss`, its config and how to reproduce it.

    With `confirmed` (confirmation_summary rows), a column gives each best trial's confirmed
    mean ± sd over its seeds, where it was confirmed.
    """
    best = points.loc[points.groupby("arch")[loss].idxmin()].sort_values(loss)
    table = pd.DataFrame(
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
    if confirmed is not None and len(confirmed):
        text = {
            row.config: _mean_sd(getattr(row, f"{loss}_mean"), getattr(row, f"{loss}_sd"), row.n)
            for row in confirmed.itertuples()
        }
        table.insert(4, f"confirmed {loss}", best["trial_id"].map(text).fillna(""))
    return table


def confirmation_table(summary: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """Each confirmed config: its runs, search score, confirmed mean ± sd, interval and curse."""
    runs = zip(summary["n"], summary["runs"], strict=True)
    table = pd.DataFrame(
        {
            "arch": summary["arch"],
            "config": summary["config"],
            "completed runs": [f"{n} of {total}" for n, total in runs],
        }
    )
    for m in metrics:
        mean, sd = summary[f"{m}_mean"], summary[f"{m}_sd"]
        low, high = summary[f"{m}_low"], summary[f"{m}_high"]
        table[f"search {m}"] = summary[f"search_{m}"].map(_decimals)
        table[f"confirmed {m}"] = [_mean_sd(a, b, None) for a, b in zip(mean, sd, strict=True)]
        table[f"95% interval ({m})"] = [
            f"{_decimals(a)} .. {_decimals(b)}" for a, b in zip(low, high, strict=True)
        ]
        table[f"winner's curse ({m})"] = summary[f"{m}_gap"].map(lambda v: _decimals(v, True))
    return table


def comparison_table(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Each test in words, with its raw and Holm-adjusted p-values."""
    return pd.DataFrame(
        {
            "comparison": comparisons["comparison"],
            "result": comparisons["sentence"],
            "p": comparisons["p"],
            "p (Holm)": comparisons["p_holm"],
        }
    )


def _decimals(value: float, sign: bool = False) -> str:
    """A loss to 4 decimals (differences show in the third), '' when missing."""
    if pd.isna(value):
        return ""
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def _mean_sd(mean: float, sd: float, n: int | None) -> str:
    """`4.5807 ± 0.0124` (and ` (n=4)` when n is given); '' when there is no mean."""
    if pd.isna(mean):
        return ""
    text = f"{mean:.4f} ± {sd:.4f}" if not pd.isna(sd) else f"{mean:.4f}"
    return text + (f" (n={n})" if n is not None else "")


def frontier_table(front: pd.DataFrame, points: pd.DataFrame, hparams: list[str]) -> pd.DataFrame:
    """The non-dominated trials with their objectives, status, rung and config."""
    rows = points.set_index("trial_id").loc[front["trial_id"]]
    table = front.drop(columns=["frontier", "arch_frontier"], errors="ignore").reset_index(
        drop=True
    )
    table["config"] = [config_text(row, hparams) for _, row in rows.iterrows()]
    return table


def status_counts(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials by architecture and status, with totals; confirmation trials in rows of their own."""
    rows = trials["arch"].where(~is_confirmation(trials), trials["arch"] + " (confirmation)")
    counts = pd.crosstab(rows, trials["status"], margins=True, margins_name="total")
    return counts.rename_axis("arch").reset_index()


def error_counts(trials: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The most common error messages of errored trials."""
    errors = trials.loc[trials["status"] == "errored", "error"].fillna("(no message)")
    counts = errors.astype(str).str.slice(0, 300).value_counts().head(top)
    return pd.DataFrame({"error": counts.index, "trials": counts.to_numpy()})


def metadata_table(meta: dict[str, Any]) -> pd.DataFrame:
    """The experiment's `pico` metadata, one key per row."""
    return pd.DataFrame({"key": list(meta), "value": [fmt(v) for v in meta.values()]})
