"""pico/stats.py against known truth: coverage, false positives, Holm by hand, small frames.

The simulations draw thousands of studies at once (numpy along a leading axis) with fixed seeds.
A rate estimated from 2,000 studies has a binomial sampling error (sd 0.49% around 5%), so each
bound below is the rate that a true rate of exactly 5% exceeds with probability 1%: the binomial
99th percentile for one rate (6.15%), and the 1 - 1%/k percentile for the largest of k rates
(6.5% for nine), since the largest of k noisy estimates is higher than a single one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.synthetic import make_results
from pico import stats

STUDIES = 2000
SEEDS = 5


def rate_bound(k: int = 1) -> float:
    """The largest of k false-positive rates, each truly 5%, stays below this 99% of the time."""
    return sps.binom.ppf(1 - 0.01 / k, STUDIES, 0.05) / STUDIES


SEED_EFFECT, OWN_NOISE = 0.02, 0.02  # shared by every config on a seed; each run's own


def confirmation_frame(losses: dict[str, list[float]], arch: dict[str, str]) -> pd.DataFrame:
    """A results frame: one completed search trial per config plus its confirmation runs.

    `losses[config]` is its search loss followed by one loss per confirmation seed (1, 2, ...);
    a NaN there is a confirmation run that errored.
    """
    rows = []
    for config, (search, *runs) in losses.items():
        rows.append(row(config, arch[config], search, "search", None, seed=0))
        for seed, loss in enumerate(runs, start=1):
            status = "errored" if np.isnan(loss) else "completed"
            trial = f"{config}-c{seed}"
            rows.append(row(trial, arch[config], loss, "confirm", config, seed, status))
    return pd.DataFrame(rows)


def row(trial, arch, loss, phase, confirms, seed, status="completed", step=100, last=True):
    """One final evaluation row with the columns the statistics read."""
    return {
        "trial_id": trial,
        "arch": arch,
        "status": status,
        "phase": phase,
        "confirms": confirms,
        "seed": seed,
        "step": step,
        "is_last": last,
        "val_loss": loss,
        "val_bpb": loss / 2,
    }


# ------------------------------------------------------------------ known truth, simulated


def test_intervals_cover_the_true_mean_in_95_percent_of_studies():
    rng = np.random.default_rng(11)
    truth = rng.uniform(3, 5, STUDIES)
    runs = truth[:, None] + rng.normal(0, 0.03, (STUDIES, SEEDS))
    interval = stats.mean_interval(runs)
    covered = (interval.low <= truth) & (truth <= interval.high)
    assert 0.93 <= covered.mean() <= 0.97, covered.mean()
    assert interval.n == SEEDS and np.allclose(interval.sd, runs.std(axis=1, ddof=1))


def test_confirmation_summary_intervals_cover_the_true_mean():
    """The same, through the frame: 2,000 confirmed configs, each a study of its own."""
    rng = np.random.default_rng(12)
    truth = rng.uniform(3, 5, STUDIES)
    runs = truth[:, None] + rng.normal(0, 0.03, (STUDIES, SEEDS))
    configs = [f"s{i:04d}" for i in range(STUDIES)]
    frame = pd.DataFrame(
        {
            "trial_id": [f"{c}-{k}" for c in configs for k in range(SEEDS)],
            "arch": "lstm",
            "status": "completed",
            "phase": "confirm",
            "confirms": np.repeat(configs, SEEDS),
            "seed": np.tile(np.arange(SEEDS), STUDIES),
            "step": 100,
            "is_last": True,
            "val_loss": runs.ravel(),
            "val_bpb": runs.ravel(),
        }
    )
    summary = stats.confirmation_summary(frame).set_index("config").loc[configs]
    covered = (summary["val_loss_low"] <= truth) & (truth <= summary["val_loss_high"])
    assert 0.93 <= covered.mean() <= 0.97, covered.mean()
    assert (summary["n"] == SEEDS).all()


def test_paired_difference_intervals_cover_the_true_difference():
    rng = np.random.default_rng(13)
    seed_effect = rng.normal(0, SEED_EFFECT, (STUDIES, SEEDS))
    a = 4.00 + seed_effect + rng.normal(0, OWN_NOISE, (STUDIES, SEEDS))
    b = 4.03 + seed_effect + rng.normal(0, OWN_NOISE, (STUDIES, SEEDS))
    d = stats.paired_difference(a, b)
    covered = (d.low <= -0.03) & (d.high >= -0.03)
    assert 0.93 <= covered.mean() <= 0.97, covered.mean()
    assert d.paired and d.n_a == SEEDS


def identical_studies(rng: np.random.Generator, archs: int = 3, configs: int = 3):
    """Confirmation runs of identical configs: (studies, archs, configs, seeds), plus search
    scores (studies, archs, configs) from one independent run each."""
    shape = (STUDIES, archs, configs, SEEDS)
    seed_effect = rng.normal(0, SEED_EFFECT, (STUDIES, 1, 1, SEEDS))
    runs = 4.0 + seed_effect + rng.normal(0, OWN_NOISE, shape)
    search = 4.0 + rng.normal(0, np.hypot(SEED_EFFECT, OWN_NOISE), shape[:-1])
    return runs, search


def family(runs: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """compare_confirmed's family, vectorised: each architecture's best by `key` against the
    others' best, and within each architecture every other config against its best.

    Returns the two sides, (studies, comparisons, seeds) each.
    """
    order = np.argsort(key, axis=-1)
    ranked = np.take_along_axis(runs, order[..., None], axis=2)  # each arch's best first
    n_arch, n_conf = runs.shape[1], runs.shape[2]
    pairs = [
        (ranked[:, i, 0], ranked[:, j, 0]) for i in range(n_arch) for j in range(i + 1, n_arch)
    ]
    pairs += [(ranked[:, i, 0], ranked[:, i, k]) for i in range(n_arch) for k in range(1, n_conf)]
    return np.stack([p[0] for p in pairs], axis=1), np.stack([p[1] for p in pairs], axis=1)


def test_identical_configs_give_at_most_5_percent_false_positives():
    runs, search = identical_studies(np.random.default_rng(21))
    a, b = family(runs, search)  # 3 between + 6 within: 9 comparisons per study
    p = stats.paired_difference(a, b).p
    p_holm = stats.holm(p)
    per_comparison = (p < 0.05).mean(axis=0)
    per_comparison_holm = (p_holm < 0.05).mean(axis=0)
    familywise = (p_holm < 0.05).any(axis=1).mean()
    assert per_comparison.max() <= rate_bound(9), per_comparison
    assert per_comparison_holm.max() <= rate_bound(9), per_comparison_holm
    assert familywise <= rate_bound(), familywise
    # Without the correction, some comparison of the nine is "significant" in about a third.
    assert (p < 0.05).any(axis=1).mean() > 0.2


def test_choosing_the_best_on_the_confirmation_runs_would_inflate_false_positives():
    """Why compare_confirmed picks each architecture's best by search score, not confirmed mean."""
    runs, _ = identical_studies(np.random.default_rng(22))
    a, b = family(runs, runs.mean(axis=-1))
    p = stats.paired_difference(a, b).p
    best_against_worst = [4, 6, 8]  # within each arch: the best against the third
    assert (p[:, best_against_worst] < 0.05).mean(axis=0).min() > 0.08


