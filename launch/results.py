"""The results file: every evaluation of every trial in one Parquet file (docs/results.md).

`ResultsTable` holds the trials of one experiment and writes them atomically (a temporary file,
then `os.replace`), so a reader or a crash only ever sees a complete file. It knows nothing of Ray:
the Tune callback in `launch/export.py` feeds it. `load_trial_config` reads a trial's config back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pico.config import ARCH_FIELDS, MODEL_FIELDS, TrainConfig
from pico.errors import PicoError

SCHEMA_VERSION = 1
METADATA_KEY = b"pico"
STATUSES = ("completed", "early_stopped", "stopped", "errored", "diverged", "lost", "running")

_ARROW_TYPES = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
HP_COLUMNS = [
    (f"hp_{f.name}", _ARROW_TYPES[type(f.default)]) for f in dataclasses.fields(TrainConfig)
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
    status: str = "running"
    evals: dict[int, dict[str, Any]] = field(default_factory=dict)
    rung: int = 0
    node: str | None = None
    node_id: str | None = None
    device: str | None = None
    checkpoint: str | None = None
    error: str | None = None
    decode_latency_ms: float | None = None
    retries: int = 0

    def add_eval(self, metrics: dict[str, Any]) -> None:
        """Record one evaluation. A report at step s means the trial's history is rewound to s
        (a retry from a checkpoint, a restart): later evaluations from a previous attempt go."""
        step = int(metrics["step"])
        self.evals = {s: row for s, row in self.evals.items() if s < step}
        self.evals[step] = {name: metrics.get(name) for name in METRIC_NAMES}

    def backfill(self, metrics: dict[str, Any]) -> None:
        """Record an evaluation only if its step is missing (recovered from Tune's own log)."""
        self.evals.setdefault(int(metrics["step"]), {n: metrics.get(n) for n in METRIC_NAMES})

    @property
    def last_step(self) -> int:
        """The step of the last evaluation (0 before the first)."""
        return max(self.evals, default=0)

    def rows(self, experiment: str) -> list[dict[str, Any]]:
        """The trial's rows: one per evaluation, or one with null metrics if it has none."""
        cfg = TrainConfig.from_dict(self.config)
        unused = set(MODEL_FIELDS) - set(ARCH_FIELDS[cfg.arch])
        trial = {
            "experiment": experiment,
            "trial_id": self.trial_id,
            "arch": cfg.arch,
            "status": self.status,
            **{f"hp_{k}": None if k in unused else v for k, v in cfg.to_dict().items()},
            "rung": self.rung,
            "node": self.node,
            "node_id": self.node_id,
            "device": self.device,
            "seed": cfg.seed,
            "config_fingerprint": cfg.fingerprint(),
            "checkpoint": self.checkpoint,
            "error": self.error,
            "decode_latency_ms": self.decode_latency_ms,
            "retries": self.retries,
        }
        steps = sorted(self.evals) or [None]
        return [
            {**trial, **self.evals.get(step, {}), "is_last": step == steps[-1]} for step in steps
        ]


class ResultsTable:
    """All trials of one experiment, written to one Parquet file on demand."""

    def __init__(self, path: str | Path, experiment: str, metadata: dict[str, Any]):
        self.path = Path(path)
        self.experiment = experiment
        self.metadata = {"schema_version": SCHEMA_VERSION, "experiment": experiment, **metadata}
        self.trials: dict[str, TrialRecord] = {}

    def trial(self, trial_id: str, config: dict[str, Any]) -> TrialRecord:
        """The record of `trial_id`, created from its config fields on first sight."""
        if trial_id not in self.trials:
            self.trials[trial_id] = TrialRecord(trial_id, config)
        return self.trials[trial_id]

    def to_arrow(self) -> pa.Table:
        """Every trial's rows, in trial order then step order, with the file metadata."""
        rows = [row for record in self.trials.values() for row in record.rows(self.experiment)]
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        meta = json.dumps(self.metadata, default=str)
        return table.replace_schema_metadata({METADATA_KEY: meta.encode()})

    def write(self) -> Path:
        """Write the file atomically: readers see the previous version or this one, never half."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        pq.write_table(self.to_arrow(), tmp)
        os.replace(tmp, self.path)
        return self.path

    def load(self) -> None:
        """Read the trials back from an existing file (a resumed search continues from it)."""
        if self.path.exists():
            self.trials.update((record.trial_id, record) for record in read_trials(self.path))


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
    """The exact TrainConfig that trial `trial_id` of the results file `path` trained with."""
    path = Path(path)
    if not path.is_file():
        raise PicoError(f"results file not found: {path}")
    try:
        table = pq.read_table(path, columns=["trial_id", *(name for name, _ in HP_COLUMNS)])
    except (pa.ArrowInvalid, KeyError, OSError) as exc:
        raise PicoError(f"{path} is not a Pico results file: {exc}") from None
    ids = table.column("trial_id").to_pylist()
    if trial_id not in ids:
        known = sorted(set(ids))
        shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        raise PicoError(f"no trial {trial_id!r} in {path}; its trials are: {shown}")
    row = table.slice(ids.index(trial_id), 1).to_pylist()[0]
    values = {name[3:]: value for name, value in row.items() if name.startswith("hp_")}
    # Fields the architecture does not use are stored as null: any value reproduces the run.
    return TrainConfig.from_dict({k: v for k, v in values.items() if v is not None}).validate()
