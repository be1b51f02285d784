"""Search efficiency judged on full-length runs: anytime curves, FLOPs to a target, the ratio
to the 22 named configs over seeds, and the paired test between two methods.

The rule every method is judged by: a config counts only once it has been trained to the full
`max_steps` (status `completed`), and then with its final val_loss. A trial that ASHA stopped or
a budget cut short, or that errored or diverged, adds its training FLOPs to its method's bill and
nothing to its method's best. Trials are taken in the order the search asked for them (the study's
trial numbers), as if they had run one after another: a completed trial's loss counts at the FLOPs
of every trial asked before it plus its own. So the full-length run a method needs before it can
claim a config is charged to that method, at its full cost. Confirmation trials (`phase`
`confirm`), if a search ran any, are asked after every search trial and are charged the same way.

Pure pandas, numpy and scipy (through pico/stats.py): no Ray, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmarks.rounds import goal_line, spread
from pico.errors import PicoError
from pico.stats import ALPHA, LEVEL, final_rows, holm, paired_difference

GOAL = 1 / 3  # TPE + ASHA should need at most a third of the 22 named configs' FLOPs
SWEEP = "seed22"  # the method whose best full-length loss is the target
HEADLINE = "tpe_asha"
METHODS = {
    "tpe_asha": "TPE + ASHA",
    "random_asha": "random + ASHA",
    "random": "random, no early stopping",
    SWEEP: "22 named configs",
}
# Sampler against sampler under the same scheduler first (the question "does TPE beat random?"),
# then the default search against the plainest one.
COMPARISONS = (("tpe_asha", "random_asha"), ("tpe_asha", "random"))
FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # of the sweep's FLOPs, for the anytime table
CURVE_COLUMNS = ["trial_id", "status", "flops", "cumulative_flops", "final_loss", "best"]


def anytime_curve(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial of one search, in the order it was asked for (module docstring).

    Columns: `trial_id`, `status`, `flops` (its training FLOPs: the largest `train_flops` it
    logged, 0 for a trial that never evaluated), `cumulative_flops` (its own and every earlier
    trial's), `final_loss` (its final val_loss if it completed with a finite loss, else NaN) and
    `best` (the lowest final_loss so far; inf until the first full-length run, since a search
    with no finished model is worse than one with any).
    """
    flops = frame.groupby("trial_id")["train_flops"].max().fillna(0.0)
    last = final_rows(frame).set_index("trial_id").reindex(flops.index)
    loss = last["val_loss"].astype(float)
    full_length = last["status"].eq("completed") & np.isfinite(loss)
    curve = pd.DataFrame({"status": last["status"], "flops": flops}).sort_index()
    curve["cumulative_flops"] = curve["flops"].cumsum()
    curve["final_loss"] = loss.where(full_length)
    curve["best"] = curve["final_loss"].cummin().ffill().fillna(math.inf)
    return curve.rename_axis("trial_id").reset_index()[CURVE_COLUMNS]


def total_flops(curve: pd.DataFrame) -> float:
    """All the training FLOPs a search spent."""
    return float(curve["flops"].sum())


def best_within(curve: pd.DataFrame, flops: float) -> float:
    """The best full-length val_loss a search had once it had spent at most `flops` (inf if
    none yet)."""
    spent = curve[curve["cumulative_flops"] <= flops]
    return float(spent["best"].iloc[-1]) if len(spent) else math.inf


def flops_to_reach(curve: pd.DataFrame, target: float) -> float:
    """The FLOPs a search had spent when a full-length run first reached `target` (inf if none
    did)."""
    reached = curve[curve["best"] <= target]
    return float(reached["cumulative_flops"].iloc[0]) if len(reached) else math.inf


@dataclass(frozen=True)
class SeedOutcome:
    """What each method did on one seed, measured against that seed's sweep."""

    seed: int
    target: float  # the sweep's best full-length val_loss
    sweep_flops: float  # all of the sweep's FLOPs: its best is known only once all 22 have run
    needed: dict[str, float]  # FLOPs until the method reached the target (inf: it never did)
    spent: dict[str, float]  # all the FLOPs the method spent
    best: dict[str, float]  # its best full-length val_loss at the end
    full_runs: dict[str, int]  # trials it trained to max_steps
    trials: dict[str, int]

    def ratio(self, method: str) -> float:
        """The method's FLOPs to reach the target over the sweep's (inf if it never did)."""
        return self.needed[method] / self.sweep_flops


