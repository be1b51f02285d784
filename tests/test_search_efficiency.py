"""The search-efficiency benchmark's arithmetic on small synthetic results frames with known
answers: only full-length runs count, every trial's FLOPs are charged in ask order, the sweep pays
for all its configs, and the paired test is the t-test on log FLOPs it claims to be. No Ray."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

# benchmarks/ is not an installed package: import it from the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import search_efficiency
from benchmarks.efficiency import (
    anytime_curve,
    anytime_table,
    best_within,
    describe,
    flops_to_reach,
    paired_log_ratio,
    quantile,
    seed_outcome,
    summary_lines,
    total_flops,
)
from launch.study import SearchStudy
from pico.errors import PicoError

INF = math.inf


def results(*trials: tuple[str, list[tuple[float, float]]]) -> pd.DataFrame:
    """A results frame: one trial per (status, [(val_loss, train_flops) per evaluation]), trial
    ids 00000, 00001, ... in the order given, rows shuffled as a file need not keep them."""
    rows = []
    for number, (status, evals) in enumerate(trials):
        for step, (loss, flops) in enumerate(evals, start=1):
            rows.append(
                {
                    "trial_id": f"{number:05d}",
                    "step": 25 * step,
                    "status": status,
                    "val_loss": loss,
                    "train_flops": flops,
                    "is_last": step == len(evals),
                }
            )
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)


def single(*trials: tuple[str, float, float]) -> pd.DataFrame:
    """A results frame of trials with one evaluation each: (status, val_loss, train_flops)."""
    return results(*[(status, [(loss, flops)]) for status, loss, flops in trials])


# An ASHA search: the first trial was stopped after an evaluation (4.0) better than anything that
# ran to the end; then a completed one, one that diverged, and a better completed one.
SEARCH = results(
    ("early_stopped", [(5.0, 10.0), (4.0, 20.0)]),
    ("completed", [(6.0, 10.0), (4.5, 40.0)]),
    ("diverged", [(5.5, 5.0), (math.nan, 8.0)]),
    ("completed", [(5.0, 10.0), (4.2, 40.0)]),
)


def test_the_curve_charges_every_trial_in_ask_order_and_counts_only_full_length_losses():
    curve = anytime_curve(SEARCH)
    assert curve["trial_id"].tolist() == ["00000", "00001", "00002", "00003"]
    assert curve["flops"].tolist() == [20.0, 40.0, 8.0, 40.0]
    assert curve["cumulative_flops"].tolist() == [20.0, 60.0, 68.0, 108.0]
    assert curve["final_loss"].tolist()[1::2] == [4.5, 4.2]
    assert curve["final_loss"].iloc[[0, 2]].isna().all()  # stopped early; diverged
    # No model before the first full-length run: worse than any loss.
    assert curve["best"].tolist() == [INF, 4.5, 4.5, 4.2]
    assert total_flops(curve) == 108.0


def test_ask_order_is_the_trial_number_not_the_file_order():
    frame = single(*[("completed", 10.0 - i, 1.0) for i in range(12)])
    curve = anytime_curve(frame)
    assert curve["trial_id"].tolist() == [f"{i:05d}" for i in range(12)]
    assert curve["best"].tolist() == [10.0 - i for i in range(12)]


def test_a_stopped_trials_intermediate_loss_never_reaches_a_target():
    curve = anytime_curve(SEARCH)
    # 4.0 was seen at step 50 of the stopped trial, but nothing trained to the end got there.
    assert flops_to_reach(curve, 4.0) == INF
    # 4.5 is reached by the second trial, which pays for the stopped one before it.
    assert flops_to_reach(curve, 4.5) == 60.0
    assert flops_to_reach(curve, 4.3) == 108.0
    assert flops_to_reach(curve, 9.0) == 60.0  # the first full-length run, not the first trial


def test_best_within_a_budget():
    curve = anytime_curve(SEARCH)
    assert best_within(curve, 10.0) == INF  # not even the first trial is paid for
    assert best_within(curve, 59.0) == INF
    assert best_within(curve, 60.0) == 4.5
    assert best_within(curve, 107.0) == 4.5
    assert best_within(curve, 1e9) == 4.2


def test_the_sweep_is_charged_all_its_flops_even_when_its_best_ran_first():
    sweep = anytime_curve(single(("completed", 4.8, 100.0), ("completed", 5.0, 300.0)))
    search = anytime_curve(
        single(("early_stopped", 3.0, 10.0), ("completed", 4.9, 30.0), ("completed", 4.7, 60.0))
    )
    outcome = seed_outcome(3, {"seed22": sweep, "tpe_asha": search})
    assert outcome.target == 4.8
    assert outcome.sweep_flops == 400.0
    assert outcome.needed == {"seed22": 400.0, "tpe_asha": 100.0}
    assert outcome.ratio("tpe_asha") == 0.25
    assert outcome.ratio("seed22") == 1.0
    assert outcome.spent == {"seed22": 400.0, "tpe_asha": 100.0}
    assert outcome.best == {"seed22": 4.8, "tpe_asha": 4.7}
    assert outcome.full_runs == {"seed22": 2, "tpe_asha": 2}
    assert outcome.trials == {"seed22": 2, "tpe_asha": 3}


def test_no_target_without_a_full_length_named_config():
    sweep = anytime_curve(single(("errored", math.nan, 0.0), ("diverged", math.nan, 50.0)))
    with pytest.raises(PicoError, match="seed 2: no named config ran to the end"):
        seed_outcome(2, {"seed22": sweep})


def test_paired_log_ratio_is_the_t_test_on_log_flops():
    # Ratios a/b of 1/2, 1/4, 1, 1/2, 1/8: log2 = -1, -2, 0, -1, -3, mean -1.4, sd sqrt(1.3).
    b = np.array([100.0, 80.0, 50.0, 120.0, 160.0])
    a = b * np.array([0.5, 0.25, 1.0, 0.5, 0.125])
    result = paired_log_ratio(a, b, a, b)
    assert result.ratio == pytest.approx(2**-1.4)
    t = -1.4 / (math.sqrt(1.3) / math.sqrt(5))
    assert result.p == pytest.approx(2 * stats.t.sf(abs(t), df=4))
    half = stats.t.ppf(0.975, 4) * math.sqrt(1.3) / math.sqrt(5)
    assert (result.low, result.high) == pytest.approx((2 ** (-1.4 - half), 2 ** (-1.4 + half)))
    # Just short of significance, and the interval agrees: it reaches past 1.
    assert result.p == pytest.approx(0.0516, abs=1e-4) and result.low < 1 < result.high
    assert (result.seeds, result.censored) == (5, 0)
    # Symmetric: b against a is the inverse ratio with the same p.
    back = paired_log_ratio(b, a, b, a)
    assert back.ratio == pytest.approx(1 / result.ratio)
    assert back.p == pytest.approx(result.p)


def test_a_target_never_reached_counts_at_what_its_method_spent():
    needed_a = [10.0, 20.0, 40.0]
    needed_b = [40.0, INF, 80.0]  # b missed on the second seed after spending 100
    result = paired_log_ratio(needed_a, needed_b, [50.0] * 3, [100.0] * 3)
    assert result.censored == 1
    assert result.ratio == pytest.approx(math.exp(np.mean(np.log([0.25, 0.2, 0.5]))))
    expected = stats.ttest_1samp(np.log([0.25, 0.2, 0.5]), 0.0)
    assert result.p == pytest.approx(expected.pvalue)


def test_quantiles_keep_a_target_never_reached_as_the_largest_ratio():
    values = [0.3, INF, 0.1, INF, 0.2]
    assert quantile(values, 0.5) == 0.3
    assert quantile(values, 0.25) == 0.2
    assert quantile(values, 0.75) == INF
    assert quantile([INF, INF, 0.1], 0.75) == INF  # not NaN
    assert describe(values) == "0.300 (IQR 0.200-inf, range 0.100-inf, 5 seeds)"
    finite = [0.91, 1.09, 0.93, 0.97, 0.95, 1.2]
    q1, _, q3 = statistics.quantiles(finite, n=4, method="inclusive")
    assert (quantile(finite, 0.25), quantile(finite, 0.75)) == pytest.approx((q1, q3))
    assert quantile(finite, 0.5) == pytest.approx(statistics.median(finite))


def five_seed_results() -> dict[int, dict[str, pd.DataFrame]]:
    """Five seeds' results frames with known ratios to the sweep (300 FLOPs, target 4.8 on every
    seed): TPE + ASHA 0.1 to 0.5 and random + ASHA 2 to 4 times that, both after a stopped trial
    whose intermediate loss (4.0) beats the target; random search without early stopping never
    gets there."""
    sweep = single(("completed", 5.0, 100.0), ("completed", 4.8, 100.0), ("completed", 4.9, 100.0))
    ratios, slower_by = [0.3, 0.1, 0.5, 0.2, 0.4], [2, 3, 2.5, 4, 2]
    return {
        seed: {
            "seed22": sweep,
            "tpe_asha": single(("early_stopped", 4.0, 10.0), ("completed", 4.7, 300 * ratio - 10)),
            "random_asha": single(
                ("early_stopped", 4.0, 10.0), ("completed", 4.75, 300 * ratio * slower - 10)
            ),
            "random": single(("completed", 4.9, 150.0), ("completed", 5.1, 150.0)),
        }
        for seed, (ratio, slower) in enumerate(zip(ratios, slower_by, strict=True))
    }


def five_seeds() -> dict[int, dict[str, pd.DataFrame]]:
    """The anytime curves of five_seed_results()."""
    return {
        seed: {method: anytime_curve(frame) for method, frame in by_method.items()}
        for seed, by_method in five_seed_results().items()
    }


def test_the_summary_reports_the_median_ratio_its_spread_and_the_paired_tests():
    curves = five_seeds()
    lines = summary_lines(curves)
    # The median of 0.1..0.5, not of the ratios the stopped trials' 4.0 would have given.
    assert lines[-1] == "search_efficiency: 0.300"
    assert "TPE + ASHA: FLOPs to the target / the sweep's FLOPs = 0.300 (IQR 0.200-0.400, " in (
        "\n".join(lines)
    )
    goal = lines[-2]
    assert goal.startswith("goal at most 0.333: the median meets it (3 of 5 seeds meet it)")
    # Ratios from 0.1 to 0.5 spread wider (0.4) than the median's margin to 1/3 (0.033).
    assert goal.endswith("this run does not settle it")
    sampler = next(line for line in lines if line.startswith("TPE + ASHA vs random + ASHA"))
    ratios = np.log([1 / 2, 1 / 3, 1 / 2.5, 1 / 4, 1 / 2])
    p = stats.ttest_1samp(ratios, 0.0).pvalue
    assert "geometric mean over 5 seeds" in sampler
    assert "paired t-test on log FLOPs" in sampler
    assert f"p = {p:.3g}" in sampler
    assert "TPE + ASHA beats random + ASHA significantly at 5%" in sampler
    plain = next(line for line in lines if line.startswith("TPE + ASHA vs random, no early"))
    assert "5 value(s) never reached the target" in plain
    assert "random, no early stopping" in "\n".join(lines)
    assert "never reached the target; best 4.9000" in "\n".join(lines)


def test_the_anytime_table_is_the_median_best_by_each_fraction_of_the_sweep():
    table = anytime_table(five_seeds())
    # TPE + ASHA reaches 4.7 at 0.1 to 0.5 of the sweep: at 1/4 on two seeds of five.
    assert table.loc["tpe_asha"].tolist() == [INF, INF, INF, 4.7, 4.7]
    # The sweep has its second config (4.8) at 2/3 of its FLOPs, its first (5.0) at 1/3.
    assert table.loc["seed22"].tolist() == [INF, INF, INF, 5.0, 4.8]
    assert table.loc["random"].tolist() == [INF, INF, INF, 4.9, 4.9]


def test_a_reused_experiment_must_have_been_run_with_the_same_settings(tmp_path):
    args = search_efficiency.parse_args(["--folder", str(tmp_path)])
    settings = search_efficiency.settings_for("tpe_asha", 1, args, 1e12)
    assert search_efficiency.state(settings) == "new"
    Path(settings.experiment_path).mkdir(parents=True)
    study = SearchStudy.create(
        settings.study_location, settings.name, ["minimize"], settings.to_dict(), {}
    )
    settings.store().write_manifest({"format": 1, "study": None})
    assert search_efficiency.state(settings) == "unfinished"
    study.mark_ended("2026-01-01T00:00:00Z")
    assert search_efficiency.state(settings) == "ended"
    # Another budget follows from the sweep, which is checked on its own.
    other_budget = search_efficiency.settings_for("tpe_asha", 1, args, 2e12)
    assert search_efficiency.state(other_budget) == "ended"
    longer = search_efficiency.parse_args(["--folder", str(tmp_path), "--max-steps", "200"])
    with pytest.raises(PicoError, match="was run with max_steps = 60, not 200"):
        search_efficiency.state(search_efficiency.settings_for("tpe_asha", 1, longer, 1e12))


def test_fewer_than_two_seeds_is_refused():
    with pytest.raises(PicoError, match="--seeds must be at least 2"):
        search_efficiency.parse_args(["--seeds", "1"])


def test_main_gives_the_sweeps_flops_as_budget_and_writes_every_curve(
    tmp_path, monkeypatch, capsys
):
    frames = five_seed_results()
    budgets = {}

    def reuse(settings, stack):
        """The results the experiment would hold, without Ray; the budget it was given."""
        method, seed = settings.name.rsplit("-seed", 1)
        budgets[settings.name] = settings.compute_budget
        return frames[int(seed)][method]

    monkeypatch.setattr(search_efficiency, "run", reuse)
    assert search_efficiency.main(["--folder", str(tmp_path)]) == 0
    assert budgets["seed22-seed0"] is None
    assert {
        budgets[f"{m}-seed{s}"] for m in ("tpe_asha", "random_asha", "random") for s in range(5)
    } == {300.0}
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "search_efficiency: 0.300"
    points = pd.read_csv(tmp_path / "anytime.csv")
    assert len(points) == 5 * (3 + 2 + 2 + 2)  # trials of the sweep and of each search
    assert set(points["method"]) == {"seed22", "tpe_asha", "random_asha", "random"}
    tpe = points[(points["seed"] == 1) & (points["method"] == "tpe_asha")]
    assert tpe["cumulative_flops"].tolist() == [10.0, 30.0]
    assert tpe["best"].tolist() == [INF, 4.7]