def test_welch_fallback_keeps_its_false_positive_rate():
    rng = np.random.default_rng(23)
    a = 4.0 + rng.normal(0, 0.03, (STUDIES, SEEDS))
    b = 4.0 + rng.normal(0, 0.05, (STUDIES, SEEDS - 1))
    d = stats.welch_difference(a, b)
    assert (d.p < 0.05).mean() <= rate_bound()
    assert not d.paired and (d.n_a, d.n_b) == (SEEDS, SEEDS - 1)
    assert "seeds not shared" in d.method


def test_a_real_difference_is_found():
    rng = np.random.default_rng(24)
    seed_effect = rng.normal(0, SEED_EFFECT, (STUDIES, SEEDS))
    a = 4.00 + seed_effect + rng.normal(0, OWN_NOISE, (STUDIES, SEEDS))
    b = 4.05 + seed_effect + rng.normal(0, OWN_NOISE, (STUDIES, SEEDS))
    found = (stats.paired_difference(a, b).p < 0.05).mean()
    # The power the t distribution predicts: the differences have sd sqrt(2) * OWN_NOISE (the
    # seed's effect cancels), so t follows a noncentral t with 4 degrees of freedom.
    shift = 0.05 / (np.sqrt(2) * OWN_NOISE / np.sqrt(SEEDS))
    critical = sps.t.ppf(0.975, SEEDS - 1)
    power = sps.nct.sf(critical, SEEDS - 1, shift) + sps.nct.cdf(-critical, SEEDS - 1, shift)
    assert abs(found - power) < 3 * np.sqrt(power * (1 - power) / STUDIES), (found, power)