def seed_outcome(seed: int, curves: dict[str, pd.DataFrame]) -> SeedOutcome:
    """The SeedOutcome of one seed's anytime curves, one per method (the sweep's among them).

    The sweep is charged all its FLOPs, not those spent until its best config happened to run:
    a fixed list of configs cannot know it has its best before it has tried them all, and the
    order of the list is arbitrary.
    """
    sweep = curves[SWEEP]
    target = float(sweep["best"].iloc[-1])
    if not math.isfinite(target):
        raise PicoError(f"seed {seed}: no named config ran to the end, so there is no target")
    sweep_flops = total_flops(sweep)
    needed = {m: flops_to_reach(c, target) for m, c in curves.items()} | {SWEEP: sweep_flops}
    return SeedOutcome(
        seed=seed,
        target=target,
        sweep_flops=sweep_flops,
        needed=needed,
        spent={m: total_flops(c) for m, c in curves.items()},
        best={m: float(c["best"].iloc[-1]) for m, c in curves.items()},
        full_runs={m: int(c["final_loss"].notna().sum()) for m, c in curves.items()},
        trials={m: len(c) for m, c in curves.items()},
    )


@dataclass(frozen=True)
class PairedRatio:
    """Method a's FLOPs to the target over method b's, on the seeds both ran: the geometric mean
    of the per-seed ratios with its t-interval, and the paired t-test's p-value on their logs."""

    ratio: float
    low: float
    high: float
    p: float  # two-sided; NaN with fewer than two seeds
    seeds: int
    censored: int  # values where a method never reached the target (counted as a lower bound)
    level: float = LEVEL


def paired_log_ratio(
    needed_a: Sequence[float],
    needed_b: Sequence[float],
    spent_a: Sequence[float],
    spent_b: Sequence[float],
) -> PairedRatio:
    """Paired t-test on log(FLOPs to target), a against b, seed by seed (pico.stats).

    Logs, because FLOP counts are positive and multiply: a method twice as fast on one seed and
    half as fast on another is even, and a t-test on the logs tests the geometric mean ratio
    against 1. A t-test rather than Wilcoxon's signed-rank test: with 5 seeds the smallest
    two-sided p Wilcoxon can give is 2/32 = 0.0625, so it could never call a difference
    significant at 5%. The t-test assumes the log ratios are roughly normal; 5 seeds cannot
    check that.

    A method that never reached the target counts at all the FLOPs it spent, a lower bound of
    what it would have needed. On a seed only b missed, that understates a's advantage; on a
    seed only a missed, it understates a's disadvantage, though the ratio still says that a
    lost that seed. `censored` counts those values.
    """
    a_needed, b_needed = np.asarray(needed_a, float), np.asarray(needed_b, float)
    a = np.where(np.isfinite(a_needed), a_needed, np.asarray(spent_a, float))
    b = np.where(np.isfinite(b_needed), b_needed, np.asarray(spent_b, float))
    censored = int((~np.isfinite(a_needed)).sum() + (~np.isfinite(b_needed)).sum())
    d = paired_difference(np.log(a), np.log(b))
    return PairedRatio(
        ratio=float(np.exp(d.difference)),
        low=float(np.exp(d.low)),
        high=float(np.exp(d.high)),
        p=float(d.p),
        seeds=d.n_a,
        censored=censored,
    )


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile, linear between order statistics (as `statistics.quantiles`' inclusive
    method and numpy's default). Unlike those it keeps an infinite value, a target never
    reached, as a ratio above every finite one rather than turning it into NaN."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    i = math.floor(position)
    fraction = position - i
    if fraction == 0 or ordered[i] == ordered[i + 1]:
        return ordered[i]
    return ordered[i] + (ordered[i + 1] - ordered[i]) * fraction


def describe(values: Sequence[float]) -> str:
    """E.g. `0.171 (IQR 0.120-0.250, range 0.090-0.410, 5 seeds)`; `inf`: never reached."""
    median = quantile(values, 0.5)
    q1, q3 = quantile(values, 0.25), quantile(values, 0.75)
    return (
        f"{median:.3f} (IQR {q1:.3f}-{q3:.3f}, range {min(values):.3f}-{max(values):.3f}, "
        f"{len(values)} seeds)"
    )


def anytime_table(curves: dict[int, dict[str, pd.DataFrame]]) -> pd.DataFrame:
    """The anytime curves side by side: for each method (rows) and each fraction of the sweep's
    FLOPs (columns), the median over seeds of the best full-length val_loss the method had by
    then (inf where it had none on most seeds)."""
    rows = {}
    for method in METHODS:
        rows[method] = []
        for f in FRACTIONS:
            bests = [best_within(c[method], f * total_flops(c[SWEEP])) for c in curves.values()]
            rows[method].append(quantile(bests, 0.5))
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(FRACTIONS))


