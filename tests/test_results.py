"""The results file: schema, nulls, atomic writes, exactly-once rows, reading configs back."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from launch.export import write_results
from launch.results import (
    SCHEMA,
    ResultsTable,
    load_trial_config,
    read_metadata,
    read_trials,
)
from launch.scheduler import asha_milestones
from launch.status import ending
from pico.config import TrainConfig
from pico.errors import PicoError


def metrics(step: int, val_loss: float = 2.0) -> dict:
    return {
        "step": step,
        "tokens_seen": step * 100,
        "train_loss": val_loss + 0.1,
        "val_loss": val_loss,
        "perplexity": math.exp(val_loss),
        "token_accuracy": 0.3,
        "val_bpb": 1.5,
        "grad_norm": 0.5,
        "lr": 1e-3,
        "tokens_per_s": 1000.0,
        "elapsed_s": step / 10,
        "n_params": 1234,
        "flops_per_token": 7404,
        "train_flops": 7404.0 * step * 100,
        "diverged": False,
        "node_ip": "10.0.0.1",  # Tune adds fields the table ignores
    }


def make_table() -> ResultsTable:
    table = ResultsTable("exp", {"space": "all"})
    lstm = table.trial("t1", TrainConfig(arch="lstm", seed=3).to_dict())
    for step in (10, 20, 30):
        lstm.add_eval(metrics(step, 3.0 - step / 100))
    lstm.status = "completed"
    tf = table.trial("t2", TrainConfig(arch="kv_transformer", n_head=2).to_dict())
    tf.add_eval(metrics(10))
    tf.status = "early_stopped"
    errored = table.trial("t3", TrainConfig(arch="kgram_mlp").to_dict())
    errored.status, errored.error = "errored", "RuntimeError: boom"
    return table


def written(table: ResultsTable, tmp_path) -> str:
    path = str(tmp_path / "results.parquet")
    write_results(table.to_arrow(), path)
    return path


def test_rows_schema_and_nulls(tmp_path):
    path = written(make_table(), tmp_path)
    table = pq.read_table(path)
    assert table.schema.equals(SCHEMA, check_metadata=False)
    df = table.to_pandas()
    assert list(df.groupby("trial_id", sort=False).size()) == [3, 1, 1]
    lstm = df[df.trial_id == "t1"]
    assert list(lstm.step) == [10, 20, 30] and list(lstm.is_last) == [False, False, True]
    assert lstm.hp_n_head.isna().all() and lstm.hp_k.isna().all()  # not LSTM fields
    assert (lstm.hp_hidden_size == 256).all() and (lstm.seed == 3).all()
    assert (df[df.trial_id == "t2"].hp_n_head == 2).all()
    errored = df[df.trial_id == "t3"].iloc[0]
    assert errored.is_last and math.isnan(errored.val_loss) and errored.error.startswith("Runtime")
    assert read_metadata(path)["schema_version"] == 2
    assert read_metadata(path)["space"] == "all"
    assert [p.name for p in tmp_path.iterdir()] == ["results.parquet"]  # no temporary left


def test_a_rewound_trial_replaces_its_later_rows():
    table = make_table()
    record = table.trials["t1"]
    record.add_eval(metrics(20, 9.0))  # retried from the step-10 checkpoint
    assert sorted(record.evals) == [10, 20] and record.evals[20]["val_loss"] == 9.0


def test_a_changed_trial_shows_in_the_next_encoding(tmp_path):
    table = make_table()
    first = table.to_arrow()
    table.trial("t2").add_eval(metrics(20))  # `trial` marks it changed
    table.trial("t3").status = "diverged"
    path = written(table, tmp_path)
    records = {r.trial_id: r for r in read_trials(path)}
    assert sorted(records) == ["t1", "t2", "t3"] and sorted(records["t2"].evals) == [10, 20]
    assert records["t1"].status == "completed" and records["t3"].status == "diverged"
    assert first.num_rows + 1 == table.to_arrow().num_rows


def test_blocks_of_trials_give_the_rows_a_fresh_table_would(tmp_path):
    """Trials are encoded in blocks (ids that differ in their last two characters): a change to
    one trial, or a new trial joining a block, shows in the next encoding as it would in a table
    built from scratch, and a block whose trials did not change is reused, not encoded again."""

    def filled(n_trials: int, changed: dict[str, float]) -> ResultsTable:
        table = ResultsTable("exp", {})
        for number in range(n_trials):
            trial_id = f"{number:05d}"
            record = table.trial(trial_id, TrainConfig(arch="lstm", seed=number).to_dict())
            record.add_eval(metrics(10, changed.get(trial_id, 2.0)))
        return table

    live = filled(250, {})
    before = live.to_arrow()
    assert before.column("step").num_chunks == 3  # blocks 000.., 001.., 002..
    live.trial("00120").add_eval(metrics(10, 5.0))  # a running trial reports again
    live.trial("00250", TrainConfig(arch="lstm", seed=250).to_dict()).add_eval(metrics(10))
    after = live.to_arrow()
    assert after.equals(filled(251, {"00120": 5.0}).to_arrow())
    assert not after.equals(before) and after.num_rows == before.num_rows + 1

    def addresses(table):  # where each block's step values lie in memory
        return [chunk.buffers()[1].address for chunk in table.column("step").chunks]

    assert addresses(after)[0] == addresses(before)[0]  # block 000.. unchanged: the same data
    assert addresses(after)[1:] != addresses(before)[1:]


def test_load_trial_config_round_trip(tmp_path):
    path = written(make_table(), tmp_path)
    assert load_trial_config(path, "t1") == TrainConfig(arch="lstm", seed=3)
    assert load_trial_config(path, "t2").n_head == 2
    with pytest.raises(PicoError, match=r"no trial 'nope'.*t1, t2, t3"):
        load_trial_config(path, "nope")
    with pytest.raises(PicoError, match="not found"):
        load_trial_config(tmp_path / "missing.parquet", "t1")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(PicoError, match="not a Pico results file"):
        load_trial_config(tmp_path / "junk.parquet", "t1")


def test_endings_and_rungs():
    assert ending({"step": 40, "done": True}, 40) == "completed"
    assert ending({"step": 10, "done": True}, 40) == "early_stopped"
    assert ending({"step": 10, "diverged": True, "done": True}, 40) == "diverged"
    assert ending(None, 40) == "errored"
    assert asha_milestones(50, 400, 2) == [50, 100, 200, 400]
    assert asha_milestones(10, 40, 3) == [10, 30]
