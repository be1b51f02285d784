"""The results file: every evaluation of every trial in one Parquet file (docs/results.md).

`ResultsTable` holds the trials of one experiment and encodes them as Parquet; `launch/export.py`
fills it from the study and the trial folders, and keeps it current during a search. It knows
nothing of Ray or Optuna. The trials whose ids differ only in their last two characters make one
block, encoded in one go and kept until one of its trials changes: a write during a search
encodes the blocks of the trials that changed since the last one, and reuses the rest (a
hundredth as many blocks as trials). Arrow encodes a block of a hundred trials in about the time
it takes to encode five of them one by one.
`load_trial_config` reads a trial's config back.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from launch.status import RUNNING
from pico.config import ARCH_FIELDS, FIELD_TYPES, MODEL_FIELDS, TrainConfig
from pico.errors import PicoError

SCHEMA_VERSION = 2
METADATA_KEY = b"pico"

_ARROW_TYPES = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
HP_COLUMNS = [
    (f"hp_{f.name}", _ARROW_TYPES[FIELD_TYPES[f.name]]) for f in dataclasses.fields(TrainConfig)
]
TRIAL_COLUMNS = [
    ("experiment", pa.string()),
    ("trial_id", pa.string()),
    ("arch", pa.string()),
    ("status", pa.string()),
    *HP_COLUMNS,
    ("rung", pa.int64()),
    ("node", pa.string()),
    ("node_id", pa.string()),
    ("device", pa.string()),
    ("seed", pa.int64()),
    ("config_fingerprint", pa.string()),
    ("checkpoint", pa.string()),
    ("error", pa.string()),
    ("decode_latency_ms", pa.float64()),
    ("retries", pa.int64()),
    ("phase", pa.string()),
    ("confirms", pa.string()),
]
EVAL_COLUMNS = [
    ("step", pa.int64()),
    ("tokens_seen", pa.int64()),
    ("train_loss", pa.float64()),
    ("val_loss", pa.float64()),
    ("perplexity", pa.float64()),
    ("token_accuracy", pa.float64()),
    ("val_bpb", pa.float64()),
    ("grad_norm", pa.float64()),
    ("lr", pa.float64()),
    ("tokens_per_s", pa.float64()),
    ("elapsed_s", pa.float64()),
    ("n_params", pa.int64()),
    ("flops_per_token", pa.int64()),
    ("train_flops", pa.float64()),
    ("is_last", pa.bool_()),
]
SCHEMA = pa.schema([pa.field(name, kind) for name, kind in TRIAL_COLUMNS + EVAL_COLUMNS])
METRIC_NAMES = tuple(name for name, _ in EVAL_COLUMNS if name != "is_last")


@dataclass
class TrialRecord:
    """One trial: its config, how it stands, and its evaluations keyed by step."""

    trial_id: str
    config: dict[str, Any]
    status: str = RUNNING
    evals: dict[int, dict[str, Any]] = field(default_factory=dict)
    rung: int = 0
    node: str | None = None
    node_id: str | None = None
    device: str | None = None
    checkpoint: str | None = None
    error: str | None = None
    decode_latency_ms: float | None = None
    retries: int = 0
    confirms: str | None = None  # the search trial a confirmation trial reruns

    @property
    def phase(self) -> str:
        """`confirm` for a confirmation trial, else `search`."""
        return "search" if self.confirms is None else "confirm"

    def add_eval(self, metrics: dict[str, Any]) -> None:
        """Record one evaluation. A report at step s means the trial's history is rewound to s
        (a retry or a resume from an earlier checkpoint): later evaluations go until repeated."""
        step = int(metrics["step"])
        self.evals = {s: row for s, row in self.evals.items() if s < step}
        self.evals[step] = {name: metrics.get(name) for name in METRIC_NAMES}
        for name in ("node", "node_id", "device", "decode_latency_ms", "checkpoint"):
            if metrics.get(name) is not None:
                setattr(self, name, metrics[name])

    @property
    def last_step(self) -> int:
        """The step of the last evaluation (0 before the first)."""
        return max(self.evals, default=0)

    @cached_property
    def config_columns(self) -> dict[str, Any]:
        """The columns that follow from the config alone, computed once: a trial's config never
        changes."""
        cfg = TrainConfig.from_dict(self.config)
        unused = set(MODEL_FIELDS) - set(ARCH_FIELDS[cfg.arch])
        return {
            "arch": cfg.arch,
            **{f"hp_{k}": None if k in unused else v for k, v in cfg.to_dict().items()},
            "seed": cfg.seed,
            "config_fingerprint": cfg.fingerprint(),
        }

    def trial_columns(self, experiment: str) -> dict[str, Any]:
        """The columns that are the same on every row of the trial."""
        return {
            "experiment": experiment,
            "trial_id": self.trial_id,
            "status": self.status,
            **self.config_columns,
            "rung": self.rung,
            "node": self.node,
            "node_id": self.node_id,
            "device": self.device,
            "checkpoint": self.checkpoint,
            "error": self.error,
            "decode_latency_ms": self.decode_latency_ms,
            "retries": self.retries,
            "phase": self.phase,
            "confirms": self.confirms,
        }

    def rows(self, experiment: str) -> list[dict[str, Any]]:
        """The trial's rows: one per evaluation, or one with null metrics if it has none."""
        trial = self.trial_columns(experiment)
        steps = sorted(self.evals) or [None]
        return [
            {**trial, **self.evals.get(step, {}), "is_last": step == steps[-1]} for step in steps
        ]


