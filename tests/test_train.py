"""The training loop: reproducibility, exact resume, divergence, the schedule, honest metrics."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pico.train as pico_train
from pico.config import TrainConfig
from pico.data import prepare_data
from pico.metrics import PAD_TARGET, build_eval_set, evaluate
from pico.models import build_model
from pico.optim import lr_at
from pico.train import LogProgress, _Run, train

TIMING_FIELDS = ("tokens_per_s", "elapsed_s")
ARCHS = ("kgram_mlp", "lstm", "kv_transformer")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The synthetic 3seqs corpus with a character tokenizer: small and quick to prepare."""
    return prepare_data("3seqs", "char", cache_dir=tmp_path_factory.mktemp("cache"))


def tiny(arch: str, **changes) -> TrainConfig:
    """A model small enough that a few dozen steps take well under a second."""
    base = dict(
        arch=arch,
        corpus="3seqs",
        tokenizer="char",
        d_model=16,
        n_layer=1,
        n_head=2,
        hidden_size=24,
        k=3,
        block_size=16,
        batch_size=4,
        max_steps=12,
        eval_interval=4,
        eval_tokens=200,
        warmup_steps=2,
        dropout=0.1,
        num_threads=1,
    )
    return TrainConfig(**{**base, **changes}).validate()


def collect(cfg: TrainConfig, data, **kwargs) -> list[dict]:
    records: list[dict] = []
    train(cfg, data, on_eval=lambda record, save: records.append(record), **kwargs)
    return records


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


@pytest.mark.parametrize("arch", ARCHS)
def test_same_config_and_seed_give_the_same_metrics(arch, data):
    cfg = tiny(arch)
    first, second = collect(cfg, data), collect(cfg, data)
    assert [r["step"] for r in first] == [4, 8, 12]
    assert without_timing(first) == without_timing(second)
    assert without_timing(first) != without_timing(collect(cfg.replace(seed=1), data))


@pytest.mark.parametrize("arch", ARCHS)
def test_resumed_run_continues_exactly_as_an_uninterrupted_one(arch, data, tmp_path):
    cfg = tiny(arch, grad_accum=2)
    uninterrupted = collect(cfg, data)

    class Crash(Exception):
        pass

    def crash_after_first_eval(record, save):
        save(tmp_path / "ckpt")
        raise Crash

    with pytest.raises(Crash):
        train(cfg, data, on_eval=crash_after_first_eval)
    resumed = collect(cfg, data, resume_from=tmp_path / "ckpt")
    assert [r["step"] for r in resumed] == [8, 12]
    assert without_timing(resumed) == without_timing(uninterrupted[1:])


def test_nan_loss_ends_the_run_as_diverged_without_raising(data):
    result = train(tiny("kv_transformer", lr=1e12, min_lr=0.0, grad_clip=0.0, warmup_steps=0), data)
    assert result.status == "diverged"
    assert result.metrics["diverged"] is True
    assert math.isnan(result.metrics["val_loss"])
    assert result.metrics["step"] < 12


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 110))


def test_eval_set_scores_the_same_targets_for_every_block_size():
    val = np.arange(1000) % 97
    sets = [build_eval_set(val, block, eval_tokens=300) for block in (7, 16, 300, 512)]
    for s in sets:
        assert s.n_targets == 300
        real = s.targets[s.targets != PAD_TARGET]
        assert torch.equal(real, torch.as_tensor(val[1:301]))


def test_padding_is_never_counted(data):
    """Metrics equal a hand computation over real targets, whatever sits in the padding."""
    cfg = tiny("kv_transformer")
    model = build_model(cfg, data.vocab_size).eval()
    eval_set = build_eval_set(data.val, cfg.block_size, eval_tokens=37)  # 3 windows, 11 padded
    scores = evaluate(model, eval_set, data.tokenizer.token_bytes)

    with torch.no_grad():
        logits, _ = model(eval_set.inputs)
    mask = eval_set.targets != PAD_TARGET
    logp = torch.log_softmax(logits[mask], -1)
    nll = -logp.gather(1, eval_set.targets[mask][:, None]).squeeze(1)
    assert mask.sum() == 37
    assert scores["val_loss"] == pytest.approx(float(nll.mean()), rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(float(nll.mean())), rel=1e-5)
    accuracy = (logits[mask].argmax(-1) == eval_set.targets[mask]).float().mean()
    assert scores["token_accuracy"] == pytest.approx(float(accuracy))

    # Changing padded inputs changes nothing: causal models never look ahead into padding.
    noisy = eval_set.inputs.clone()
    noisy[-1, 5:] = 1
    noisy_set = type(eval_set)(noisy, eval_set.targets)
    assert evaluate(model, noisy_set, data.tokenizer.token_bytes) == scores


