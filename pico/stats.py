"""How sure a search's answer is: intervals, paired tests and Holm's correction over seeds.

A search scores each config once, on one seed, so its winner is partly the luckiest draw. The
confirmation stage reruns the best configs of each architecture over S fresh seeds (results rows
with `phase` "confirm" and `confirms` naming the search trial; docs/results.md). This module
turns those rows into what a researcher can trust: each config's mean with a Student-t interval,
the winner's curse (search score minus confirmed mean), paired tests between configs on their
shared seeds with Holm's step-down correction over the whole family, the seed-to-seed noise
floor, and a few lines that say which architecture wins. Methods and their tests:
docs/statistics.md.

The array functions work along the last axis, so that the tests can check coverage and error
rates on thousands of simulated studies at once; a 1-D input gives scalars. The frame functions
take a results DataFrame (every evaluation, or one final row per trial). Pure numpy, scipy and
pandas: nothing here imports Ray or torch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from pico.config import ARCHS

LEVEL = 0.95  # confidence level of every interval
ALPHA = 0.05  # significance level of every test, after Holm's correction
METRICS = ("val_loss", "val_bpb")  # what confirmation_summary reports by default
UNITS = {"val_loss": "nats", "val_bpb": "bits per byte"}
COMPARISON_COLUMNS = [
    "comparison",
    "better",
    "worse",
    "difference",
    "low",
    "high",
    "test",
    "p",
    "p_holm",
    "significant",
    "sentence",
]

Number = float | np.ndarray  # a scalar for 1-D input, an array of the leading shape otherwise


@dataclass(frozen=True)
class Interval:
    """A sample's mean, standard deviation (ddof 1), size and Student-t interval for the mean."""

    mean: Number
    sd: Number
    n: int
    low: Number
    high: Number
    level: float = LEVEL


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b), its t-interval and two-sided p-value: paired, or Welch's if not.

    For a paired test `n_a == n_b` is the number of shared seeds; for Welch's, the two sample
    sizes.
    """

    difference: Number
    low: Number
    high: Number
    p: Number
    n_a: int
    n_b: int
    paired: bool
    level: float = LEVEL

    @property
    def method(self) -> str:
        """How the two were compared, in words."""
        if self.paired:
            return f"paired t, {self.n_a} seeds"
        return f"Welch t, {self.n_a} vs {self.n_b} runs (seeds not shared)"


@dataclass(frozen=True)
class NoiseFloor:
    """The seed-to-seed standard deviation of one config's final loss, pooled over configs."""

    sd: float  # nan when no config has two runs
    df: int  # degrees of freedom: runs minus configs
    runs: int
    configs: int

    @property
    def band(self) -> float:
        """Two single runs of one config differ by less than this 95% of the time.

        Their difference has sd sqrt(2) * sd, and with sd estimated on `df` degrees of freedom
        the difference over sqrt(2) * sd follows Student's t.
        """
        if self.df < 1:
            return float("nan")
        return float(stats.t.ppf((1 + LEVEL) / 2, self.df) * np.sqrt(2) * self.sd)


# ------------------------------------------------------------------------------ arrays


def mean_interval(values: ArrayLike, level: float = LEVEL) -> Interval:
    """Mean, sd and the Student-t interval for the mean of `values` (along the last axis).

    Fewer than two values leave sd and the interval NaN: one run says nothing of its spread.
    """
    x = np.asarray(values, dtype=float)
    n = x.shape[-1]
    with warnings.catch_warnings():
        # n < 2: numpy warns about an empty mean or zero degrees of freedom; NaN says it.
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = x.mean(axis=-1)
        sd = x.std(axis=-1, ddof=1)
    low, high = _t_interval(mean, sd, n, level)
    return Interval(mean[()], sd[()], n, low, high, level)


