"""Scaling laws from a search's trials: the loss law, IsoFLOP minima, compute-optimal sizes and
the best learning rate against size, each with an interval.

Three questions, two independent answers to the middle one:
- how final loss falls with parameters N and training tokens D: `fit_loss_law` fits
  L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3) with a Huber loss on log
  losses from many starting points, and bootstraps runs for intervals; `predict` evaluates it;
- which N and D minimise loss at a compute C = flops_per_token(N) * D: `compute_optimal` from the
  loss law, and `isoflop` from the runs directly (a parabola of loss against log N per budget,
  then power laws N_opt ∝ C^a and D_opt ∝ C^b across budgets; Hoffmann et al.'s approach 2);
- how the best learning rate moves with N: `fit_lr_law`, a power law lr* ∝ N^gamma.

`scaling_runs` turns a results DataFrame into these inputs (completed search trials only) and
`best_lrs` picks each size's best learning rate. Method, assumptions and when not to trust an
extrapolation: docs/scaling_laws.md. Pure numpy, scipy and pandas: nothing here imports Ray or
torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import optimize, stats

from pico.errors import PicoError

LEVEL = 0.90  # every interval: the issue asks for a 90% interval on the predicted loss
BOOTSTRAP = 200  # bootstrap resamples of the runs
HUBER_DELTA = 1e-3  # on log-loss residuals, as Hoffmann et al. 2022 and Besiroglu et al. 2024
MIN_SIZES = 3  # a curve in N (an exponent and a scale above E) needs three distinct sizes
MIN_BUDGETS = 3  # likewise in D; and a power law across budgets with an interval needs three
PARAMS = ("E", "A", "alpha", "B", "beta")
LADDER_HINT = "launch/search.py --ladder"  # how a user gets more sizes and budgets
# Starting exponents for the loss law: every published fit lies inside this range.
EXPONENT_GRID = np.linspace(0.05, 1.5, 12)
STARTS = 4  # the best grid points the nonlinear fit starts from
MAX_EXPONENT = 4.0  # keeps a poorly determined bootstrap fit from running off to infinity
SAME_SIZE = 0.01  # relative difference under which two N (or two D) count as the same


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its interval at `level`."""

    value: float
    low: float
    high: float
    level: float = LEVEL

    def covers(self, truth: float) -> bool:
        """Whether `truth` lies inside the interval."""
        return bool(self.low <= truth <= self.high)


@dataclass(frozen=True)
class Prediction:
    """Point predictions and their interval at `level`, shaped like the broadcast inputs."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float = LEVEL


@dataclass(frozen=True)
class LossLawFit:
    """L(N, D) = E + A/N^alpha + B/D^beta fitted to final losses, with bootstrap intervals.

    `residuals` are log(observed / fitted), one per run in input order. `samples` holds one row
    of (E, A, alpha, B, beta) per bootstrap resample: predictions take their intervals from it.
    """

    E: Estimate
    A: Estimate
    alpha: Estimate
    B: Estimate
    beta: Estimate
    residuals: np.ndarray
    samples: np.ndarray
    n_runs: int
    n_sizes: int
    n_token_counts: int

    def loss(self, n: ArrayLike, d: ArrayLike) -> np.ndarray:
        """The fitted law's loss at N parameters and D tokens (point estimates)."""
        point = np.array([getattr(self, name).value for name in PARAMS])
        return _law(point, np.asarray(n, float), np.asarray(d, float))


@dataclass(frozen=True)
class FlopsPerToken:
    """flops_per_token ≈ k * N + c, fitted across sizes; `max_error` is its largest relative
    error on the runs it was fitted to."""

    k: float
    c: float
    max_error: float

    def __call__(self, n: ArrayLike) -> np.ndarray:
        return self.k * np.asarray(n, float) + self.c