# ------------------------------------------------------------------ by hand


def test_holm_against_hand_computed_values():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04).
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([0.02]) == pytest.approx([0.02])  # a family of one: unchanged
    # An untested comparison stays NaN and does not count in the family.
    adjusted = stats.holm([np.nan, 0.01, 0.02])
    assert np.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.02, 0.02])
    assert stats.holm([]).shape == (0,)


def test_holm_is_monotone_between_raw_and_bonferroni():
    p = np.random.default_rng(3).uniform(0, 0.2, (50, 7))
    adjusted = stats.holm(p)
    order = np.argsort(p, axis=1)
    assert (np.diff(np.take_along_axis(adjusted, order, axis=1), axis=1) >= 0).all()
    assert (adjusted >= p).all() and (adjusted <= np.minimum(7 * p, 1)).all()
    assert stats.holm(p[3]) == pytest.approx(adjusted[3])  # each row is its own family


def test_mean_interval_by_hand():
    interval = stats.mean_interval([4.10, 4.12, 4.08])
    half = sps.t.ppf(0.975, 2) * 0.02 / np.sqrt(3)
    assert (interval.mean, interval.sd, interval.n) == pytest.approx((4.10, 0.02, 3))
    assert (interval.low, interval.high) == pytest.approx((4.10 - half, 4.10 + half))
    one = stats.mean_interval([4.1])
    assert one.mean == 4.1 and np.isnan(one.sd) and np.isnan(one.low)


def test_identical_runs_are_no_evidence_of_a_difference():
    d = stats.paired_difference([4.1, 4.2, 4.3], [4.1, 4.2, 4.3])
    assert d.difference == 0 and d.p == 1.0


HAND_LOSSES = {
    # config: search loss, then confirmation runs on seeds 1, 2, 3 (and 4)
    "s1": [4.00, 4.10, 4.12, 4.08],
    "s2": [4.05, 4.15, 4.16, 4.17],
    "s3": [3.90, 3.95, 3.96, 3.94, np.nan],
}
HAND_ARCH = {"s1": "lstm", "s2": "lstm", "s3": "kv_transformer"}


def test_confirmation_summary_on_a_hand_made_frame():
    frame = confirmation_frame(HAND_LOSSES, HAND_ARCH)
    # An earlier evaluation of a confirmation run: only the last row counts.
    frame = pd.concat(
        [frame, pd.DataFrame([row("s1-c1", "lstm", 9.9, "confirm", "s1", 1, step=50, last=False)])]
    )
    summary = stats.confirmation_summary(frame).set_index("config")
    assert list(summary.index) == ["s1", "s2", "s3"]  # arch order, then search score
    s1 = summary.loc["s1"]
    assert (s1["arch"], s1["runs"], s1["n"]) == ("lstm", 3, 3)
    assert s1["val_loss_mean"] == pytest.approx(4.10)
    assert s1["val_loss_sd"] == pytest.approx(0.02)
    half = sps.t.ppf(0.975, 2) * 0.02 / np.sqrt(3)
    assert s1["val_loss_low"] == pytest.approx(4.10 - half)
    assert s1["val_loss_gap"] == pytest.approx(4.00 - 4.10)  # the search was lucky
    assert s1["val_bpb_mean"] == pytest.approx(2.05)
    s3 = summary.loc["s3"]
    assert (s3["runs"], s3["n"]) == (4, 3)  # the errored run is counted, not averaged