def paired_difference(a: ArrayLike, b: ArrayLike, level: float = LEVEL) -> Difference:
    """Paired t-test of a - b over matched pairs (seeds) along the last axis.

    The seed's own effect (its initialisation and data order, shared by both configs) cancels in
    the difference, so a paired test sees smaller differences than an unpaired one.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = a.shape[-1]
    if n < 2:
        nan = np.full(a.shape[:-1], np.nan)[()]
        return Difference(nan, nan, nan, nan, n, n, True, level)
    with warnings.catch_warnings():
        # Identical runs: scipy warns of precision loss and returns NaN (handled below).
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(a, b, axis=-1)
    ci = result.confidence_interval(level)
    d = a - b
    # All differences exactly zero (the same config and seeds, run deterministically): t is 0/0
    # and scipy gives NaN, but there is no evidence of any difference at all.
    identical = (d == 0).all(axis=-1)
    p = np.where(identical, 1.0, result.pvalue)
    return Difference(d.mean(axis=-1)[()], ci.low[()], ci.high[()], p[()], n, n, True, level)


def welch_difference(a: ArrayLike, b: ArrayLike, level: float = LEVEL) -> Difference:
    """Welch's unequal-variance t-test of mean(a) - mean(b) for runs that share no seeds."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n_a, n_b = a.shape[-1], b.shape[-1]
    if min(n_a, n_b) < 2:
        nan = np.full(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]), np.nan)[()]
        return Difference(nan, nan, nan, nan, n_a, n_b, False, level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False, axis=-1)
    ci = result.confidence_interval(level)
    difference = a.mean(axis=-1) - b.mean(axis=-1)
    return Difference(
        difference[()], ci.low[()], ci.high[()], result.pvalue[()], n_a, n_b, False, level
    )


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm's step-down adjusted p-values for a family (along the last axis).

    The i-th smallest of m p-values is multiplied by m - i + 1 (i from 1), then made
    non-decreasing in that order and capped at 1; rejecting where the adjusted value is below
    alpha keeps the chance of any false rejection in the family at most alpha. NaN p-values
    (comparisons that could not be tested) stay NaN and do not count in m. scipy has no Holm
    (`false_discovery_control` is Benjamini-Hochberg, which bounds a different error rate).
    """
    p = np.asarray(p_values, dtype=float)
    tested = ~np.isnan(p)
    m = tested.sum(axis=-1, keepdims=True)
    order = np.argsort(np.where(tested, p, np.inf), axis=-1, kind="stable")  # NaN last
    ranked = np.take_along_axis(p, order, axis=-1)
    scaled = ranked * (m - np.arange(p.shape[-1]))
    adjusted = np.minimum(np.maximum.accumulate(scaled, axis=-1), 1.0)
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return np.where(tested, out, np.nan)


def compare_runs(a: pd.Series, b: pd.Series, level: float = LEVEL) -> Difference:
    """mean(a) - mean(b) for two configs' final losses indexed by seed.

    Paired on the seeds both have when they share two or more (a seed run by only one is left
    out); Welch's test on every run otherwise.
    """
    shared = a.index.intersection(b.index)
    if len(shared) >= 2:
        return paired_difference(a[shared].to_numpy(), b[shared].to_numpy(), level)
    return welch_difference(a.to_numpy(), b.to_numpy(), level)


def _t_interval(mean: Number, sd: Number, n: ArrayLike, level: float) -> tuple[Number, Number]:
    """mean ± t_{(1+level)/2, n-1} * sd / sqrt(n); NaN where n < 2."""
    n = np.asarray(n, dtype=float)
    df = np.where(n > 1, n - 1, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf((1 + level) / 2, df) * sd / np.sqrt(n)
    low, high = np.asarray(mean - half), np.asarray(mean + half)
    return low[()], high[()]


# ------------------------------------------------------------------------------ frames


def final_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its `is_last` row, else its highest step (as the report counts it)."""
    flagged = frame["is_last"].eq(True)
    order = frame.assign(_flagged=flagged).sort_values(
        ["trial_id", "_flagged", "step"], kind="stable"
    )
    return order.drop_duplicates("trial_id", keep="last").drop(columns="_flagged")


def is_confirmation(frame: pd.DataFrame) -> pd.Series:
    """Which rows belong to confirmation trials (none in a file written before the column)."""
    if "phase" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame["phase"].eq("confirm") & frame["confirms"].notna()


