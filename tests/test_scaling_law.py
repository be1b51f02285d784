"""pico/scaling_law.py against known truth: synthetic losses drawn from a known law.

The law is Chinchilla's shape with round numbers, E=1.7, A=400, alpha=0.34, B=410, beta=0.28,
on a 6 x 6 grid of sizes (1e7..1e9) and token counts (1e9..1e11), two decades each, with 1%
multiplicative noise. A Monte Carlo of 40 such datasets (seeds 0..39, 50 bootstrap resamples
each) set the tolerances: the point estimates' relative standard deviations were E 4.8%,
alpha 6.9%, beta 10.7% (A and B trade off against their exponents and spread far more: 43% and
92%), and each 90% interval covered its true value in 92% to 98% of the datasets. The tests
below refit 10 of those datasets (40 resamples each) and check each estimate to about 3 of
those standard deviations, their median to about 3 standard deviations of a median of 10, and
the intervals' coverage to what a true 90% rate gives with probability > 98%. Noiseless data
checks the optimiser itself, tightly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pico import scaling_law as sl
from pico.errors import PicoError

TRUE = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}
NOISE = 0.01
SIZES = np.logspace(7, 9, 6)
TOKENS = np.logspace(9, 11, 6)
DATASETS = 10
# About 3 Monte Carlo standard deviations of one point estimate, and of the median of 10
# (1.25 sd / sqrt(10) for a normal sample's median).
TOLERANCE = {"E": 0.15, "alpha": 0.2, "beta": 0.32}
MEDIAN_TOLERANCE = {"E": 0.06, "alpha": 0.08, "beta": 0.13}
# Of 10 intervals each covering with probability 0.9, 7 or more cover with probability 98.7%.
MIN_COVERED = 7


def true_loss(n, d):
    return (
        TRUE["E"]
        + TRUE["A"] / np.asarray(n) ** TRUE["alpha"]
        + TRUE["B"] / np.asarray(d) ** TRUE["beta"]
    )


def grid(sizes=SIZES, tokens=TOKENS):
    n, d = np.meshgrid(sizes, tokens)
    return n.ravel(), d.ravel()


def optimum_6nd(flops):
    """Chinchilla's closed form for C = 6 N D: N* = G (C/6)^(beta/(alpha+beta))."""
    alpha, beta = TRUE["alpha"], TRUE["beta"]
    g = (alpha * TRUE["A"] / (beta * TRUE["B"])) ** (1 / (alpha + beta))
    return g * (np.asarray(flops) / 6) ** (beta / (alpha + beta))


def true_fit() -> sl.LossLawFit:
    """A fit whose point estimate and every bootstrap sample are the true law."""
    point = np.array([TRUE[name] for name in sl.PARAMS])
    return sl.LossLawFit(
        **{name: sl.Estimate(TRUE[name], TRUE[name], TRUE[name]) for name in sl.PARAMS},
        residuals=np.zeros(9),
        samples=np.tile(point, (10, 1)),
        n_runs=9,
        n_sizes=3,
        n_token_counts=3,
    )