def test_compare_confirmed_on_a_hand_made_frame():
    frame = confirmation_frame(HAND_LOSSES, HAND_ARCH)
    table = stats.compare_confirmed(frame)
    assert list(table["comparison"]) == ["between architectures", "within lstm"]
    between, within = table.iloc[0], table.iloc[1]
    assert (between["better"], between["worse"]) == ("kv_transformer s3", "lstm s1")
    assert between["difference"] == pytest.approx(0.15)
    # s2 - s1 by seed: 0.05, 0.04, 0.09 -> mean 0.06, sd sqrt(0.0007), t = 0.06 / (sd / sqrt 3).
    t = 0.06 / (np.sqrt(0.0007) / np.sqrt(3))
    p = 2 * sps.t.sf(t, 2)
    assert (within["better"], within["worse"]) == ("lstm s1", "lstm s2")
    assert within["difference"] == pytest.approx(0.06)
    assert within["p"] == pytest.approx(p)
    assert list(table["p_holm"]) == pytest.approx(list(stats.holm(table["p"].to_numpy())))
    assert within["test"] == "paired t, 3 seeds"
    for r in table.itertuples():
        verdict = "real at 5%" if r.significant else "not distinguishable from noise at 5%"
        assert r.sentence.endswith(verdict) and f"p_holm = {r.p_holm:.2g}" in r.sentence
    assert between["sentence"].startswith("kv_transformer s3 beats lstm s1 by 0.1500 nats (95% CI")


def test_runs_without_shared_seeds_fall_back_to_welch():
    frame = confirmation_frame(HAND_LOSSES, HAND_ARCH)
    s2 = frame["confirms"] == "s2"
    frame.loc[s2, "seed"] += 10  # s2 ran on other seeds than s1
    within = stats.compare_confirmed(frame).iloc[1]
    assert within["test"] == "Welch t, 3 vs 3 runs (seeds not shared)"
    assert within["difference"] == pytest.approx(0.06)


def test_noise_floor_pools_the_seed_to_seed_variance():
    floor = stats.noise_floor(confirmation_frame(HAND_LOSSES, HAND_ARCH))
    # Variances 0.02², 0.01², 0.01², two degrees of freedom each.
    assert floor.sd == pytest.approx(np.sqrt((0.0004 + 0.0001 + 0.0001) / 3))
    assert (floor.df, floor.runs, floor.configs) == (6, 9, 3)
    assert floor.band == pytest.approx(sps.t.ppf(0.975, 6) * np.sqrt(2) * floor.sd)


def test_files_without_confirmation_give_empty_answers(tmp_path):
    old = pd.read_parquet(make_results(tmp_path / "old.parquet", n_trials=12))
    assert "phase" not in old.columns
    assert stats.confirmation_summary(old).empty
    assert stats.compare_confirmed(old).empty
    assert stats.answer_lines(old) == []
    assert np.isnan(stats.noise_floor(old).sd)
    searched = old.assign(phase="search", confirms=None)  # the new columns, no confirmation
    assert stats.confirmation_summary(searched).empty and stats.answer_lines(searched) == []


def test_the_answer_is_short_and_says_who_wins(tmp_path):
    path = make_results(tmp_path / "r.parquet", n_trials=90, seed=1, confirm_top=2, confirm_seeds=4)
    lines = stats.answer_lines(pd.read_parquet(path))
    assert 3 <= len(lines) <= 8, lines
    assert any(line.startswith("Answer: kv_transformer wins") for line in lines), lines
    assert lines[-1].startswith("Noise floor: seed-to-seed sd")
    one_arch = confirmation_frame({"s1": HAND_LOSSES["s1"]}, HAND_ARCH)
    assert "only lstm was confirmed" in "\n".join(stats.answer_lines(one_arch))


def test_the_search_pick_is_a_completed_trial_before_a_stopped_one():
    frame = confirmation_frame(HAND_LOSSES, HAND_ARCH)
    frame.loc[frame["trial_id"] == "s1", "status"] = "early_stopped"  # as launch/confirm.py ranks
    summary = stats.confirmation_summary(frame).set_index("config")
    assert list(summary.index) == ["s2", "s1", "s3"]
    assert np.isnan(summary.loc["s1", "val_loss_gap"])  # a shorter run's loss does not compare
    between = stats.compare_confirmed(frame).iloc[0]
    assert between["worse"] == "lstm s2"  # lstm's best is now s2
