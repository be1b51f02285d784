"""The scaling-law section: pico/scaling_law.py's fits on a ladder's converged runs, one set per
architecture, and their charts, every architecture on each chart in its own colour.

A results file is a ladder when its runs ran to the end with one recipe, so that only the size,
the training length and the learning rate differ between them (launch/ladder.py). A search is
not: ASHA picks which of its trials finish by their loss, and its trials differ in activation,
dropout and the rest, which the law L(N, D) has no term for. `scaling_fits` says so in one line
instead of fitting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import altair as alt
import numpy as np
import pandas as pd

from analysis.chart_common import HEIGHT, WIDTH, arch_colour, plain, titled
from analysis.load import NOT_TUNED
from pico import scaling_law as sl
from pico.errors import PicoError
from pico.ladder import tuned_runs

# The TrainConfig fields a ladder varies: those that set the model's size, its training length
# and its learning rate. Converged runs that differ in any other (NOT_TUNED aside) are a search.
LADDER_FIELDS = (
    "d_model",
    "n_layer",
    "n_head",
    "hidden_size",
    "k",
    "mlp_ratio",
    "max_steps",
    "batch_size",
    "grad_accum",
    "warmup_steps",
    "lr",
    "min_lr",
)
CURVE_POINTS = 40  # points along each fitted curve
PANEL_WIDTH = 400  # each panel of the two-panel charts
# Not "nice": a nice log domain rounds out to whole decades and squashes the data (chart_common).
LOG = alt.Scale(type="log", nice=False, padding=10)
SI = alt.Axis(format="~s", labelOverlap="greedy")


@dataclass
class ArchScaling:
    """One architecture's fits. A fit that could not be made is None, and `problems` holds why
    (the PicoError of pico/scaling_law.py, which says what is missing and how to get it)."""

    arch: str
    runs: pd.DataFrame  # the runs fitted: each size's best learning rate at each budget
    law: sl.LossLawFit | None = None
    optimal: sl.ComputeOptimal | None = None  # the law's optimum along the runs' compute
    cost: sl.FlopsPerToken | None = None
    iso: sl.IsoFlopFit | None = None
    lrs: pd.DataFrame | None = None  # best learning rate per budget and size, tuned sizes only
    lr_law: sl.PowerLaw | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class Scaling:
    """The section's fits, or the one-line reason why the file has none."""

    fits: list[ArchScaling]
    reason: str = ""


def scaling_fits(
    trials: pd.DataFrame,
    loss: str,
    archs: list[str],
    *,
    bootstrap: int = sl.BOOTSTRAP,
    seed: int = 0,
) -> Scaling:
    """Each architecture's fits from the report's `trials` (one row per trial, its final
    evaluation), or the reason there are none: the losses do not compare, no run converged,
    or the file is a search rather than a ladder."""
    if loss != "val_loss":
        return Scaling(
            [],
            "the trials differ in corpus or tokenizer, so their tokens and losses do not "
            "compare; a ladder trains every run on the same text and tokens",
        )
    try:
        runs = sl.scaling_runs(trials)
    except PicoError as exc:
        return Scaling([], str(exc))
    reason = not_a_ladder(trials, runs)
    if reason:
        return Scaling([], reason)
    return Scaling(
        [fit_arch(a, runs[a], bootstrap=bootstrap, seed=seed) for a in archs if a in runs]
    )


def not_a_ladder(trials: pd.DataFrame, runs: dict[str, pd.DataFrame]) -> str:
    """Why these converged `runs` are a search's rather than a ladder's, or '' if they are a
    ladder's."""
    stopped = int(trials["status"].eq("early_stopped").sum())
    if stopped:
        return (
            f"this file is a search: ASHA stopped {stopped} of its trials early, so the ones that "
            "ran to the end were picked by their loss, and a law fitted to them would describe "
            "the lucky ones"
        )
    ignored = {*NOT_TUNED, *(f"hp_{name}" for name in LADDER_FIELDS)}
    for arch, table in runs.items():
        mine = trials[trials["trial_id"].isin(table["trial_id"])]
        varying = [
            column.removeprefix("hp_")
            for column in mine.columns
            if column.startswith("hp_") and column not in ignored and mine[column].nunique() > 1
        ]
        if varying:
            return (
                f"this file is a search: the converged {arch} runs differ in "
                f"{', '.join(varying)}, which the law L(N, D) has no term for; a ladder varies "
                "only the size, the training length and the learning rate"
            )
    return ""