def noisy_losses(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d = grid()
    return n, d, true_loss(n, d) * np.exp(np.random.default_rng(seed).normal(0, NOISE, len(n)))


@pytest.fixture(scope="module")
def noisy_fits() -> list[sl.LossLawFit]:
    return [
        sl.fit_loss_law(*noisy_losses(seed), bootstrap=40, seed=seed) for seed in range(DATASETS)
    ]


# ------------------------------------------------------------------------------ the loss law


def test_noiseless_losses_give_back_the_law():
    n, d = grid(np.logspace(7, 9, 5), np.logspace(9, 11, 5))
    fit = sl.fit_loss_law(n, d, true_loss(n, d), bootstrap=10)
    for name, truth in TRUE.items():
        assert getattr(fit, name).value == pytest.approx(truth, rel=1e-3), name
    assert np.abs(fit.residuals).max() < 1e-6
    assert (fit.n_runs, fit.n_sizes, fit.n_token_counts) == (25, 5, 5)


def test_noisy_losses_recover_exponents_and_e_within_tolerance(noisy_fits):
    for name in TOLERANCE:
        values = np.array([getattr(fit, name).value for fit in noisy_fits])
        np.testing.assert_allclose(values, TRUE[name], rtol=TOLERANCE[name], err_msg=name)
        assert np.median(values) == pytest.approx(TRUE[name], rel=MEDIAN_TOLERANCE[name]), name
    for fit in noisy_fits:
        # Residuals are log(observed / fitted): they should look like the 1% noise drawn.
        assert 0.5 * NOISE < fit.residuals.std() < 1.5 * NOISE
        assert fit.samples.shape == (40, 5)


def test_bootstrap_intervals_cover_the_true_parameters(noisy_fits):
    for name, truth in TRUE.items():
        estimates = [getattr(fit, name) for fit in noisy_fits]
        assert all(estimate.low < estimate.high for estimate in estimates), name
        covered = sum(estimate.covers(truth) for estimate in estimates)
        assert covered >= MIN_COVERED, (name, covered)


def test_the_fit_is_deterministic_for_a_seed():
    n, d = grid(np.logspace(7, 9, 4), np.logspace(9, 11, 4))
    loss = true_loss(n, d) * np.exp(np.random.default_rng(1).normal(0, NOISE, len(n)))
    first = sl.fit_loss_law(n, d, loss, bootstrap=10, seed=3)
    second = sl.fit_loss_law(n, d, loss, bootstrap=10, seed=3)
    np.testing.assert_array_equal(first.samples, second.samples)


def test_predictions_and_their_intervals(noisy_fits):
    # Inside the data and ten times beyond its largest size and token count. A Monte Carlo of
    # 30 datasets put the relative error's sd at 0.4% and 1.6% there: 4 sd allowed. There the
    # law's interval covered the truth in 83% and 93% of datasets: percentile intervals from 36
    # runs run a little short inside the data, so that check has little slack.
    n, d = np.array([1e8, 1e10]), np.array([1e10, 1e12])
    truth = true_loss(n, d)
    covered = np.zeros(2, int)
    for fit in noisy_fits:
        law = sl.predict(fit, n, d)
        assert (abs(law.value / truth - 1) < [0.016, 0.064]).all()
        covered += (law.low <= truth) & (truth <= law.high)
        # One run's noise on top of the law's uncertainty: a wider interval, the same point.
        run = sl.predict(fit, n, d, new_run=True)
        assert (run.high - run.low > law.high - law.low).all()
        np.testing.assert_allclose(run.value, law.value)
    assert (covered >= MIN_COVERED).all(), covered
    # Broadcasting: one size against three token counts.
    assert sl.predict(noisy_fits[0], 1e8, np.array([1e9, 1e10, 1e11])).value.shape == (3,)


# ------------------------------------------------------------------------------ compute


def test_compute_optimal_matches_the_closed_form_for_6nd():
    flops = np.array([1e18, 1e21, 1e24])
    best = sl.compute_optimal(true_fit(), flops, lambda n: 6 * n)
    # Golden-section search resolves log N* to about sqrt(machine epsilon) of the loss.
    np.testing.assert_allclose(best.n.value, optimum_6nd(flops), rtol=1e-6)
    np.testing.assert_allclose(best.d.value, flops / (6 * best.n.value), rtol=1e-12)
    np.testing.assert_allclose(best.loss.value, true_loss(best.n.value, best.d.value))
    # Every bootstrap sample is the truth, so the intervals collapse onto it.
    np.testing.assert_allclose(best.n.low, best.n.value, rtol=1e-12)


def test_compute_optimal_with_an_offset_matches_a_brute_force_search():
    per_token = sl.FlopsPerToken(k=6.2, c=3e7, max_error=0.0)
    best = sl.compute_optimal(true_fit(), 1e20, per_token)
    log_n = np.linspace(np.log(1e6), np.log(1e12), 200_001)
    tokens = 1e20 / per_token(np.exp(log_n))
    brute = np.exp(log_n[np.argmin(true_loss(np.exp(log_n), tokens))])
    step = log_n[1] - log_n[0]
    assert abs(np.log(best.n.value / brute)) <= step
    assert best.n.value.shape == ()


def test_compute_optimal_intervals_cover_the_truth(noisy_fits):
    flops = np.array([1e19, 1e21])  # inside the data, and about 30 times beyond its largest run
    truth = optimum_6nd(flops)
    covered = np.zeros(2, int)
    for fit in noisy_fits:
        best = sl.compute_optimal(fit, flops, lambda n: 6 * n)
        assert (best.n.low <= best.n.high).all()
        covered += (best.n.low <= truth) & (truth <= best.n.high)
    assert (covered >= MIN_COVERED).all(), covered


def test_flops_per_token_line():
    n = np.array([1e5, 3e5, 1e6, 3e6])
    line = sl.fit_flops_per_token(n, 6 * n + 2e5)
    assert (line.k, line.c) == (pytest.approx(6), pytest.approx(2e5))
    assert line.max_error < 1e-9
    assert line(np.array([1e7]))[0] == pytest.approx(6e7 + 2e5)


# ------------------------------------------------------------------------------ IsoFLOP

BUDGETS = np.array([1e18, 1e19, 1e20, 1e21])


def isoflop_ladder(budgets=BUDGETS, half_decades=0.5, k=7):
    """Per budget, k sizes spanning +-half_decades around the true optimum, trained to C = 6ND."""
    n = np.concatenate(
        [optimum_6nd(c) * np.logspace(-half_decades, half_decades, k) for c in budgets]
    )
    flops = np.repeat(budgets, k)
    return n, flops / (6 * n), flops


def ladder_with(loss, budgets=BUDGETS):
    """An IsoFLOP ladder's (n, d, loss, flops) with losses from `loss(n, d)`."""
    n, d, flops = isoflop_ladder(budgets)
    return n, d, loss(n, d), flops


def test_isoflop_minima_recover_the_analytic_optimum():
    n, d, flops = isoflop_ladder()
    iso = sl.isoflop(n, d, true_loss(n, d), flops)
    minima = iso.minima
    assert list(minima["sizes"]) == [7] * 4 and minima["bracketed"].all()
    np.testing.assert_allclose(minima["flops"], BUDGETS)
    # The loss at fixed C is not a parabola in log N: over +-0.5 decades its asymmetry moves the
    # parabola's minimum by 1.0% (computed from the law), the same at every budget.
    np.testing.assert_allclose(minima["n_opt"], optimum_6nd(BUDGETS), rtol=0.015)
    np.testing.assert_allclose(minima["d_opt"], BUDGETS / (6 * optimum_6nd(BUDGETS)), rtol=0.015)
    best_loss = true_loss(optimum_6nd(BUDGETS), BUDGETS / (6 * optimum_6nd(BUDGETS)))
    np.testing.assert_allclose(minima["loss_opt"], best_loss, rtol=1e-3)
    # That same relative offset at every budget leaves the exponents exact.
    a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert iso.n_opt.exponent.value == pytest.approx(a, abs=1e-6)
    assert iso.d_opt.exponent.value == pytest.approx(1 - a, abs=1e-6)
    assert iso.n_opt(1e22) == pytest.approx(optimum_6nd(1e22), rel=0.015)


def test_isoflop_groups_rounded_budgets_and_labels_alike():
    n, d, flops = isoflop_ladder()
    jitter = np.exp(np.random.default_rng(2).uniform(-0.02, 0.02, len(n)))  # step rounding
    by_flops = sl.isoflop(n, d * jitter, true_loss(n, d * jitter), flops * jitter)
    labels = np.repeat(["a", "b", "c", "d"], 7)
    by_label = sl.isoflop(n, d * jitter, true_loss(n, d * jitter), flops * jitter, budget=labels)
    assert list(by_label.minima["budget"]) == ["a", "b", "c", "d"]
    np.testing.assert_allclose(by_flops.minima["n_opt"], by_label.minima["n_opt"])


def test_isoflop_with_noise_covers_the_exponent():
    n, d, flops = isoflop_ladder(budgets=np.logspace(18, 21, 5), half_decades=0.75)
    loss = true_loss(n, d) * np.exp(np.random.default_rng(4).normal(0, NOISE, len(n)))
    iso = sl.isoflop(n, d, loss, flops)
    a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    # A Monte Carlo of 50 such ladders (seeds 0..49): the exponent's sd was 0.022 and its 90%
    # interval covered the truth in 44 of them.
    assert iso.n_opt.exponent.covers(a)
    assert iso.n_opt.exponent.value == pytest.approx(a, abs=0.07)
    band = iso.n_opt.predict(np.array([1e19, 1e23]))
    assert (band.low < band.value).all() and (band.value < band.high).all()
    # The band widens away from the budgets run.
    assert np.diff(np.log(band.high / band.low))[0] > 0


def test_isoflop_leaves_out_a_budget_whose_minimum_was_not_run():
    n, d, flops = isoflop_ladder()
    # The largest budget's sizes all sit below its optimum: its minimum is beyond them.
    last = flops == BUDGETS[-1]
    n[last] = n[last] / 100
    d[last] = flops[last] / (6 * n[last])
    iso = sl.isoflop(n, d, true_loss(n, d), flops)
    assert list(iso.minima["bracketed"]) == [True, True, True, False]
    assert np.isnan(iso.minima["n_opt"].iloc[-1])
    assert iso.n_opt.df == 1  # three budgets


# ------------------------------------------------------------------------------ learning rate


def test_lr_law_recovers_gamma():
    n = np.logspace(5, 8, 7)
    lr = 0.05 * n**-0.3 * np.exp(np.random.default_rng(5).normal(0, 0.05, len(n)))
    law = sl.fit_lr_law(n, lr)
    assert law.exponent.covers(-0.3)
    # 5% noise on 7 sizes over three decades: the slope's standard error is 0.008.
    assert law.exponent.value == pytest.approx(-0.3, abs=0.04)
    assert law(1e6) == pytest.approx(0.05 * 1e6**-0.3, rel=0.15)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: sl.fit_loss_law(*grid(SIZES[:2]), np.ones(12)), "2 sizes"),
        (lambda: sl.fit_loss_law(*grid(SIZES, TOKENS[:2]), np.ones(12)), "2 token counts"),
        (lambda: sl.fit_loss_law([1e7, 1e8, 1e9], [1e9, 1e10, 1e11], [3, 2, 1]), "3 runs"),
        (lambda: sl.fit_loss_law(*grid(), np.r_[np.nan, np.ones(35)]), "1 of 36 runs"),
        (lambda: sl.fit_loss_law(*grid(), np.ones(35)), "36 sizes, 36 token counts and 35"),
        (lambda: sl.fit_loss_law(*grid(), np.ones(36), bootstrap=0), "bootstrap"),
        (lambda: sl.isoflop(*ladder_with(true_loss, BUDGETS[:2])), "2 of 2 budgets"),
        (lambda: sl.isoflop(*ladder_with(lambda n, d: 9 - np.log(n) ** 2 / 1e3)), "not convex"),
        (
            lambda: sl.isoflop(*ladder_with(true_loss), budget=np.r_[np.nan, np.ones(27)]),
            "1 of them missing",
        ),
        (lambda: sl.fit_lr_law([1e6, 1e7, 1e7], [1e-3, 2e-3, 3e-3]), "got 2"),
        (lambda: sl.fit_lr_law([1e6, 1e7, 1e8], [1e-3, 0, 3e-3]), "positive"),
        (lambda: sl.fit_flops_per_token([1e6, 1e6], [6e6, 6e6]), ">= 2 distinct sizes"),
        (lambda: sl.compute_optimal(true_fit(), np.inf, lambda n: 6 * n), "finite"),
    ],
)
def test_bad_input_raises_one_line(call, words):
    with pytest.raises(PicoError) as caught:
        call()
    message = str(caught.value)
    assert words in message and "\n" not in message