def confirmation_runs(frame: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """The final rows of the confirmation trials that completed with every metric finite."""
    runs = final_rows(frame[is_confirmation(frame)])
    finite = np.isfinite(runs[list(metrics)].astype(float)).all(axis=1)
    return runs[(runs["status"] == "completed") & finite]


def confirmation_summary(
    frame: pd.DataFrame, metrics: tuple[str, ...] = METRICS, level: float = LEVEL
) -> pd.DataFrame:
    """One row per confirmed config (grouped by `confirms`), in comparison order.

    Columns: `config` (the search trial's id), `arch`, `runs` (confirmation trials of it) and
    `n` (those that completed with finite metrics), `search_status`, then for each metric m:
    `search_m` (the search trial's final value), `m_mean`, `m_sd`, `m_low`, `m_high` (the
    t-interval at `level`) and `m_gap` = search_m - m_mean, the winner's curse (negative when
    the search was lucky; NaN unless the search trial completed, since a shorter run's loss is
    not comparable). Rows are sorted by architecture, then as the search ranks (completed search
    trials first, as launch/confirm.py picks them, then by search score): each architecture's
    first row is the config the search ranked best. Empty (with these columns) for a file
    without confirmation trials.
    """
    confirm = is_confirmation(frame)
    attempts = final_rows(frame[confirm])
    runs = confirmation_runs(frame, metrics)
    search = final_rows(frame[~confirm]).set_index("trial_id")
    columns = ["config", "arch", "runs", "n", "search_status"]
    for m in metrics:
        columns += [f"search_{m}", f"{m}_mean", f"{m}_sd", f"{m}_low", f"{m}_high", f"{m}_gap"]
    if attempts.empty:
        return pd.DataFrame(columns=columns)

    grouped = runs.groupby("confirms")
    out = pd.DataFrame({"runs": attempts.groupby("confirms").size()})
    out["arch"] = attempts.groupby("confirms")["arch"].first()
    out["n"] = grouped.size().reindex(out.index).fillna(0).astype(int)
    out["search_status"] = search["status"].reindex(out.index)
    completed = out["search_status"].eq("completed")
    for m in metrics:
        mean = grouped[m].mean().reindex(out.index)
        sd = grouped[m].std(ddof=1).reindex(out.index)
        out[f"search_{m}"] = search[m].reindex(out.index).astype(float)
        out[f"{m}_mean"], out[f"{m}_sd"] = mean, sd
        out[f"{m}_low"], out[f"{m}_high"] = _t_interval(
            mean.to_numpy(), sd.to_numpy(), out["n"].to_numpy(), level
        )
        out[f"{m}_gap"] = (out[f"search_{m}"] - mean).where(completed)
    out = out.rename_axis("config").reset_index()
    rank = {a: i for i, a in enumerate(ARCHS)}
    out["_arch_rank"] = out["arch"].map(lambda a: rank.get(a, len(rank)))
    out["_stopped"] = out["search_status"].ne("completed")
    # NaN search scores (the search trial is not in the frame) sort last within their arch.
    keys = ["_arch_rank", "arch", "_stopped", f"search_{metrics[0]}", "config"]
    return out.sort_values(keys, kind="stable")[columns].reset_index(drop=True)


def compare_confirmed(
    frame: pd.DataFrame, loss: str = "val_loss", alpha: float = ALPHA, level: float = LEVEL
) -> pd.DataFrame:
    """Paired tests between confirmed configs, Holm-corrected over the whole family.

    The family: (a) each architecture's best config against every other architecture's best,
    and (b) within each architecture, every other confirmed config against its best. "Best" is
    the config the search ranked first, not the one with the lowest confirmed mean: it is chosen
    on the search run, which the confirmation seeds did not produce, so the tests are not biased
    by picking the winner on the data that tests it (picking by confirmed mean doubles the false
    positives of the best-against-worst comparison; docs/statistics.md).

    One row per comparison: `comparison` ("between architectures" or "within ARCH"), `better`
    and `worse` (arch and trial id, by the tested difference), `difference` (worse minus better,
    >= 0) with `low`..`high` its interval, `test`, `p`, `p_holm`, `significant` (p_holm < alpha)
    and `sentence`, which says it in words. A comparison without two runs on each side is not
    tested (NaN p) and is left out of the family.
    """
    summary = confirmation_summary(frame, (loss,), level)
    if summary.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    runs = confirmation_runs(frame, (loss,))
    # A seed run twice for one config (a retry) counts once, at its mean.
    by_seed = runs.groupby(["confirms", "seed"])[loss].mean()
    values = {c: s.droplevel("confirms") for c, s in by_seed.groupby(level="confirms")}
    none = pd.Series(dtype=float)
    label = dict(zip(summary["config"], summary["arch"] + " " + summary["config"], strict=True))

    plan = []
    best = summary.groupby("arch", sort=False).head(1)
    for (_, x), (_, y) in combinations(best.iterrows(), 2):
        plan.append(("between architectures", x["config"], y["config"]))
    for arch, group in summary.groupby("arch", sort=False):
        reference = group["config"].iloc[0]
        plan += [(f"within {arch}", reference, other) for other in group["config"].iloc[1:]]

    rows = []
    for kind, x, y in plan:
        d = compare_runs(values.get(x, none), values.get(y, none), level)
        # Orient each row so that `better` has the lower loss and the difference is positive.
        if d.difference > 0:
            better, worse, diff, low, high = y, x, d.difference, d.low, d.high
        else:
            better, worse, diff, low, high = x, y, -d.difference, -d.high, -d.low
        rows.append(
            {
                "comparison": kind,
                "better": label[better],
                "worse": label[worse],
                "difference": diff,
                "low": low,
                "high": high,
                "test": d.method,
                "p": d.p,
            }
        )
    if not rows:  # one config alone: nothing to compare
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].to_numpy(float))
    out["significant"] = out["p_holm"] < alpha
    out["sentence"] = [_sentence(row, loss, alpha, level) for row in out.itertuples()]
    return out[COMPARISON_COLUMNS]