def fit_arch(arch: str, runs: pd.DataFrame, *, bootstrap: int, seed: int) -> ArchScaling:
    """Every fit of one architecture's converged runs (pico/scaling_law.py).

    Every fit sees each size's best learning rate at each budget only (`tuned_runs`, as the
    ladder's `--target-flops` prediction does): the laws describe tuned models, and a
    learning-rate sweep's other runs would pull them up.
    """
    tuned = tuned_runs(runs)
    found = ArchScaling(arch, tuned)
    n, d = tuned["n_params"].to_numpy(float), tuned["tokens_seen"].to_numpy(float)
    loss, flops = tuned["val_loss"].to_numpy(float), tuned["train_flops"].to_numpy(float)
    try:
        found.law = sl.fit_loss_law(n, d, loss, bootstrap=bootstrap, seed=seed)
        # train_flops / tokens_seen is each run's flops_per_token (docs/results.md).
        found.cost = sl.fit_flops_per_token(n, flops / d)
        grid = np.geomspace(flops.min(), flops.max(), CURVE_POINTS)
        found.optimal = sl.compute_optimal(found.law, grid, found.cost)
    except PicoError as exc:
        found.problems.append(str(exc))
    try:
        found.iso = sl.isoflop(n, d, loss, flops, budget=tuned["budget"])
    except PicoError as exc:
        found.problems.append(str(exc))
    best = tuned[tuned["n_lrs"] > 1]
    if len(best):
        found.lrs = best
        try:
            found.lr_law = sl.fit_lr_law(best["n_params"], best["hp_lr"])
        except PicoError as exc:
            found.problems.append(str(exc))
    # The loss law and the IsoFLOP analysis check the runs alike: one message is enough.
    found.problems = list(dict.fromkeys(found.problems))
    return found