def test_too_few_budgets_says_how_to_get_more():
    n, d, flops = isoflop_ladder(BUDGETS[:2])
    with pytest.raises(PicoError, match=r"needs >= 3 budgets .*--ladder"):
        sl.isoflop(n, d, true_loss(n, d), flops)
    with pytest.raises(PicoError, match=r"at 2 sizes .*--ladder"):
        sl.fit_loss_law(*grid(SIZES[:2]), np.ones(12))


# ------------------------------------------------------------------------------ frames


def trial(trial_id, arch, status, n_params, loss, lr=1e-3, phase="search", evals=2):
    """A trial's rows: `evals` evaluations, the last flagged, the final one with `loss`."""
    rows = []
    for step in range(1, evals + 1):
        rows.append(
            {
                "trial_id": trial_id,
                "arch": arch,
                "status": status,
                "phase": phase,
                "step": step,
                "is_last": step == evals,
                "n_params": n_params,
                "tokens_seen": 1000 * step,
                "flops_per_token": 6 * n_params,
                "train_flops": 6.0 * n_params * 1000 * step,
                "val_loss": loss if step == evals else loss + 1,
                "hp_lr": lr,
            }
        )
    return rows


def results_frame() -> pd.DataFrame:
    rows = [
        *trial("00000", "lstm", "completed", 100, 3.0, lr=1e-3),
        *trial("00001", "lstm", "completed", 100, 2.9, lr=3e-3),
        *trial("00002", "lstm", "early_stopped", 200, 2.5),
        *trial("00003", "lstm", "diverged", 300, np.nan),
        *trial("00004", "lstm", "completed", 300, 2.7, phase="confirm"),
        *trial("00005", "lstm", "completed", 400, np.nan),
        *trial("00006", "lstm", "stopped", 500, 2.6),
        *trial("00007", "lstm", "errored", 600, 2.6),
        *trial("00008", "kv_transformer", "completed", 700, 2.4),
    ]
    return pd.DataFrame(rows)


