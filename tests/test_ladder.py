"""The IsoFLOP ladder: its plan spends each budget, its width rule holds for every architecture,
a recommendation from runs drawn from a known law finds that law's optimum, bad input is one line
and exit 2, and a real (tiny) ladder runs on Ray Tune and resumes without rerunning anything."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from launch.experiment import prepare, run_search
from launch.ladder import INNER_LR_FACTORS, ladder_bases, ladder_configs
from launch.settings import SearchSettings
from launch.storage import MANIFEST
from launch.study import SEARCH, SearchStudy
from pico.config import TrainConfig
from pico.errors import PicoError
from pico.ladder import (
    MIN_STEPS,
    WARMUP_FRACTION,
    at_width,
    ladder_plan,
    recommend,
    tokens_per_step,
    width_rule,
)
from pico.models import build_model
from pico.scaling_law import FlopsPerToken, compute_optimal, fit_loss_law

VOCAB = 65
TRUE_LAW = {"E": 1.5, "A": 40.0, "alpha": 0.35, "B": 300.0, "beta": 0.3}


def model_flops(config: TrainConfig) -> float:
    return build_model(config, VOCAB).flops_per_token()


def n_params(config: TrainConfig) -> int:
    return sum(p.numel() for p in build_model(config, VOCAB).parameters())


def test_each_run_spends_its_budget_with_a_schedule_matched_to_its_length():
    base = TrainConfig(arch="kv_transformer", tokenizer="char", parametrization="mup")
    budgets = [3e10, 9e10, 2.7e11]
    plan = ladder_plan(
        [(base, [1e-3, 3e-3])], widths=[32, 16, 24], budgets=budgets, flops_per_token=model_flops
    )
    assert len(plan) == 3 * 3 * 2
    # Smallest budget first (an interrupted ladder keeps whole budgets), then width, then lr.
    assert [c.d_model for c in plan[:6]] == [16, 16, 24, 24, 32, 32]
    assert [c.lr for c in plan[:2]] == [1e-3, 3e-3]
    for i, config in enumerate(plan):
        spent = model_flops(config) * tokens_per_step(config) * config.max_steps
        assert spent == pytest.approx(budgets[i // 6], rel=0.5 / MIN_STEPS)
        assert config.warmup_steps == max(1, round(WARMUP_FRACTION * config.max_steps))
        assert config.eval_interval == config.max_steps  # one evaluation, at the end
        assert config.min_lr / config.lr == pytest.approx(base.min_lr / base.lr)
        assert config.n_head == base.n_head and config.mup_base_width == base.mup_base_width


def test_budgets_too_small_for_a_width_are_refused_with_the_budget_that_would_do():
    base = TrainConfig(arch="lstm", tokenizer="char")
    with pytest.raises(PicoError, match=r"width 64 only \d+ steps .* raise the smallest budget"):
        ladder_plan([(base, [3e-3])], widths=[16, 64], budgets=[1e9], flops_per_token=model_flops)


@pytest.mark.parametrize("arch", ["kgram_mlp", "lstm", "kv_transformer"])
def test_widths_keep_their_ratios_and_the_parameter_count_is_quadratic_in_width(arch):
    base = TrainConfig(arch=arch, tokenizer="char", d_model=32, hidden_size=64)
    wide = at_width(base, 96)
    assert wide.d_model == 96 and wide.n_layer == base.n_layer
    if arch != "kv_transformer":
        assert wide.hidden_size == 192
    widths = [16, 24, 32, 48, 64]
    runs = pd.DataFrame(
        {"hp_d_model": widths, "n_params": [n_params(at_width(base, w)) for w in widths]}
    )
    rule = width_rule(runs)
    assert rule.n_params(96) == pytest.approx(n_params(wide), rel=1e-6)  # exact, extrapolated
    assert rule.width_for(n_params(wide), 8) == 96


def test_the_transformer_ladders_under_mup_with_one_lr_and_the_others_tune_three():
    settings = SearchSettings(space="all", ladder=[1e10], tokenizer="char")
    bases = dict((base.arch, (base, lrs)) for base, lrs in ladder_bases(settings))
    tf, tf_lrs = bases["kv_transformer"]
    assert tf.parametrization == "mup" and tf_lrs == [tf.lr]
    lstm, lstm_lrs = bases["lstm"]
    assert lstm_lrs == [lstm.lr * f for f in INNER_LR_FACTORS]
    given = SearchSettings(space="lstm", ladder=[1e10], ladder_lrs=[1e-3, 1e-2])
    assert [lrs for _, lrs in ladder_bases(given)] == [[1e-3, 1e-2]]


def synthetic_ladder(
    noise: float, seed: int = 0, arch: str = "lstm"
) -> tuple[pd.DataFrame, TrainConfig]:
    """Results rows of a ladder (5 widths x 4 budgets; an LSTM at 3 lrs, a muP Transformer at
    one) whose best-lr losses follow TRUE_LAW with multiplicative noise; off-best learning rates
    lose 3%."""
    rng = np.random.default_rng(seed)
    if arch == "lstm":
        base = TrainConfig(arch="lstm", tokenizer="char", d_model=32, hidden_size=32)
        lrs = [1.5e-3, 3e-3, 6e-3]
    else:
        base, lrs = TrainConfig(arch=arch, tokenizer="char", parametrization="mup"), [3e-3]
    plan = ladder_plan(
        [(base, lrs)],
        widths=[16, 24, 32, 48, 64],
        budgets=[1e11, 3e11, 1e12, 3e12],
        flops_per_token=model_flops,
    )
    rows = []
    for i, config in enumerate(plan):
        n, fpt = n_params(config), model_flops(config)
        tokens = tokens_per_step(config) * config.max_steps
        law = TRUE_LAW["E"] + TRUE_LAW["A"] / n ** TRUE_LAW["alpha"]
        law += TRUE_LAW["B"] / tokens ** TRUE_LAW["beta"]
        penalty = 1.0 if config.lr == 3e-3 else 1.03
        rows.append(
            {
                "trial_id": f"{i:05d}",
                "arch": arch,
                "status": "completed",
                "is_last": True,
                "phase": "search",
                "n_params": n,
                "tokens_seen": tokens,
                "flops_per_token": fpt,
                "train_flops": float(fpt * tokens),
                "val_loss": law * penalty * np.exp(rng.normal(0, noise)),
                **{f"hp_{k}": v for k, v in config.to_dict().items()},
            }
        )
    return pd.DataFrame(rows), base


def test_a_recommendation_finds_the_known_laws_optimum_and_covers_its_loss():
    frame, base = synthetic_ladder(noise=0.003)
    target = 3e13
    result = recommend(frame, "lstm", target)
    # The truth: the law's own compute-optimal point, with this ladder's cost per token.
    best = frame.loc[frame.groupby(["train_flops", "n_params"]).val_loss.idxmin()]
    cost = FlopsPerToken(*np.polyfit(best.n_params, best.flops_per_token, 1), max_error=0.0)
    exact = fit_loss_law(  # noise-free runs recover the law itself
        best.n_params,
        best.tokens_seen,
        [
            TRUE_LAW["E"]
            + TRUE_LAW["A"] / n ** TRUE_LAW["alpha"]
            + TRUE_LAW["B"] / d ** TRUE_LAW["beta"]
            for n, d in zip(best.n_params, best.tokens_seen, strict=True)
        ],
        bootstrap=10,
    )
    truth = compute_optimal(exact, np.array([target]), cost)
    assert result["n_params"]["value"] == pytest.approx(truth.n.value[0], rel=0.25)
    assert result["val_loss"]["low"] <= truth.loss.value[0] <= result["val_loss"]["high"]
    assert result["law"]["alpha"]["low"] <= TRUE_LAW["alpha"] <= result["law"]["alpha"]["high"]
    # Three learning rates at every size: the best (3e-3 everywhere) is what the lr law gives.
    assert "fitted on 5 tuned sizes" in result["lr_source"]
    assert result["config"]["lr"] == pytest.approx(3e-3, rel=0.05)
    # The config is a real one at the recommended size, trained for the recommended tokens.
    config = TrainConfig.from_dict(result["config"]).validate()
    assert n_params(config) == pytest.approx(result["config_n_params"], rel=1e-6)
    assert abs(np.log(result["config_n_params"] / result["n_params"]["value"])) < 0.3
    tokens = tokens_per_step(config) * config.max_steps
    assert tokens == pytest.approx(result["tokens"]["value"], rel=0.01)
    assert config.hidden_size / config.d_model == base.hidden_size / base.d_model
    assert result["runs"] == 20 and result["sizes"] == 5 and result["budgets"] == 4


def test_a_transformer_recommendation_keeps_its_heads_whole_and_rotary_dims_paired():
    frame, base = synthetic_ladder(noise=0.003, arch="kv_transformer")
    # At 2e13 the nearest multiple of the head count alone would be 36: head size 9, odd.
    result = recommend(frame, "kv_transformer", 2e13)
    config = TrainConfig.from_dict(result["config"]).validate()  # rotary needs even head sizes
    assert config.d_model % (2 * base.n_head) == 0 and config.n_head == base.n_head
    assert config.parametrization == "mup" and config.lr == base.lr
    assert result["lr_source"] == "the ladder's learning rate (not tuned per size)"


def test_a_results_row_gives_back_its_exact_config():
    frame, _ = synthetic_ladder(noise=0.0)
    row = frame.iloc[7]
    assert TrainConfig.from_results_row(row).to_dict() == {
        k[3:]: row[k] for k in frame.columns if k[:3] == "hp_"
    }


def predict_cli(repo_root, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch/predict.py", *map(str, args)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_prediction_command_prints_and_writes_json_beside_the_results(repo_root, tmp_path):
    frame, _ = synthetic_ladder(noise=0.003)
    results = tmp_path / "results.parquet"
    frame.to_parquet(results)
    done = predict_cli(repo_root, results, "--target-flops", "3e13")
    assert done.returncode == 0, done.stderr
    assert "lstm at 3e+13 training FLOPs" in done.stdout and "predicted val_loss" in done.stdout
    written = json.loads((tmp_path / "prediction-3e+13.json").read_text())
    assert written["predictions"][0]["arch"] == "lstm"
    assert written["predictions"][0]["target_flops"] == 3e13
    before = results.read_bytes()
    again = predict_cli(repo_root, results, "--target-flops", "3e13")  # would overwrite
    assert again.returncode == 2 and again.stdout == "" and "already exists" in again.stderr
    assert results.read_bytes() == before


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        ("ladder", ["--target-flops", "0.5"], "must be a number of FLOPs above 1"),
        (None, ["--target-flops", "1e15"], "no results file"),
        ("junk", ["--target-flops", "1e15"], "cannot read"),
        ("too_few", ["--target-flops", "1e15"], "distinct model sizes"),
        ("ladder", ["--target-flops", "1e15", "--arch", "kv_transformer"], "no converged run"),
        ("ladder", ["--target-flops", "1e15", "--output", "{results}"], "is the input file"),
    ],
)
def test_bad_prediction_input_is_one_line_and_exit_2(repo_root, tmp_path, make, args, message):
    results = tmp_path / "results.parquet"
    frame, _ = synthetic_ladder(noise=0.003)
    if make == "ladder":
        frame.to_parquet(results)
    elif make == "junk":
        results.write_text("not parquet")
    elif make == "too_few":
        frame[frame.hp_d_model <= 24].to_parquet(results)
    args = [a.format(results=results) for a in args]
    before = sorted(tmp_path.iterdir())
    done = predict_cli(repo_root, results, *args)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ladder", "1e12,3e12", "--num-samples", "4"], "drop --num-samples"),
        (["--ladder-widths", "8,16,32"], "pass --ladder too"),
        (["--target-flops", "1e15"], "pass --ladder"),
        (["--ladder", "1e12,x"], "not a comma-separated list of float"),
        (["--ladder", "1e12", "--ladder-widths", "8,16"], ">= 3 distinct widths"),
        (["--ladder", "1e12,-1"], "positive numbers"),
        (["--ladder", "1e12", "--scheduler", "asha"], "must all converge"),
        (["--ladder", "1e12", "--space", "seed22"], "use another --space"),
        (
            [
                "--ladder",
                "1e12",
                "--ladder-widths",
                "8,16,20",
                "--corpus",
                "3seqs",
                "--tokenizer",
                "char",
                "--space",
                "kv_transformer",
            ],
            "--ladder-widths 20 (kv_transformer): rotary positions need an even head size",
        ),
    ],
)
def test_bad_ladder_flags_are_one_line_and_exit_2(repo_root, tmp_path, args, message):
    done = subprocess.run(
        [sys.executable, "launch/search.py", *args, "--storage", str(tmp_path / "exp")],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_ladder_runs_its_plan_to_convergence_and_resumes_without_rerunning(ray_session, tmp_path):
    settings = SearchSettings(
        space="kv_transformer", name="ladder", storage=str(tmp_path / "experiments"),
        scheduler="fifo", corpus="3seqs", tokenizer="char", eval_tokens=256,
        ladder=[1.5e10, 3e10], ladder_widths=[8, 16, 24], confirm_top=0, confirm_seeds=0,
    )  # fmt: skip
    outcome = run_search(settings, verbosity=0)
    assert outcome.ended and settings.num_samples == 6

    last = pd.read_parquet(settings.results_path).query("is_last").sort_values("trial_id")
    plan = ladder_configs(settings, prepare(settings).vocab_size)
    assert (last.status == "completed").all() and last.phase.eq("search").all()
    assert last.step.tolist() == [config["max_steps"] for config in plan]
    assert last.hp_d_model.tolist() == [8, 16, 24, 8, 16, 24]
    assert last.hp_parametrization.eq("mup").all()
    # Each budget's runs spent it, up to the rounding of their step counts.
    for budget, runs in zip([1.5e10, 3e10], [last.iloc[:3], last.iloc[3:]], strict=True):
        assert np.allclose(runs.train_flops, budget, rtol=0.5 / MIN_STEPS)

    again = run_search(settings, resume=True, verbosity=0)
    assert again.ended and len(again.table.trials) == 6
    assert SearchStudy.load(settings.study_location, "ladder").asked(SEARCH) == 6


def test_the_scaling_benchmark_records_its_prediction_before_running_the_held_out_budget(
    monkeypatch, tmp_path
):
    from benchmarks import scaling_prediction as bench

    frame, _ = synthetic_ladder(noise=0.003)
    budgets = sorted(frame.train_flops.round(-9).unique())
    fit_part = frame[frame.train_flops < 2e12]
    held_out = frame[frame.train_flops > 2e12]
    calls = []

    def fake_ladder(args, name, seed, budgets):
        calls.append((name, (tmp_path / f"prediction-seed{seed}.json").exists()))
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / MANIFEST).write_text("{}")
        return fit_part if name.startswith("fit") else held_out

    monkeypatch.setattr(bench, "ladder", fake_ladder)
    monkeypatch.setattr(bench, "ARCH", "lstm")
    args = bench.parse_args(["--folder", str(tmp_path), "--budgets", ",".join(map(str, budgets))])
    record = bench.one_seed(args, seed=0)
    # The fit ran with no prediction on file, the held-out ladder only once it was written.
    assert calls == [("fit-seed0", False), ("holdout-seed0", True)]
    truth = held_out[held_out.is_last].val_loss.min()
    assert record["truth"] == truth
    assert record["error"] == pytest.approx(abs(record["predicted"] - truth) / truth)
    assert record["inside"] == (record["low"] <= truth <= record["high"])

    # A held-out run without its prediction on file is no longer blind: refused.
    (tmp_path / "prediction-seed0.json").unlink()
    with pytest.raises(PicoError, match="without a recorded prediction"):
        bench.one_seed(args, seed=0)