def noise_floor(frame: pd.DataFrame, loss: str = "val_loss") -> NoiseFloor:
    """The seed-to-seed sd of a config's final loss, pooled over the confirmed configs.

    sqrt(sum((n_i - 1) * s_i^2) / sum(n_i - 1)) over configs with two or more runs: one number
    for "how much does the loss move when only the seed changes". Configs may differ in noise;
    each one's own sd is in confirmation_summary.
    """
    runs = confirmation_runs(frame, (loss,))
    if runs.empty:
        return NoiseFloor(float("nan"), 0, 0, 0)
    grouped = runs.groupby("confirms")[loss]
    n, var = grouped.size(), grouped.var(ddof=1)
    usable = n > 1
    df = int((n[usable] - 1).sum())
    if df == 0:  # no config has two runs: no spread to measure
        return NoiseFloor(float("nan"), 0, int(n.sum()), len(n))
    sd = float(np.sqrt(((n[usable] - 1) * var[usable]).sum() / df))
    return NoiseFloor(sd, df, int(n[usable].sum()), int(usable.sum()))


def answer_lines(
    frame: pd.DataFrame, loss: str = "val_loss", alpha: float = ALPHA, level: float = LEVEL
) -> list[str]:
    """A few plain lines: each architecture's confirmed best, which one wins, and how surely.

    Empty when the frame has no confirmation trials.
    """
    summary = confirmation_summary(frame, (loss,), level)
    if summary.empty:
        return []
    unit = UNITS.get(loss, loss)
    best = summary.groupby("arch", sort=False).head(1).sort_values(f"{loss}_mean")
    seeds = int(summary["n"].max())
    lines = [
        f"Confirmation: {len(summary)} config(s) rerun on up to {seeds} fresh seeds; final "
        f"{loss} ({unit}), mean ± sd [{level:.0%} CI]; each architecture's best by search score:"
    ]
    for row in best.itertuples():
        mean, sd = getattr(row, f"{loss}_mean"), getattr(row, f"{loss}_sd")
        low, high = getattr(row, f"{loss}_low"), getattr(row, f"{loss}_high")
        search, gap = getattr(row, f"search_{loss}"), getattr(row, f"{loss}_gap")
        # A search run stopped early scored a shorter run: no winner's curse to measure.
        curse = f"winner's curse {gap:+.4f}" if np.isfinite(gap) else "stopped early in the search"
        lines.append(
            f"  {row.arch} {row.config}: {mean:.4f} ± {sd:.4f} [{low:.4f}, {high:.4f}] "
            f"n={row.n}; search {search:.4f}, {curse}"
        )
    comparisons = compare_confirmed(frame, loss, alpha, level)
    between = comparisons[comparisons["comparison"] == "between architectures"]
    winner = best.iloc[0]
    if between.empty:
        lines.append(f"Answer: only {winner['arch']} was confirmed; nothing to compare it with.")
    else:
        name = f"{winner['arch']} {winner['config']}"
        mine = between[(between["better"] == name) | (between["worse"] == name)]
        real = bool((mine["significant"] & (mine["better"] == name)).all())
        verdict = "wins" if real else "is ahead, but not significantly against every rival,"
        lines.append(
            f"Answer: {winner['arch']} {verdict} at this budget (paired tests, Holm-corrected, "
            f"{alpha:.0%}):"
        )
        lines += [f"  {s}" for s in mine["sentence"]]
    floor = noise_floor(frame, loss)
    if floor.df:
        lines.append(
            f"Noise floor: seed-to-seed sd {floor.sd:.4f} {unit} ({floor.runs} runs of "
            f"{floor.configs} configs): two single runs closer than {floor.band:.4f} cannot be "
            "told apart."
        )
    return lines


def _sentence(row: tuple, loss: str, alpha: float, level: float) -> str:
    """One comparison in words: who leads, by how much, and whether it is real."""
    unit = UNITS.get(loss, loss)
    if np.isnan(row.p):
        return f"{row.better} vs {row.worse}: not tested (needs two completed runs of each)."
    verb = "beats" if row.significant else "leads"
    verdict = "real" if row.significant else "not distinguishable from noise"
    return (
        f"{row.better} {verb} {row.worse} by {row.difference:.4f} {unit} ({level:.0%} CI "
        f"{row.low:.4f}..{row.high:.4f}; {row.test}), p_holm = {row.p_holm:.2g}: {verdict} at "
        f"{alpha:.0%}"
    )
