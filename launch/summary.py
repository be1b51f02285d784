"""What the search command prints at the end, from the results table."""

from __future__ import annotations

import pandas as pd

from launch.results import ResultsTable
from launch.settings import SearchSettings
from launch.study import redact
from pico.config import ARCH_FIELDS
from pico.stats import answer_lines

SHOWN_OPTIM_FIELDS = ("lr", "batch_size", "block_size", "dropout", "weight_decay", "warmup_steps")


def final_rows(results: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its last evaluation."""
    return results[results["is_last"]].set_index("trial_id", drop=False)


def best_per_arch(last: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The best completed trial of each architecture (best early-stopped one if none completed)."""
    scored = last[last["status"].isin(("completed", "early_stopped")) & last[metric].notna()]
    scored = scored.assign(_done=scored["status"] != "completed")  # completed trials first
    ordered = scored.sort_values(["_done", metric], ascending=[True, mode == "min"])
    return ordered.groupby("arch", sort=False).head(1).drop(columns="_done")


def pareto_front(last: pd.DataFrame, metrics: list[tuple[str, str]]) -> pd.DataFrame:
    """Completed trials that no other completed trial beats on every objective."""
    done = last[last["status"] == "completed"].dropna(subset=[m for m, _ in metrics])
    signed = pd.DataFrame({m: done[m] * (1 if mode == "min" else -1) for m, mode in metrics})
    values = signed.to_numpy()
    keep = [
        not any((other <= row).all() and (other < row).any() for other in values) for row in values
    ]
    return done[keep].sort_values(metrics[0][0], ascending=metrics[0][1] == "min")


def describe(row: pd.Series) -> str:
    """The hyperparameters a trial searched over, as `field=value` pairs."""
    names = dict.fromkeys([*ARCH_FIELDS[row["arch"]], *SHOWN_OPTIM_FIELDS])
    parts = []
    for name in names:
        value = row[f"hp_{name}"]
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def summary_lines(settings: SearchSettings, table: ResultsTable) -> list[str]:
    """The end-of-search report: outcome counts, best config per architecture (or the Pareto
    set), where the results are and how to open them."""
    path = settings.results_path
    results = table.to_arrow().to_pandas()
    every = final_rows(results)
    last = every[every["phase"] == "search"]
    counts = last["status"].value_counts()
    lines = [f"{len(last)} trials: " + ", ".join(f"{n} {status}" for status, n in counts.items())]
    metric, mode = settings.metrics[0]
    if len(settings.metrics) == 1:
        for _, row in best_per_arch(last, metric, mode).iterrows():
            lines.append(
                f"best {row['arch']}: {row['trial_id']} {metric}={row[metric]:.4f} "
                f"({row['status']} at step {row['step']}) {describe(row)}"
            )
    else:
        names = [m for m, _ in settings.metrics]
        lines.append("Pareto set (completed trials): " + ", ".join(names))
        for _, row in pareto_front(last, settings.metrics).iterrows():
            values = " ".join(f"{m}={row[m]:.4g}" for m in names)
            lines.append(f"  {row['trial_id']} {row['arch']}: {values}")
    confirmed = every[every["phase"] == "confirm"]
    if len(confirmed):
        counts = confirmed["status"].value_counts()
        done = ", ".join(f"{n} {status}" for status, n in counts.items())
        lines.append(f"{len(confirmed)} confirmation trials: {done}")
        lines += answer_lines(results)
    lines += [
        f"results: {path}",
        f"report:  python analysis/report.py {path}",
        f"optuna:  optuna-dashboard {redact(settings.study_location)}",
    ]
    best = best_per_arch(last, metric, mode)
    if not best.empty:
        ranked = best.assign(_done=best["status"] != "completed")  # completed trials first
        ranked = ranked.sort_values(["_done", metric], ascending=[True, mode == "min"])
        trial = ranked.iloc[0]["trial_id"]
        lines.append(f"rerun:   python launch/train.py --from-results {path} --trial {trial}")
    return lines