def test_bits_per_byte_matches_nats_for_a_one_byte_per_token_text(data):
    """3seqs is ASCII: each char token is one byte, so bpb = val_loss / ln 2 (no eot target)."""
    cfg = tiny("lstm")
    model = build_model(cfg, data.vocab_size)
    eval_set = build_eval_set(data.val, cfg.block_size, eval_tokens=100)
    assert data.tokenizer.eot_id not in eval_set.targets.tolist()
    scores = evaluate(model, eval_set, data.tokenizer.token_bytes)
    assert scores["val_bpb"] == pytest.approx(scores["val_loss"] / math.log(2), rel=1e-9)


def test_record_holds_every_documented_field(data, repo_root):
    record = collect(tiny("kgram_mlp", max_steps=4), data)[-1]
    documented = (repo_root / "docs" / "metrics.md").read_text()
    for name in record:
        assert f"`{name}`" in documented, f"{name} is not documented in docs/metrics.md"
    assert record["tokens_seen"] == 4 * 4 * 16
    assert record["train_flops"] == record["flops_per_token"] * record["tokens_seen"]
    assert record["perplexity"] == pytest.approx(math.exp(record["val_loss"]))
    assert 0 <= record["token_accuracy"] <= 1


def test_tokens_per_s_counts_the_training_steps_only(data, monkeypatch, tmp_path):
    """On a fake clock where a step takes 1 s, scoring 50 s and the evaluation's callback (a
    checkpoint and a report, say) 100 s, every window runs at one step's tokens per second."""
    now = [0.0]
    monkeypatch.setattr(pico_train, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    step, score = _Run.train_step, pico_train.evaluate

    def step_taking_1_s(run):
        step(run)
        now[0] += 1.0

    def scoring_taking_50_s(*args, **kwargs):
        now[0] += 50.0
        return score(*args, **kwargs)

    monkeypatch.setattr(_Run, "train_step", step_taking_1_s)
    monkeypatch.setattr(pico_train, "evaluate", scoring_taking_50_s)
    records: list[dict] = []

    def callback_taking_100_s(record, save):
        save(tmp_path / "checkpoint")
        records.append(record)
        now[0] += 100.0

    cfg = tiny("kv_transformer", grad_accum=2)
    train(cfg, data, on_eval=callback_taking_100_s)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.block_size
    assert [r["tokens_per_s"] for r in records] == [pytest.approx(tokens_per_step)] * 3
    # elapsed_s is wall time: 12 steps, 3 scorings and the 2 callbacks before the last record.
    assert records[-1]["elapsed_s"] == pytest.approx(12 + 3 * 50 + 2 * 100)


def test_progress_in_a_log_is_plain_lines_not_a_bar(data, capsys):
    train(tiny("kgram_mlp"), data, progress=True)  # captured: stderr is not a terminal
    out = capsys.readouterr()
    assert "\r" not in out.err
    # A run shorter than the interval between lines shows only its final count.
    assert [line.split(",")[0] for line in out.err.splitlines()] == [
        "train kgram_mlp: step 12/12 (100%)"
    ]
    assert [line.split()[1] for line in out.out.splitlines()] == ["4", "8", "12"]


def test_log_progress_prints_a_line_every_interval(capsys):
    now = [0.0]
    progress = LogProgress(100, 0, "train lstm", interval_s=5.0, clock=lambda: now[0])
    for _ in range(100):
        now[0] += 0.5  # 2 steps per second: a line every 10 steps
        progress.update()
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10
    assert lines[0] == "train lstm: step 10/100 (10%), 2.0 steps/s, 5 s, 45 s left"
    assert lines[-1] == "train lstm: step 100/100 (100%), 2.0 steps/s, 50 s, 0 s left"
