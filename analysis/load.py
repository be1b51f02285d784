"""Read one results Parquet file (docs/results.md), check it, and split it for the report.

Every problem that leaves nothing to show raises `PicoError` with one line. Problems that only
remove part of the data (a NaN metric, a file that mixes corpora) become `notes`, which the report
prints on the page.

Confirmation trials (`phase` "confirm": a search config rerun on a fresh seed) are kept in
`trials` but not in `points`: counted among the search's trials they would weigh their config
several times in every chart of the search.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analysis.confirmation import Confirmation, confirmation
from pico.config import ARCHS
from pico.errors import PicoError
from pico.stats import is_confirmation

# The columns the report reads, with the kind of type each must have.
REQUIRED_COLUMNS = {
    "experiment": "string",
    "trial_id": "string",
    "arch": "string",
    "status": "string",
    "rung": "integer",
    "step": "integer",
    "tokens_seen": "integer",
    "val_loss": "number",
    "perplexity": "number",
    "token_accuracy": "number",
    "val_bpb": "number",
    "n_params": "number",
    "train_flops": "number",
    "elapsed_s": "number",
    "is_last": "boolean",
}
# Columns kept for every evaluation (learning curves); the final rows keep every column.
CURVE_COLUMNS = [
    "trial_id",
    "arch",
    "status",
    "rung",
    "step",
    "tokens_seen",
    "val_loss",
    "val_bpb",
    "is_last",
]
# Statuses whose last evaluation is not a result: such trials are only counted. Every other
# status (completed, early_stopped, running, or one added later, e.g. stopped from outside) is a
# valid point at its last evaluation.
FAILED_STATUSES = ("errored", "diverged")
# A loss in nats per token compares across trials that score the same text in the same tokens:
# the same corpus (cut to the same documents) and tokenizer. Block size, like every other
# hyperparameter, changes the model, not what its loss measures.
LOSS_GROUP_COLUMNS = ("hp_corpus", "hp_max_docs", "hp_tokenizer")
# Trial-level hp_ columns that identify the run rather than tune it.
NOT_TUNED = ("hp_arch", "hp_seed", "hp_device", "hp_compile", "hp_num_threads", "hp_eval_interval")

_TYPE_CHECKS = {
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "integer": pa.types.is_integer,
    "number": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
    "boolean": pa.types.is_boolean,
}


@dataclass
class Results:
    """One experiment's results, split the way the charts use them."""

    path: Path
    curves: pd.DataFrame  # every evaluation (CURVE_COLUMNS), sorted by trial and step
    trials: pd.DataFrame  # one row per trial, confirmation ones too: its final evaluation
    points: pd.DataFrame  # the search trials whose final evaluation is usable (finite loss)
    meta: dict[str, Any]  # the `pico` metadata JSON ({} when absent)
    hparams: list[str]  # hp_ columns that take more than one value among `points`
    loss: str  # "val_loss", or "val_bpb" when the file mixes corpora or tokenizers
    notes: list[str] = field(default_factory=list)

    @property
    def archs(self) -> list[str]:
        """The architectures with at least one usable trial, in config.ARCHS order."""
        rank = {a: i for i, a in enumerate(ARCHS)}
        return sorted(self.points["arch"].unique(), key=lambda a: (rank.get(a, len(rank)), a))

    @property
    def search_trials(self) -> pd.DataFrame:
        """`trials` without the confirmation trials."""
        return self.trials[~is_confirmation(self.trials)]

    @cached_property
    def confirmation(self) -> Confirmation:
        """The confirmation stage's intervals, tests and noise floor (empty if none ran)."""
        return confirmation(self.trials, self.loss)

    def arch_hparams(self, arch: str) -> list[str]:
        """The hp_ columns that vary among this architecture's usable trials."""
        sub = self.points[self.points["arch"] == arch]
        return [c for c in self.hparams if sub[c].dropna().nunique() > 1]


def load_results(path: str | Path, archs: list[str] | None = None) -> Results:
    """Read and check a results file; keep only `archs` when given."""
    path = Path(path)
    table = _read_table(path)
    _check_columns(table, path)
    meta, notes = _read_meta(table)
    if archs:
        table = _keep_archs(table, archs, path)
    if table.num_rows == 0:
        raise PicoError(f"{path} has no rows: the search recorded no trial")

    curves = _to_frame(table.select(CURVE_COLUMNS))
    final_index = _final_row_index(curves)
    trials = _to_frame(table.take(pa.array(final_index))).reset_index(drop=True)
    curves = curves.sort_values(["trial_id", "step"], kind="stable").reset_index(drop=True)

    points = _usable(trials[~is_confirmation(trials)], "val_loss", notes, path)
    loss = _choose_loss(points, notes)
    if loss != "val_loss":
        points = _usable(points, loss, notes, path)
    points = points.reset_index(drop=True)
    hparams = [
        c
        for c in points.columns
        if c.startswith("hp_") and c not in NOT_TUNED and points[c].dropna().nunique() > 1
    ]
    return Results(path, curves, trials, points, meta, hparams, loss, notes)