def law_table(fits: list[ArchScaling]) -> pd.DataFrame:
    """One row per architecture: what was fitted on, and each fitted exponent with its 90%
    interval, so the architectures' slopes can be compared side by side."""
    rows = []
    for fit in fits:
        iso = fit.iso
        used = int(iso.minima["bracketed"].sum()) if iso else 0
        rows.append(
            {
                "arch": fit.arch,
                "runs": len(fit.runs),
                "sizes": fit.runs["n_params"].nunique(),
                "budgets (IsoFLOP: used)": f"{fit.runs['budget'].nunique()} ({used})",
                "E": _estimate(fit.law.E) if fit.law else "",
                "alpha (N)": _estimate(fit.law.alpha) if fit.law else "",
                "beta (D)": _estimate(fit.law.beta) if fit.law else "",
                "a: N_opt ∝ C^a": _estimate(iso.n_opt.exponent) if iso else "",
                "b: D_opt ∝ C^b": _estimate(iso.d_opt.exponent) if iso else "",
                "gamma: lr* ∝ N^gamma": _estimate(fit.lr_law.exponent) if fit.lr_law else "",
                "FLOPs/token line: max error": f"{fit.cost.max_error:.1%}" if fit.cost else "",
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ charts


def frontier_chart(fits: list[ArchScaling]) -> alt.LayerChart:
    """Final loss against training compute: the runs fitted, and the loss law's
    compute-optimal frontier with its 90% band."""
    fitted = [fit for fit in fits if fit.optimal]
    colour = _colour(fits)
    runs = pd.concat([_runs(fit) for fit in fitted])
    front = pd.concat(
        [
            pd.DataFrame(
                {
                    "arch": fit.arch,
                    "train_flops": fit.optimal.flops,
                    "val_loss": fit.optimal.loss.value,
                    "low": fit.optimal.loss.low,
                    "high": fit.optimal.loss.high,
                    "n_opt": fit.optimal.n.value,
                }
            )
            for fit in fitted
        ]
    )
    x = alt.X("train_flops:Q", scale=LOG, axis=SI, title="training compute C (FLOPs)")
    y_axis = (alt.Scale(zero=False), "final val_loss")
    y = alt.Y("val_loss:Q", scale=y_axis[0], title=y_axis[1])
    tooltip = ["arch", "train_flops", "val_loss", "n_opt"]
    layers = [
        *_line_with_band(front, x, "val_loss", y_axis, colour, tooltip),
        alt.Chart(plain(runs))
        .mark_point(filled=True, size=40, opacity=0.7)
        .encode(x=x, y=y, color=colour, tooltip=["trial_id", "arch", "n_params", "tokens_seen"]),
    ]
    subtitle = [
        "Dots: the converged runs fitted (each size's best learning rate at each budget).",
        "Line: the lowest loss the fitted law L(N, D) = E + A/N^alpha + B/D^beta allows at "
        "each compute C, over every split of C into N and D; band: its 90% bootstrap interval.",
        "C = flops_per_token(N) x D, flops per token fitted as k N + c across the runs. "
        "A steeper frontier gains more from each decade of compute.",
    ]
    return alt.layer(*layers).properties(
        width=WIDTH,
        height=HEIGHT,
        title=titled("Loss against compute, with the compute-optimal frontier", subtitle),
    )


def isoflop_chart(fits: list[ArchScaling]) -> alt.LayerChart:
    """Loss against N at each compute budget: the runs, each budget's parabola in log N and
    its minimum."""
    fitted = [fit for fit in fits if fit.iso]
    colour = _colour(fits)
    runs = pd.concat([_runs(fit).assign(curve=_curve_names(fit.runs, fit.arch)) for fit in fitted])
    curves = pd.concat([_parabolas(fit) for fit in fitted])
    minima = pd.concat(
        [
            fit.iso.minima[fit.iso.minima["bracketed"]].assign(arch=fit.arch)[
                ["arch", "flops", "n_opt", "d_opt", "loss_opt"]
            ]
            for fit in fitted
        ]
    )
    x = alt.X("n_params:Q", scale=LOG, axis=SI, title="parameters N")
    y = alt.Y("val_loss:Q", scale=alt.Scale(zero=False), title="final val_loss")
    layers = [
        alt.Chart(curves)
        .mark_line(strokeWidth=1.5, opacity=0.8)
        .encode(x=x, y=y, color=colour, detail="curve:N"),
        alt.Chart(plain(runs))
        .mark_point(filled=True, size=35, opacity=0.7)
        .encode(x=x, y=y, color=colour, tooltip=["trial_id", "arch", "curve", "tokens_seen"]),
        alt.Chart(minima)
        .mark_point(shape="diamond", filled=True, size=140, stroke="black", strokeWidth=1)
        .encode(
            x=alt.X("n_opt:Q", scale=LOG, axis=SI, title="parameters N"),
            y=alt.Y("loss_opt:Q", title="final val_loss"),
            color=colour,
            tooltip=["arch", alt.Tooltip("flops:Q", format=".3g"), "n_opt", "d_opt", "loss_opt"],
        ),
    ]
    subtitle = [
        "Each line is one compute budget (runs grouped by train_flops): a parabola of loss "
        "against log N through its runs.",
        "Diamonds: each parabola's minimum, where it lies inside the sizes run; only those "
        "budgets enter the N_opt and D_opt laws.",
        "The minimum moves right as the budget grows: the compute-optimal model grows with C.",
    ]
    return alt.layer(*layers).properties(
        width=WIDTH, height=HEIGHT, title=titled("IsoFLOP curves: loss against size", subtitle)
    )


def optimal_chart(fits: list[ArchScaling]) -> alt.HConcatChart:
    """N_opt(C) and D_opt(C): each budget's IsoFLOP minimum, the power law through them with its
    90% band, and the loss law's optimum dashed."""
    fitted = [fit for fit in fits if fit.iso]
    panels = [
        _optimal_panel(fitted, _colour(fits), "n_opt", "compute-optimal parameters N_opt"),
        _optimal_panel(fitted, _colour(fits), "d_opt", "compute-optimal tokens D_opt"),
    ]
    laws = [
        f"{fit.arch}: N_opt = k C^a with a = {_estimate(fit.iso.n_opt.exponent)}, "
        f"D_opt = k' C^b with b = {_estimate(fit.iso.d_opt.exponent)}"
        for fit in fitted
    ]
    subtitle = [
        "Dots: each budget's IsoFLOP minimum. Line and band: the power law fitted across "
        "budgets, with its 90% interval.",
        "Dashed: the loss law's optimum, the other, independent answer; the two disagreeing "
        "beyond the band means one of the fits is wrong.",
        *laws,
    ]
    return alt.hconcat(*panels).properties(
        title=titled("Compute-optimal size and tokens against compute", subtitle)
    )


def lr_chart(fits: list[ArchScaling]) -> alt.LayerChart:
    """Each tuned size's best learning rate against N, with the power law lr* ∝ N^gamma and
    its 90% band."""
    fitted = [fit for fit in fits if fit.lr_law]
    colour = _colour(fits)
    best = pd.concat(
        [fit.lrs.assign(arch=fit.arch, curve=_curve_names(fit.lrs, fit.arch)) for fit in fitted]
    )
    lines = []
    for fit in fitted:
        grid = np.geomspace(fit.lrs["n_params"].min(), fit.lrs["n_params"].max(), CURVE_POINTS)
        band = fit.lr_law.predict(grid)
        lines.append(
            pd.DataFrame(
                {"arch": fit.arch, "n_params": grid, "hp_lr": band.value, "low": band.low}
            ).assign(high=band.high)
        )
    x = alt.X("n_params:Q", scale=LOG, axis=SI, title="parameters N")
    y_axis = (LOG, "best learning rate")
    y = alt.Y("hp_lr:Q", scale=y_axis[0], title=y_axis[1])
    layers = [
        *_line_with_band(
            pd.concat(lines), x, "hp_lr", y_axis, colour, ["arch", "n_params", "hp_lr"]
        ),
        alt.Chart(plain(best[["arch", "curve", "n_params", "hp_lr", "val_loss", "n_lrs"]]))
        .mark_point(filled=True, size=40, opacity=0.7)
        .encode(x=x, y=y, color=colour, tooltip=["arch", "curve", "n_params", "hp_lr", "n_lrs"]),
    ]
    laws = [
        f"{fit.arch}: gamma = {_estimate(fit.lr_law.exponent)} over "
        f"{fit.lrs['n_params'].nunique()} sizes, each tried at {_span(fit.lrs['n_lrs'])} "
        "learning rates"
        for fit in fitted
    ]
    subtitle = [
        "Dots: the learning rate of each size's lowest loss at each budget, for sizes tried at "
        "more than one.",
        "Line and band: lr* = k N^gamma with its 90% interval.",
        *laws,
    ]
    return alt.layer(*layers).properties(
        width=WIDTH,
        height=HEIGHT,
        title=titled("Best learning rate against size", subtitle),
    )


def residual_chart(fits: list[ArchScaling]) -> alt.HConcatChart:
    """The loss law's residuals, log(observed / fitted), against N and against C."""
    fitted = [fit for fit in fits if fit.law]
    colour = _colour(fits)
    runs = pd.concat([_runs(fit).assign(residual=fit.law.residuals) for fit in fitted])
    runs = plain(runs)
    y = alt.Y("residual:Q", title="log(observed / fitted)")
    zero = alt.Chart(pd.DataFrame({"residual": [0.0]})).mark_rule(color="#888").encode(y=y)
    panels = []
    for column, name in (("n_params", "parameters N"), ("train_flops", "training compute C")):
        dots = (
            alt.Chart(runs)
            .mark_point(filled=True, size=40, opacity=0.7)
            .encode(
                x=alt.X(f"{column}:Q", scale=LOG, axis=SI, title=name),
                y=y,
                color=colour,
                tooltip=["trial_id", "arch", "n_params", "tokens_seen", "residual"],
            )
        )
        panels.append(alt.layer(zero, dots).properties(width=PANEL_WIDTH, height=HEIGHT - 60))
    sizes = ", ".join(f"{fit.arch} {np.std(fit.law.residuals):.2%}" for fit in fitted)
    subtitle = [
        "Each fitted run's loss over the law's. A trend with N or C means the law's shape does "
        "not fit these runs;",
        "scatter about zero as large as the seed-to-seed noise is a good fit.",
        f"Spread (sd of the residuals): {sizes}.",
    ]
    return alt.hconcat(*panels).properties(
        title=titled("Loss-law residuals against size and compute", subtitle)
    )


# ------------------------------------------------------------------------------ helpers


def _colour(fits: list[ArchScaling]) -> alt.Color:
    """Each architecture in the colour it has on every chart of the report."""
    # Opaque legend symbols: the first layer of most charts is a pale band.
    return alt.Color(
        "arch:N",
        scale=arch_colour([fit.arch for fit in fits]),
        title="arch",
        legend=alt.Legend(symbolOpacity=1),
    )


def _runs(fit: ArchScaling) -> pd.DataFrame:
    """The fitted runs' columns the charts show."""
    columns = ["trial_id", "n_params", "tokens_seen", "train_flops", "val_loss"]
    return fit.runs[columns].assign(arch=fit.arch)


def _curve_names(table: pd.DataFrame, arch: str) -> pd.Series:
    """Each row's budget as the line it belongs to, e.g. 'lstm at 1e+13 FLOPs'."""
    flops = table.groupby("budget")["train_flops"].transform(lambda c: np.exp(np.log(c).mean()))
    return arch + " at " + flops.map(lambda c: f"{c:.2g}") + " FLOPs"


def _parabolas(fit: ArchScaling) -> pd.DataFrame:
    """Each budget's parabola of loss against log N over the sizes it ran, the curve whose
    minimum isoflop took (budgets with fewer than MIN_SIZES sizes have none)."""
    runs = fit.runs.assign(curve=_curve_names(fit.runs, fit.arch))
    curves = []
    for name, group in runs.groupby("curve"):
        log_n = np.log(group["n_params"].to_numpy(float))
        if group["n_params"].nunique() < sl.MIN_SIZES:
            continue
        # Centred, as isoflop fits it, so the quadratic's columns are well-conditioned.
        centre = log_n.mean()
        coefficients = np.polyfit(log_n - centre, group["val_loss"].to_numpy(float), 2)
        along = np.linspace(log_n.min(), log_n.max(), CURVE_POINTS)
        curves.append(
            pd.DataFrame(
                {
                    "arch": fit.arch,
                    "curve": name,
                    "n_params": np.exp(along),
                    "val_loss": np.polyval(coefficients, along - centre),
                }
            )
        )
    return pd.concat(curves)


def _optimal_panel(
    fitted: list[ArchScaling], colour: alt.Color, column: str, title: str
) -> alt.LayerChart:
    """One panel of `optimal_chart`: `column` (n_opt or d_opt) against C."""
    minima, lines, loss_law = [], [], []
    for fit in fitted:
        used = fit.iso.minima[fit.iso.minima["bracketed"]]
        minima.append(used[["flops", column]].assign(arch=fit.arch))
        power_law = fit.iso.n_opt if column == "n_opt" else fit.iso.d_opt
        grid = np.geomspace(used["flops"].min(), used["flops"].max(), CURVE_POINTS)
        band = power_law.predict(grid)
        lines.append(
            pd.DataFrame(
                {"arch": fit.arch, "flops": grid, column: band.value, "low": band.low}
            ).assign(high=band.high)
        )
        if fit.optimal:
            optimum = fit.optimal.n if column == "n_opt" else fit.optimal.d
            loss_law.append(
                pd.DataFrame({"arch": fit.arch, "flops": fit.optimal.flops, column: optimum.value})
            )
    x = alt.X("flops:Q", scale=LOG, axis=SI, title="training compute C (FLOPs)")
    y = alt.Y(f"{column}:Q", scale=LOG, axis=SI, title=title)
    layers = [
        *_line_with_band(
            pd.concat(lines), x, column, (LOG, title), colour, ["arch", "flops", column]
        ),
        alt.Chart(pd.concat(minima))
        .mark_point(filled=True, size=60, opacity=0.9)
        .encode(x=x, y=y, color=colour, tooltip=["arch", "flops", column]),
    ]
    if loss_law:
        layers.append(
            alt.Chart(pd.concat(loss_law))
            .mark_line(strokeDash=[5, 4], strokeWidth=1.5)
            .encode(x=x, y=y, color=colour)
        )
    return alt.layer(*layers).properties(width=PANEL_WIDTH, height=HEIGHT - 60)


def _line_with_band(
    df: pd.DataFrame,
    x: alt.X,
    y: str,
    y_axis: tuple[alt.Scale, str],
    colour: alt.Color,
    tooltip: list[str],
) -> list[alt.Chart]:
    """A fitted curve (column `y`) per architecture over its 90% band (columns `low` and
    `high`), on the y scale and title `y_axis`."""
    scale, title = y_axis
    base = alt.Chart(df).encode(x=x, color=colour)
    # stack=None: Vega-Lite would otherwise stack the architectures' bands on each other.
    band = base.mark_area(opacity=0.18).encode(
        y=alt.Y("low:Q", stack=None, scale=scale, title=title), y2="high:Q"
    )
    line = base.mark_line(strokeWidth=2).encode(
        y=alt.Y(f"{y}:Q", scale=scale, title=title), tooltip=tooltip
    )
    return [band, line]


def _span(counts: pd.Series) -> str:
    """'3', or '2 to 4' when the counts differ."""
    low, high = counts.min(), counts.max()
    return str(low) if low == high else f"{low} to {high}"


def _estimate(estimate: sl.Estimate) -> str:
    """'0.34 [0.31, 0.37]': a value and its interval."""
    return f"{estimate.value:.3g} [{estimate.low:.3g}, {estimate.high:.3g}]"