class ResultsTable:
    """All trials of one experiment, encoded as one Parquet file on demand."""

    def __init__(self, experiment: str, metadata: dict[str, Any]):
        self.experiment = experiment
        self.metadata = {"schema_version": SCHEMA_VERSION, "experiment": experiment, **metadata}
        self.trials: dict[str, TrialRecord] = {}
        self._blocks: dict[str, pa.Table] = {}  # block key -> its trials' rows, while unchanged

    def trial(
        self, trial_id: str, config: dict[str, Any] | None = None, confirms: str | None = None
    ) -> TrialRecord:
        """The record of `trial_id` (created from its config fields, and the trial it confirms,
        on first sight), marked as changed: the caller is about to update it."""
        if trial_id not in self.trials:
            if config is None:
                raise KeyError(trial_id)
            self.trials[trial_id] = TrialRecord(trial_id, config, confirms=confirms)
        self._blocks.pop(_block_key(trial_id), None)
        return self.trials[trial_id]

    def to_arrow(self) -> pa.Table:
        """Every trial's rows, in trial order then step order, with the file metadata."""
        parts = []
        for key, ids in itertools.groupby(sorted(self.trials), key=_block_key):
            if key not in self._blocks:
                rows = [
                    row for trial_id in ids for row in self.trials[trial_id].rows(self.experiment)
                ]
                self._blocks[key] = pa.Table.from_pylist(rows, schema=SCHEMA)
            parts.append(self._blocks[key])
        table = pa.concat_tables(parts) if parts else SCHEMA.empty_table()
        meta = json.dumps(self.metadata, default=str)
        return table.replace_schema_metadata({METADATA_KEY: meta.encode()})


def _block_key(trial_id: str) -> str:
    """The block a trial's rows are encoded in: its id but the last two characters."""
    return trial_id[:-2]


def read_trials(path: str | Path) -> list[TrialRecord]:
    """The trial records stored in a results file."""
    table = pq.read_table(path)
    hp_names = [name for name, _ in HP_COLUMNS]
    records: dict[str, TrialRecord] = {}
    for row in table.to_pylist():
        record = records.get(row["trial_id"])
        if record is None:
            config = {name[3:]: row[name] for name in hp_names if row[name] is not None}
            record = TrialRecord(row["trial_id"], config, status=row["status"])
            for name in ("rung", "node", "node_id", "device", "checkpoint", "error", "retries"):
                setattr(record, name, row[name])
            record.confirms = row.get("confirms")  # absent from files before confirmation
            record.decode_latency_ms = row["decode_latency_ms"]
            records[record.trial_id] = record
        if row["step"] is not None:
            record.evals[row["step"]] = {name: row[name] for name in METRIC_NAMES}
    return list(records.values())


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The file-level metadata (the `pico` JSON object) of a results file."""
    meta = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in meta:
        raise PicoError(f"{path} is not a Pico results file (no 'pico' metadata)")
    return json.loads(meta[METADATA_KEY])


def load_trial_config(path: str | Path, trial_id: str) -> TrainConfig:
    """The exact TrainConfig that trial `trial_id` of the results file `path` trained with, data
    settings (corpus, tokenizer, max_docs) included. A file written before a field existed
    lacks its column: the field keeps its default."""
    path = Path(path)
    if not path.is_file():
        raise PicoError(f"results file not found: {path}")
    try:
        present = set(pq.read_schema(path).names)
        hp_names = [name for name, _ in HP_COLUMNS if name in present]
        table = pq.read_table(path, columns=["trial_id", *hp_names])
    except (pa.ArrowInvalid, KeyError, OSError) as exc:
        raise PicoError(f"{path} is not a Pico results file: {exc}") from None
    ids = table.column("trial_id").to_pylist()
    if trial_id not in ids:
        known = sorted(set(ids))
        shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        raise PicoError(f"no trial {trial_id!r} in {path}; its trials are: {shown}")
    row = table.slice(ids.index(trial_id), 1).to_pylist()[0]
    # Fields the architecture does not use are stored as null: any value reproduces the run.
    return TrainConfig.from_results_row(row).validate()