def hp_kind(series: pd.Series) -> str:
    """'int', 'float' or 'cat' (strings and booleans): how a hyperparameter column is treated."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return "cat"
    if pd.api.types.is_integer_dtype(series.dtype):
        return "int"
    if pd.api.types.is_float_dtype(series.dtype):
        return "float"
    return "cat"


def label(column: str) -> str:
    """A column's name as shown on charts: `hp_d_model` -> `d_model`."""
    return column.removeprefix("hp_")


# ---------------------------------------------------------------------------- reading


def _read_table(path: Path) -> pa.Table:
    if not path.exists():
        raise PicoError(f"results file not found: {path}")
    if not path.is_file():
        raise PicoError(f"{path} is not a file: pass the results Parquet file itself")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        # Arrow's message repeats the path ("Could not open ... 'x': <reason>"): keep the reason.
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].rsplit("': ", 1)[-1]
        raise PicoError(f"{path} is not a readable Parquet file: {reason}") from None


def _check_columns(table: pa.Table, path: Path) -> None:
    names = set(table.column_names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise PicoError(
            f"{path} is not a Pico results file: missing column(s) {', '.join(missing)} "
            "(see docs/results.md)"
        )
    for name, kind in REQUIRED_COLUMNS.items():
        arrow_type = table.schema.field(name).type
        if not pa.types.is_null(arrow_type) and not _TYPE_CHECKS[kind](arrow_type):
            raise PicoError(f"{path}: column {name} has type {arrow_type}, expected a {kind}")


def _read_meta(table: pa.Table) -> tuple[dict[str, Any], list[str]]:
    raw = (table.schema.metadata or {}).get(b"pico")
    if raw is None:
        return {}, ["The file has no `pico` metadata: the experiment's settings are unknown."]
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}, ["The file's `pico` metadata is not valid JSON and is ignored."]
    if not isinstance(meta, dict):
        return {}, ["The file's `pico` metadata is not a JSON object and is ignored."]
    return meta, []


def _keep_archs(table: pa.Table, archs: list[str], path: Path) -> pa.Table:
    present = sorted(set(table.column("arch").drop_null().to_pylist()))
    unknown = [a for a in archs if a not in present]
    if unknown:
        raise PicoError(
            f"--arch {', '.join(unknown)}: not in {path}; it holds {', '.join(present) or 'none'}"
        )
    mask = pc.is_in(table.column("arch"), value_set=pa.array(archs))
    return table.filter(mask)


def _to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow to pandas, keeping integer and boolean hyperparameters nullable (not float/object)."""
    df = table.to_pandas()
    for name in df.columns:
        arrow_type = table.schema.field(name).type
        if name.startswith("hp_") and pa.types.is_integer(arrow_type):
            df[name] = df[name].astype("Int64")
        elif name.startswith("hp_") and pa.types.is_boolean(arrow_type):
            df[name] = df[name].astype("boolean")
    return df


def _final_row_index(curves: pd.DataFrame) -> np.ndarray:
    """The row of each trial's final evaluation: its `is_last` row, else its highest step."""
    order = curves.sort_values(["trial_id", "step"], kind="stable")
    flagged = order[order["is_last"].fillna(False).astype(bool)]
    final = flagged.drop_duplicates("trial_id", keep="last")
    unflagged = order[~order["trial_id"].isin(final["trial_id"])]
    final = pd.concat([final, unflagged.drop_duplicates("trial_id", keep="last")])
    return np.sort(final.index.to_numpy())


def _usable(trials: pd.DataFrame, metric: str, notes: list[str], path: Path) -> pd.DataFrame:
    """Trials with a valid status and a finite `metric`; say how many were left out and why."""
    valid = trials[~trials["status"].isin(FAILED_STATUSES)]
    finite = valid[np.isfinite(valid[metric].astype(float))]
    if finite.empty:
        counts = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
        raise PicoError(
            f"{path}: no completed or early-stopped trial has a finite {metric} "
            f"({len(trials)} trial(s): {counts}); nothing to report"
        )
    dropped = len(valid) - len(finite)
    if dropped:
        notes.append(
            f"{dropped} trial(s) that neither errored nor diverged have a NaN or infinite "
            f"{metric} at their last evaluation and are left out of every chart."
        )
    return finite


def _choose_loss(points: pd.DataFrame, notes: list[str]) -> str:
    """val_loss when every trial shares corpus and tokenizer; else val_bpb, with a note."""
    differ = [
        c for c in LOSS_GROUP_COLUMNS if c in points.columns and points[c].astype(str).nunique() > 1
    ]
    if not differ:
        return "val_loss"
    notes.append(
        f"The trials differ in {', '.join(label(c) for c in differ)}: a loss in nats per token "
        "does not compare across texts or tokenizers, so every chart and table compares bits "
        "per byte (val_bpb) instead of val_loss."
    )
    return "val_bpb"