@dataclass(frozen=True)
class ComputeOptimal:
    """The N and D that minimise the fitted loss at each compute C, and that loss, with
    bootstrap intervals; arrays shaped like `flops`."""

    flops: np.ndarray
    n: Prediction
    d: Prediction
    loss: Prediction


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x^exponent fitted by least squares on logs, with Student-t intervals.

    `residuals` are log(y / fitted). `x_mean`, `sxx`, `sd` and `df` (mean and spread of log x,
    residual standard deviation, degrees of freedom) give the band of `predict`.
    """

    exponent: Estimate
    coefficient: Estimate
    residuals: np.ndarray
    x_mean: float
    sxx: float
    sd: float
    df: int

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return self.coefficient.value * np.asarray(x, float) ** self.exponent.value

    def predict(self, x: ArrayLike) -> Prediction:
        """The fitted line at `x` with its confidence band (where the law is, not where one
        new observation falls)."""
        log_x = np.log(np.asarray(x, float))
        level = self.exponent.level
        half = (
            stats.t.ppf((1 + level) / 2, self.df)
            * self.sd
            * np.sqrt(1 / (self.df + 2) + (log_x - self.x_mean) ** 2 / self.sxx)  # df + 2 points
        )
        centre = np.log(self.coefficient.value) + self.exponent.value * log_x
        return Prediction(np.exp(centre), np.exp(centre - half), np.exp(centre + half), level)


@dataclass(frozen=True)
class IsoFlopFit:
    """Each budget's loss minimum and the power laws N_opt(C), D_opt(C) across budgets.

    `minima` has one row per budget: `budget` (its label), `flops` (geometric mean of its runs'
    train_flops), `sizes` (distinct N run), `n_opt`, `d_opt`, `loss_opt` (the parabola's minimum)
    `bracketed` (whether that minimum lies inside the sizes run; only those budgets enter the
    power laws) and `reason` ("used", or why the budget was left out).
    """

    minima: pd.DataFrame
    n_opt: PowerLaw
    d_opt: PowerLaw


# ------------------------------------------------------------------------------ the loss law


def fit_loss_law(
    n: ArrayLike,
    d: ArrayLike,
    loss: ArrayLike,
    *,
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
    level: float = LEVEL,
    huber_delta: float = HUBER_DELTA,
) -> LossLawFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to final losses of runs with N parameters
    trained on D tokens.

    The fit minimises a Huber loss (`huber_delta`) on log(fitted) - log(observed), in the
    parametrisation log L = logsumexp(log A - alpha log N, log B - beta log D, log E), from the
    best few points of a grid of exponents (for fixed exponents the law is linear in E, A and B,
    so each grid point's E, A, B come from a non-negative least-squares solve). Intervals are
    bootstrap percentiles at `level` over `bootstrap` resamples of the runs with replacement,
    each refitted from the point estimate; `seed` fixes the resamples.
    """
    n, d, loss = _check_runs(n, d, loss)
    if bootstrap < 10:
        raise PicoError(f"bootstrap must be >= 10 resamples for an interval, got {bootstrap}")
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    # Centred logs keep log A and alpha (and log B and beta) from being near-collinear.
    centre = np.array([log_n.mean(), log_d.mean()])
    u, v = log_n - centre[0], log_d - centre[1]

    grid = _grid_starts(u, v, loss, huber_delta)
    theta = _fit_centred(u, v, log_loss, huber_delta, grid)
    # A resample's optimum lies near the full data's, so each resample starts there alone: on
    # the synthetic law of tests/test_scaling_law.py a fresh grid of starts found a lower
    # optimum in 1 of 200 resamples, at several times the cost.
    rng = np.random.default_rng(seed)
    samples = np.empty((bootstrap, len(PARAMS)))
    for i in range(bootstrap):
        pick = rng.integers(0, len(loss), len(loss))
        boot = _fit_centred(u[pick], v[pick], log_loss[pick], huber_delta, [theta])
        samples[i] = _natural(boot, centre)

    point = _natural(theta, centre)
    low, high = _percentiles(samples, level)
    estimates = {
        name: Estimate(float(point[j]), float(low[j]), float(high[j]), level)
        for j, name in enumerate(PARAMS)
    }
    return LossLawFit(
        **estimates,
        residuals=log_loss - np.log(_law(point, n, d)),
        samples=samples,
        n_runs=len(loss),
        n_sizes=_distinct(n),
        n_token_counts=_distinct(d),
    )


def predict(
    fit: LossLawFit, n: ArrayLike, d: ArrayLike, *, level: float = LEVEL, new_run: bool = False
) -> Prediction:
    """The fitted loss at N parameters and D tokens (broadcast), with a bootstrap interval.

    By default the interval is where the law is (parameter uncertainty only). `new_run=True`
    widens it to where one new run's loss falls: every bootstrap prediction is combined with
    every residual of the fit (centred, and inflated by sqrt(runs / (runs - 5)) for the five
    fitted parameters), as the multiplicative noise exp(residual), so that a single seed's noise
    is inside it too.
    """
    n, d = np.broadcast_arrays(np.asarray(n, float), np.asarray(d, float))
    if not (np.isfinite(n).all() and np.isfinite(d).all() and (n > 0).all() and (d > 0).all()):
        raise PicoError("predict needs finite, positive sizes and token counts")
    draws = _law(fit.samples.T[..., None], n.ravel(), d.ravel())  # (resamples, points)
    if new_run:
        noise = fit.residuals - fit.residuals.mean()
        noise = noise * np.sqrt(fit.n_runs / max(fit.n_runs - len(PARAMS), 1))
        draws = (draws[:, None, :] * np.exp(noise)[None, :, None]).reshape(-1, n.size)
    low, high = _percentiles(draws, level)
    return Prediction(fit.loss(n, d), low.reshape(n.shape), high.reshape(n.shape), level)


def _law(params: np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """E + A/N^alpha + B/D^beta for params (E, A, alpha, B, beta), each possibly an array."""
    e, a, alpha, b, beta = params
    return e + a * np.exp(-alpha * np.log(n)) + b * np.exp(-beta * np.log(d))


def _check_runs(n: ArrayLike, d: ArrayLike, loss: ArrayLike) -> tuple[np.ndarray, ...]:
    """The three inputs as float arrays, or PicoError saying what is missing."""
    n, d, loss = (np.asarray(x, float).ravel() for x in (n, d, loss))
    if not len(n) == len(d) == len(loss):
        raise PicoError(
            f"the fit needs one size, token count and loss per run; got {len(n)} sizes, "
            f"{len(d)} token counts and {len(loss)} losses"
        )
    bad = ~(np.isfinite(n) & np.isfinite(d) & np.isfinite(loss) & (n > 0) & (d > 0) & (loss > 0))
    if bad.any():
        raise PicoError(
            f"the fit needs finite, positive sizes, token counts and losses; {bad.sum()} of "
            f"{len(n)} runs are not: keep completed runs only (scaling_runs)"
        )
    sizes, token_counts = _distinct(n), _distinct(d)
    if sizes < MIN_SIZES or token_counts < MIN_BUDGETS or len(n) <= len(PARAMS):
        raise PicoError(
            f"the fit needs final losses of > {len(PARAMS)} runs at >= {MIN_SIZES} distinct "
            f"model sizes and >= {MIN_BUDGETS} token counts; got {len(n)} runs at {sizes} sizes "
            f"and {token_counts} token counts: run a ladder with more sizes and "
            f"budgets ({LADDER_HINT})"
        )
    return n, d, loss


def _distinct(values: np.ndarray) -> int:
    """How many distinct values, counting those within SAME_SIZE (relative) as one."""
    log_sorted = np.sort(np.log(values))
    return int(1 + (np.diff(log_sorted) > np.log1p(SAME_SIZE)).sum())


def _fit_centred(
    u: np.ndarray,
    v: np.ndarray,
    log_loss: np.ndarray,
    delta: float,
    starts: list[np.ndarray],
) -> np.ndarray:
    """The best Huber fit of theta = (a, alpha, b, beta, e), where
    log L = logsumexp(a - alpha u, b - beta v, e) on centred log sizes u and log tokens v,
    from each of `starts`."""

    def residuals(theta: np.ndarray) -> np.ndarray:
        return _log_law(theta, u, v) - log_loss

    def jacobian(theta: np.ndarray) -> np.ndarray:
        a, alpha, b, beta, e = theta
        terms = np.stack([a - alpha * u, b - beta * v, np.full_like(u, e)])
        weights = np.exp(terms - _logsumexp(terms))  # d log L / d each term's log
        return np.column_stack(
            [weights[0], -weights[0] * u, weights[1], -weights[1] * v, weights[2]]
        )

    lower = [-np.inf, 0.0, -np.inf, 0.0, -np.inf]
    upper = [np.inf, MAX_EXPONENT, np.inf, MAX_EXPONENT, np.inf]
    best = None
    for start in starts:
        result = optimize.least_squares(
            residuals,
            np.clip(start, lower, upper),
            jac=jacobian,
            bounds=(lower, upper),
            loss="huber",
            f_scale=delta,
        )
        if best is None or result.cost < best.cost:
            best = result
    return best.x


def _grid_starts(u: np.ndarray, v: np.ndarray, loss: np.ndarray, delta: float) -> list:
    """The STARTS best points of a grid of exponents, each with its best non-negative E, A, B
    (least squares on relative errors), ranked by the Huber loss the fit minimises."""
    scored = []
    for alpha in EXPONENT_GRID:
        for beta in EXPONENT_GRID:
            design = np.column_stack([np.exp(-alpha * u), np.exp(-beta * v), np.ones_like(u)])
            coef, _ = optimize.nnls(design / loss[:, None], np.ones_like(loss))
            fitted = design @ coef
            if not (fitted > 0).all():
                continue
            r = np.log(fitted / loss)
            cost = np.where(abs(r) <= delta, r**2 / 2, delta * (abs(r) - delta / 2)).sum()
            # A zero coefficient has no log: a tiny one leaves that term out to start with.
            a, b, e = np.log(np.maximum(coef, 1e-12 * loss.min()))
            scored.append((cost, np.array([a, alpha, b, beta, e])))
    scored.sort(key=lambda item: item[0])
    return [theta for _, theta in scored[:STARTS]]


def _log_law(theta: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    a, alpha, b, beta, e = theta
    return _logsumexp(np.stack([a - alpha * u, b - beta * v, np.full_like(u, e)]))


def _logsumexp(terms: np.ndarray) -> np.ndarray:
    """log(sum(exp(terms), axis=0)) without overflow."""
    top = terms.max(axis=0)
    return top + np.log(np.exp(terms - top).sum(axis=0))


def _natural(theta: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(E, A, alpha, B, beta) from the centred theta = (a, alpha, b, beta, e)."""
    a, alpha, b, beta, e = theta
    return np.array(
        [np.exp(e), np.exp(a + alpha * centre[0]), alpha, np.exp(b + beta * centre[1]), beta]
    )


def _percentiles(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The equal-tailed percentile interval at `level` along the first axis."""
    low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return low, high


# ------------------------------------------------------------------------------ compute


def fit_flops_per_token(n: ArrayLike, flops_per_token: ArrayLike) -> FlopsPerToken:
    """flops_per_token ≈ k * N + c from runs' `n_params` and `flops_per_token`.

    Least squares on relative errors, so that the small models (most of a ladder) weigh as much
    as the large ones. Pico's count is 6 x the matmul weights (+ attention for the Transformer),
    which is not exactly linear in the parameters (embeddings count in N, not in the FLOPs):
    `max_error` says how far off the line is on these runs.
    """
    n = np.asarray(n, float).ravel()
    flops = np.asarray(flops_per_token, float).ravel()
    usable = np.isfinite(n) & np.isfinite(flops) & (n > 0) & (flops > 0)
    if len(n) != len(flops) or _distinct(n[usable]) < 2:
        raise PicoError(
            "the FLOPs-per-token line needs runs of >= 2 distinct sizes with their n_params and "
            "flops_per_token: pass the columns of scaling_runs"
        )
    n, flops = n[usable], flops[usable]
    design = np.column_stack([n, np.ones_like(n)]) / flops[:, None]
    (k, c), *_ = np.linalg.lstsq(design, np.ones_like(n), rcond=None)
    max_error = float(np.max(np.abs((k * n + c) / flops - 1)))
    return FlopsPerToken(float(k), float(c), max_error)


def compute_optimal(
    fit: LossLawFit,
    flops: ArrayLike,
    flops_per_token: Callable[[np.ndarray], np.ndarray],
    *,
    level: float = LEVEL,
) -> ComputeOptimal:
    """N*(C) and D*(C) = C / flops_per_token(N*) that minimise the fitted loss at compute C.

    `flops_per_token` maps an array of sizes to FLOPs per training token: a `FlopsPerToken`
    fitted on the runs, or any vectorised callable (6 N gives Chinchilla's C = 6 N D). At fixed
    C the loss is convex in log N for any flops_per_token whose log is convex in log N (a line
    k N + c is), so a golden-section search on log N in [0, log C] finds the minimum; each
    bootstrap resample of the fit gives one N*, hence the intervals.
    """
    flops = np.asarray(flops, float)
    if not (np.isfinite(flops).all() and (flops > 1).all()):
        raise PicoError("compute_optimal needs finite compute budgets above 1 FLOP")
    point = np.array([getattr(fit, name).value for name in PARAMS])
    params = np.vstack([point, fit.samples])[:, :, None]  # (1 + resamples, 5, budgets)
    log_c = np.log(flops.ravel())[None, :]

    def law_at(log_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        per_token = flops_per_token(np.exp(log_n))
        # A fitted line k N + c with c < 0 (embeddings count in N, not in the FLOPs) goes
        # negative for the smallest N: no model there, so no minimum either.
        tokens = np.exp(log_c) / np.where(per_token > 0, per_token, np.nan)
        loss = _law(params.transpose(1, 0, 2), np.exp(log_n), tokens)
        return np.where(np.isnan(loss), np.inf, loss), tokens

    log_n = _golden_min(lambda x: law_at(x)[0], np.zeros_like(log_c), log_c)
    loss, tokens = law_at(log_n)
    size = np.exp(log_n)

    def summarise(values: np.ndarray) -> Prediction:
        low, high = _percentiles(values[1:], level)
        return Prediction(
            values[0].reshape(flops.shape),
            low.reshape(flops.shape),
            high.reshape(flops.shape),
            level,
        )

    return ComputeOptimal(flops, summarise(size), summarise(tokens), summarise(loss))


def _golden_min(
    f: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Elementwise argmin of a unimodal f on [lo, hi] (broadcast), by golden-section search."""
    ratio = (np.sqrt(5) - 1) / 2
    lo, hi = np.broadcast_arrays(lo, hi)
    lo, hi = lo.astype(float), hi.astype(float)
    x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    f1, f2 = f(x1), f(x2)
    lo, hi = np.broadcast_to(lo, f1.shape).copy(), np.broadcast_to(hi, f1.shape).copy()
    x1, x2 = np.broadcast_to(x1, f1.shape).copy(), np.broadcast_to(x2, f1.shape).copy()
    # 90 steps shrink the bracket by 0.618^90 ~ 1e-19: below float precision for log N < 100.
    for _ in range(90):
        left = f1 < f2  # the minimum is in [lo, x2]
        hi = np.where(left, x2, hi)
        lo = np.where(left, lo, x1)
        x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        f1, f2 = f(x1), f(x2)
    return (lo + hi) / 2


# ------------------------------------------------------------------------------ IsoFLOP


def isoflop(
    n: ArrayLike,
    d: ArrayLike,
    loss: ArrayLike,
    flops: ArrayLike,
    *,
    budget: ArrayLike | None = None,
    gap_decades: float = 0.05,
    level: float = LEVEL,
) -> IsoFlopFit:
    """IsoFLOP analysis: per compute budget, a parabola of loss against log N and its minimum;
    then N_opt ∝ C^a and D_opt ∝ C^b across budgets.

    Runs are grouped by `budget` labels when given, else by their train_flops `flops`: sorted
    on a log scale, a gap wider than `gap_decades` starts a new budget (a ladder's runs share a
    budget up to the rounding of their step counts; rounding to a fixed grid would split a
    budget that straddles a grid edge). A budget's D_opt interpolates log D linearly in log N
    among its runs. Budgets with < 3 sizes, a parabola that opens downwards, or a minimum
    outside the sizes run are reported in `minima` but left out of the power laws, whose
    intervals are Student-t on the slope across budgets.
    """
    n, d, loss = _check_runs(n, d, loss)
    flops = np.asarray(flops, float).ravel()
    if len(flops) != len(n) or not (np.isfinite(flops).all() and (flops > 0).all()):
        raise PicoError("the IsoFLOP analysis needs a finite, positive train_flops per run")
    labels = budget_labels(flops, gap_decades) if budget is None else np.asarray(budget).ravel()
    if len(labels) != len(n) or pd.isna(labels).any():
        raise PicoError(
            f"the IsoFLOP analysis needs one budget label per run; got {len(labels)} labels, "
            f"{pd.isna(labels).sum()} of them missing, for {len(n)} runs"
        )

    rows = []
    for label in pd.unique(labels):
        mine = labels == label
        rows.append(
            {
                "budget": label,
                "flops": float(np.exp(np.log(flops[mine]).mean())),
                "sizes": _distinct(n[mine]),
                **_parabola_minimum(np.log(n[mine]), np.log(d[mine]), loss[mine]),
            }
        )
    minima = pd.DataFrame(rows).sort_values("flops", ignore_index=True)
    usable = minima[minima["bracketed"]]
    if len(usable) < MIN_BUDGETS:
        shown = ", ".join(
            f"{row.flops:.3g} FLOPs ({row.sizes} sizes, {row.reason})"
            for row in minima.itertuples()
        )
        raise PicoError(
            f"the IsoFLOP analysis needs >= {MIN_BUDGETS} budgets with >= {MIN_SIZES} sizes each "
            f"and the loss minimum inside the sizes run; {len(usable)} of {len(minima)} budgets "
            f"qualify ({shown}): run a ladder with more budgets and sizes ({LADDER_HINT})"
        )
    return IsoFlopFit(
        minima=minima,
        n_opt=_power_law(usable["flops"], usable["n_opt"], level),
        d_opt=_power_law(usable["flops"], usable["d_opt"], level),
    )


def budget_labels(flops: ArrayLike, gap_decades: float = 0.05) -> np.ndarray:
    """One integer label per run: runs whose log10 train_flops are within `gap_decades` of
    their neighbour's share a label."""
    flops = np.asarray(flops, float)
    order = np.argsort(flops)
    gaps = np.diff(np.log10(flops[order])) > gap_decades
    labels = np.empty(len(flops), int)
    labels[order] = np.concatenate([[0], np.cumsum(gaps)])
    return labels


def _parabola_minimum(log_n: np.ndarray, log_d: np.ndarray, loss: np.ndarray) -> dict:
    """The minimum of a parabola of loss against log N, its size and tokens, and whether it
    lies inside the sizes run (else `reason` says why not)."""
    missing = {"n_opt": np.nan, "d_opt": np.nan, "loss_opt": np.nan, "bracketed": False}
    if _distinct(np.exp(log_n)) < MIN_SIZES:
        return {**missing, "reason": f"needs >= {MIN_SIZES} sizes"}
    centre = log_n.mean()  # centring keeps the quadratic's columns well-conditioned
    curve = np.polyfit(log_n - centre, loss, 2)
    if curve[0] <= 0:
        return {**missing, "reason": "loss is not convex in log N"}
    x_opt = -curve[1] / (2 * curve[0])
    if not log_n.min() - centre <= x_opt <= log_n.max() - centre:
        side = "smallest" if x_opt < log_n.min() - centre else "largest"
        return {**missing, "reason": f"minimum beyond the {side} size"}
    tokens_line = np.polyfit(log_n - centre, log_d, 1)
    return {
        "n_opt": float(np.exp(centre + x_opt)),
        "d_opt": float(np.exp(np.polyval(tokens_line, x_opt))),
        "loss_opt": float(np.polyval(curve, x_opt)),
        "bracketed": True,
        "reason": "used",
    }


def _power_law(x: ArrayLike, y: ArrayLike, level: float) -> PowerLaw:
    """Least squares of log y on log x, with Student-t intervals on slope and intercept."""
    log_x, log_y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    slope, intercept = np.polyfit(log_x, log_y, 1)
    residuals = log_y - (intercept + slope * log_x)
    df = len(log_x) - 2
    sd = float(np.sqrt((residuals**2).sum() / df))
    x_mean = float(log_x.mean())
    sxx = float(((log_x - x_mean) ** 2).sum())
    t = stats.t.ppf((1 + level) / 2, df)
    slope_half = t * sd / np.sqrt(sxx)
    intercept_half = t * sd * np.sqrt(1 / len(log_x) + x_mean**2 / sxx)
    return PowerLaw(
        exponent=Estimate(
            float(slope), float(slope - slope_half), float(slope + slope_half), level
        ),
        coefficient=Estimate(
            float(np.exp(intercept)),
            float(np.exp(intercept - intercept_half)),
            float(np.exp(intercept + intercept_half)),
            level,
        ),
        residuals=residuals,
        x_mean=x_mean,
        sxx=sxx,
        sd=sd,
        df=df,
    )


# ------------------------------------------------------------------------------ learning rate


def fit_lr_law(n: ArrayLike, best_lr: ArrayLike, *, level: float = LEVEL) -> PowerLaw:
    """lr* = coefficient * N^gamma (gamma is `exponent`) by least squares on logs, with
    Student-t intervals; one best learning rate per size (or per size and budget: `best_lrs`)."""
    n = np.asarray(n, float).ravel()
    lr = np.asarray(best_lr, float).ravel()
    if len(n) != len(lr):
        raise PicoError(f"got {len(n)} sizes for {len(lr)} learning rates: pass one per size")
    if not (np.isfinite(n).all() and np.isfinite(lr).all() and (n > 0).all() and (lr > 0).all()):
        raise PicoError("the learning-rate law needs finite, positive sizes and learning rates")
    sizes = _distinct(n)
    if sizes < MIN_SIZES:
        raise PicoError(
            f"the learning-rate law needs a best learning rate at >= {MIN_SIZES} distinct model "
            f"sizes; got {sizes}: run a ladder with more sizes ({LADDER_HINT})"
        )
    return _power_law(n, lr, level)


# ------------------------------------------------------------------------------ frames

NEEDED = ("arch", "status", "is_last", "n_params", "tokens_seen", "train_flops", "val_loss")
KEPT = (
    "trial_id",
    "n_params",
    "tokens_seen",
    "train_flops",
    "flops_per_token",
    "val_loss",
    "hp_lr",
    "hp_d_model",
)


def scaling_runs(
    frame: pd.DataFrame, *, budget_column: str | None = None
) -> dict[str, pd.DataFrame]:
    """The converged runs of a results DataFrame, per architecture: the fits' inputs.

    A converged run is the final (`is_last`) row of a trial whose status is `completed` (it
    ran its whole schedule to `max_steps`) with a finite val_loss, in the search phase (or in a
    file without a `phase` column). ASHA-stopped (`early_stopped`), `stopped`, `diverged` and
    `errored` trials never count: their last loss belongs to a schedule cut short, not to a
    model trained on its tokens. Confirmation reruns (`phase` "confirm") are left out too, so
    that a re-seeded config does not count twice.

    Each frame has N = `n_params` (every trainable parameter, embeddings included; see
    docs/scaling_laws.md), D = `tokens_seen`, C = `train_flops`, `flops_per_token`, `val_loss`,
    `trial_id` and `hp_lr` where the file has them, and `budget` from `budget_column` if given.
    """
    needed = [*NEEDED, *([budget_column] if budget_column else [])]
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise PicoError(
            f"the results lack the column(s) {', '.join(missing)} the scaling fit needs: "
            f"rebuild them with launch/search.py --name NAME --export"
        )
    keep = frame["is_last"].eq(True) & frame["status"].eq("completed")
    if "phase" in frame.columns:
        keep &= frame["phase"].isna() | frame["phase"].eq("search")
    runs = frame[keep & np.isfinite(frame["val_loss"].astype(float))]
    if runs.empty:
        raise PicoError(
            "no completed search trial with a finite val_loss: scaling fits count only trials "
            f"that ran to max_steps (never ASHA-stopped ones); run a ladder ({LADDER_HINT})"
        )
    columns = [column for column in KEPT if column in runs.columns]
    out = {}
    for arch, group in runs.groupby("arch", sort=True):
        table = group[columns].copy()
        if budget_column:
            table["budget"] = group[budget_column]
        out[str(arch)] = table.sort_values(["n_params", "tokens_seen"], ignore_index=True)
    return out


def best_lr_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The run of each size's lowest val_loss, per (`budget`, `n_params`) when the runs have a
    budget column, else per `n_params`, with `n_lrs`: the distinct learning rates (`hp_lr`)
    it was chosen from. A size with one was not tuned, and its "best" learning rate says
    nothing about how the optimum moves."""
    if "hp_lr" not in runs.columns:
        raise PicoError(
            "the runs have no hp_lr column: best learning rates need the results of a search "
            "(pass a frame from scaling_runs)"
        )
    keys = ["budget", "n_params"] if "budget" in runs.columns else ["n_params"]
    best = runs.loc[runs.groupby(keys)["val_loss"].idxmin()]
    tried = runs.groupby(keys)["hp_lr"].nunique().rename("n_lrs")
    return best.join(tried, on=keys).sort_values(keys, ignore_index=True)


def best_lrs(runs: pd.DataFrame) -> pd.DataFrame:
    """Each size's best learning rate (`lr`), its val_loss and `n_lrs` (`best_lr_runs`), per
    (`budget`, `n_params`) or per `n_params`."""
    keys = ["budget", "n_params"] if "budget" in runs.columns else ["n_params"]
    table = best_lr_runs(runs)[[*keys, "hp_lr", "val_loss", "n_lrs"]]
    return table.rename(columns={"hp_lr": "lr"})