def comparison_lines(outcomes: Sequence[SeedOutcome], alpha: float = ALPHA) -> list[str]:
    """The paired tests of COMPARISONS, Holm-corrected together, one sentence each."""
    tests = []
    for a, b in COMPARISONS:
        tests.append(
            paired_log_ratio(
                [o.needed[a] for o in outcomes],
                [o.needed[b] for o in outcomes],
                [o.spent[a] for o in outcomes],
                [o.spent[b] for o in outcomes],
            )
        )
    adjusted = holm([t.p for t in tests])
    lines = []
    for (a, b), test, p_holm in zip(COMPARISONS, tests, adjusted, strict=True):
        name_a, name_b = METHODS[a], METHODS[b]
        if math.isnan(test.p):
            lines.append(f"{name_a} vs {name_b}: not tested (needs two seeds)")
            continue
        if p_holm >= alpha:
            verdict = f"not significant at {alpha:.0%}: these seeds do not tell the two apart"
        elif test.ratio < 1:
            verdict = f"{name_a} beats {name_b} significantly at {alpha:.0%}"
        else:
            verdict = f"{name_b} beats {name_a} significantly at {alpha:.0%}"
        line = (
            f"{name_a} vs {name_b}: {name_a} needed {test.ratio:.2f}x the FLOPs to reach the "
            f"target (geometric mean over {test.seeds} seeds, {test.level:.0%} CI "
            f"{test.low:.2f}-{test.high:.2f}; paired t-test on log FLOPs), p = {test.p:.3g}, "
            f"Holm-corrected over {len(tests)} tests p = {p_holm:.3g}: {verdict}"
        )
        if test.censored:
            line += (
                f" ({test.censored} value(s) never reached the target and count at the FLOPs "
                "their method spent, a lower bound)"
            )
        lines.append(line)
    return lines


def summary_lines(curves: dict[int, dict[str, pd.DataFrame]]) -> list[str]:
    """The benchmark's report from each seed's anytime curves (seed -> method -> curve); the
    last line is `search_efficiency: <median ratio>`."""
    outcomes = [seed_outcome(seed, by_method) for seed, by_method in sorted(curves.items())]
    lines = [
        "judged on full-length runs only: a config counts once trained to max_steps, at the FLOPs "
        "of every trial asked before it plus its own; stopped trials add FLOPs, never losses"
    ]
    for o in outcomes:
        lines.append(
            f"seed {o.seed}: target {o.target:.4f} (the 22 named configs' best), "
            f"{o.sweep_flops:.3e} FLOPs for all 22"
        )
        for method, name in METHODS.items():
            if method == SWEEP:
                reach = "its best is the target, known once all its FLOPs are spent"
            elif math.isfinite(o.needed[method]):
                reach = f"reached the target at {o.ratio(method):.3f} of the sweep's FLOPs"
            else:
                reach = "never reached the target"
            lines.append(
                f"  {name:26s} {reach}; best {o.best[method]:.4f} after {o.spent[method]:.3e} "
                f"FLOPs, {o.full_runs[method]} full-length run(s) of {o.trials[method]} trials"
            )
    table = anytime_table(curves)
    lines.append(
        "anytime: median over seeds of the best full-length val_loss by each fraction of the "
        "sweep's FLOPs (inf: no full-length run yet)"
    )
    lines.append(f"  {'':26s} " + " ".join(f"{f:>7.4g}" for f in FRACTIONS))
    for method, row in table.iterrows():
        lines.append(f"  {METHODS[method]:26s} " + " ".join(f"{v:7.4f}" for v in row))
    for method, name in METHODS.items():
        if method != SWEEP:
            ratios = [o.ratio(method) for o in outcomes]
            lines.append(f"{name}: FLOPs to the target / the sweep's FLOPs = {describe(ratios)}")
    lines += comparison_lines(outcomes)
    headline = [o.ratio(HEADLINE) for o in outcomes]
    # goal_line speaks of rounds, the unit of the speed benchmarks; here each value is a seed.
    lines.append(goal_line(spread(headline), GOAL, at_least=False).replace("rounds", "seeds"))
    lines.append(f"search_efficiency: {quantile(headline, 0.5):.3f}")
    return lines