def test_scaling_runs_keep_completed_search_trials_only():
    runs = sl.scaling_runs(results_frame())
    assert sorted(runs) == ["kv_transformer", "lstm"]
    assert list(runs["lstm"]["trial_id"]) == ["00000", "00001"]
    assert list(runs["lstm"]["val_loss"]) == [3.0, 2.9]  # the final rows, not earlier ones
    assert list(runs["lstm"]["tokens_seen"]) == [2000, 2000]
    assert list(runs["kv_transformer"]["n_params"]) == [700]


def test_scaling_runs_without_a_phase_column_and_with_a_budget():
    frame = results_frame().drop(columns="phase").assign(ladder=1e12)
    runs = sl.scaling_runs(frame, budget_column="ladder")
    # Without phase the confirmation rerun is indistinguishable from a search trial.
    assert list(runs["lstm"]["trial_id"]) == ["00000", "00001", "00004"]
    assert (runs["lstm"]["budget"] == 1e12).all()


def test_scaling_runs_refuse_a_file_without_converged_runs():
    frame = results_frame()
    with pytest.raises(PicoError, match="never ASHA-stopped"):
        sl.scaling_runs(frame[frame["status"] != "completed"])
    with pytest.raises(PicoError, match=r"lack the column\(s\) train_flops"):
        sl.scaling_runs(frame.drop(columns="train_flops"))


def test_best_lrs_pick_each_size_s_best_run():
    best = sl.best_lrs(sl.scaling_runs(results_frame())["lstm"])
    assert list(best["n_params"]) == [100]
    assert best["lr"].iloc[0] == 3e-3 and best["n_lrs"].iloc[0] == 2
