"""Charts of why: importance, correlation, heatmaps, regression, parallel axes, categories."""

from __future__ import annotations

import itertools

import altair as alt
import numpy as np
import optuna
import pandas as pd

from analysis.chart_common import (
    HEIGHT,
    ROW_CAP,
    WIDTH,
    arch_colour,
    plain,
    sample_rows,
    titled,
)
from analysis.importance import Importance
from analysis.load import hp_kind, label
from analysis.regression import Fit
from pico.stats import NoiseFloor

# Pairs of hyperparameters worth a heatmap, when both vary within an architecture.
HEATMAP_PAIRS = (
    ("d_model", "n_layer"),
    ("d_model", "k"),
    ("d_model", "hidden_size"),
    ("d_model", "n_head"),
    ("lr", "batch_size"),
)
HEATMAP_BINS = 6  # a numeric axis with more distinct values than MAX_LEVELS is binned (log)
MAX_LEVELS = 10
# A cell's colour is its best trial. With one or two trials in most cells that best is a single
# noisy draw, and cells differ by the seed as much as by the parameters: the page warns.
MIN_TRIALS_PER_CELL = 3
METRICS = ("perplexity", "token_accuracy", "n_params", "train_flops", "elapsed_s", "tokens_per_s")
LOSS_SCHEME = alt.Scale(scheme="viridis", reverse=True)  # dark is low loss, i.e. good


def importance_chart(results: list[Importance], method: str, loss: str) -> alt.HConcatChart:
    """One bar chart per architecture: each parameter's share of the importance, with the
    spread of that share over bootstrap resamples of the trials (when computed)."""
    charts = []
    for imp in results:
        names = list(imp.values)
        df = pd.DataFrame(
            {
                "parameter": names,
                "importance": [imp.values[p] for p in names],
                "low": [imp.low.get(p) for p in names],
                "high": [imp.high.get(p) for p in names],
            }
        )
        y = alt.Y("parameter:N", sort=names, title=None)
        tooltip = ["parameter", alt.Tooltip("importance:Q", format=".3f")]
        layers = [
            alt.Chart(df)
            .mark_bar(opacity=0.4 if imp.warning else 1.0)
            .encode(x=alt.X("importance:Q", title="importance (sums to 1)"), y=y, tooltip=tooltip)
        ]
        if imp.resamples:
            tooltip += [alt.Tooltip("low:Q", format=".3f"), alt.Tooltip("high:Q", format=".3f")]
            layers.append(
                alt.Chart(df)
                .mark_errorbar(ticks=True, color="black")
                .encode(x=alt.X("low:Q", title="importance (sums to 1)"), x2="high:Q", y=y)
            )
        charts.append(
            alt.layer(*layers).properties(
                width=260, height=22 * len(df), title=titled(imp.arch, _importance_lines(imp))
            )
        )
    spread = (
        "Whiskers: the 5th to 95th percentile of each share over bootstrap resamples of the "
        "trials (seed 0)."
        if any(imp.resamples for imp in results)
        else f"No spread: {method} is too slow to refit on resamples."
    )
    return alt.hconcat(*charts).properties(
        title=titled(
            f"Hyperparameter importance ({method}, optuna {optuna.__version__})",
            [
                f"Importance for a low final {loss}, over completed and early-stopped search "
                "trials (early-stopped ones at their last evaluation).",
                spread + " Pale bars: too few trials for the ranking to mean much.",
            ],
        )
    )


def _importance_lines(imp: Importance) -> list[str]:
    """One architecture's subtitle: how many trials and resamples, and its warning."""
    sampled = f", a random {imp.n_used} of {imp.n_total}" if imp.n_used < imp.n_total else ""
    lines = [f"{imp.n_total} trials{sampled}"]
    if imp.resamples:
        of = f" of {imp.resample_size} trials" if imp.resample_size < imp.n_used else ""
        wider = " (spread of that many: wider than the bars')" if of else ""
        lines.append(f"spread: {imp.resamples} resamples{of}{wider}")
    if imp.warning:
        lines.append("⚠ too few trials to trust (see the warning above)")
    return lines


def correlation_chart(points: pd.DataFrame, hparams: list[str], loss: str) -> alt.Chart | None:
    """Spearman rank correlation of numeric hyperparameters and metrics, all trials pooled."""
    columns = {
        label(c): points[c]
        for c in hparams
        if hp_kind(points[c]) != "cat" or pd.api.types.is_bool_dtype(points[c].dtype)
    }
    columns |= {m: points[m] for m in (loss, *METRICS) if m in points.columns}
    frame = pd.DataFrame({k: v.astype(float) for k, v in columns.items()})
    frame = frame.loc[:, (frame.notna().sum() >= 3) & (frame.nunique() > 1)]
    if frame.shape[1] < 2:
        return None
    corr = frame.corr(method="spearman", min_periods=3)
    long = corr.stack(future_stack=True).rename("rho").reset_index()
    long.columns = ["a", "b", "rho"]
    order = list(corr.columns)
    base = alt.Chart(long.dropna()).encode(
        x=alt.X("a:N", sort=order, title=None), y=alt.Y("b:N", sort=order, title=None)
    )
    cells = base.mark_rect().encode(
        color=alt.Color("rho:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True)),
        tooltip=["a", "b", alt.Tooltip("rho:Q", format=".2f")],
    )
    # Numbers only where the correlation is notable: fewer marks to read (and to render).
    text = (
        base.transform_filter("abs(datum.rho) >= 0.2")
        .mark_text(fontSize=9)
        .encode(
            text=alt.Text("rho:Q", format=".1f"),
            color=alt.condition("abs(datum.rho) > 0.6", alt.value("white"), alt.value("black")),
        )
    )
    size = 26 * len(order)
    return (cells + text).properties(
        width=size,
        height=size,
        title=titled(
            "Correlation of hyperparameters and metrics",
            f"Spearman rank correlation over {len(points)} trials, all architectures "
            "pooled; a parameter only counts where an architecture uses it. Numbers where "
            "|rho| >= 0.2.",
        ),
    )


def heatmap_pairs(hparams: list[str]) -> list[tuple[str, str]]:
    """The HEATMAP_PAIRS (as hp_ columns) whose two parameters both vary."""
    names = {label(c): c for c in hparams}
    return [(names[a], names[b]) for a, b in HEATMAP_PAIRS if a in names and b in names]


def heatmap_chart(
    df: pd.DataFrame, hparams: list[str], loss: str, arch: str, floor: NoiseFloor | None = None
) -> alt.Chart | None:
    """Best (lowest) loss in each cell of each pair of hyperparameters, for one architecture."""
    charts = [_heatmap(df, a, b, loss) for a, b in heatmap_pairs(hparams)]
    if not charts:
        return None
    subtitle = [f"Colour: the lowest {loss} in the cell; the number: how many trials."]
    if floor is not None and floor.df:
        subtitle.append(
            f"Cells whose best differ by less than {floor.band:.4f} (the noise floor: two runs "
            "of one config on different seeds differ by that much 95% of the time) may differ "
            "by the seed alone."
        )
    return (
        alt.hconcat(*charts)
        .resolve_scale(color="independent")
        .properties(title=titled(f"{arch}: best {loss} over pairs of hyperparameters", subtitle))
    )


def sparse_heatmaps(df: pd.DataFrame, hparams: list[str], loss: str) -> list[str]:
    """The heatmap panels most of whose cells hold fewer than MIN_TRIALS_PER_CELL trials."""
    sparse = []
    for a, b in heatmap_pairs(hparams):
        median = _cells(df, a, b, loss)[1]["trials"].median()
        if median < MIN_TRIALS_PER_CELL:
            sparse.append(f"{label(a)} x {label(b)} (median {median:g})")
    return sparse


def _cells(df: pd.DataFrame, a: str, b: str, loss: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each trial's cell (levels of a and b) and the grid: best, median and count per cell."""
    cells = pd.DataFrame({"a": _levels(df[a]), "b": _levels(df[b]), loss: df[loss]}).dropna()
    grid = cells.groupby(["a", "b"], observed=True)[loss].agg(["min", "median", "size"])
    return cells, grid.reset_index().rename(columns={"min": "best", "size": "trials"})


def _heatmap(df: pd.DataFrame, a: str, b: str, loss: str) -> alt.Chart:
    cells, grid = _cells(df, a, b, loss)
    order_a, order_b = list(cells["a"].cat.categories), list(cells["b"].cat.categories)
    grid = grid.astype({"a": str, "b": str})
    base = alt.Chart(grid).encode(
        x=alt.X("a:O", sort=order_a, title=label(a)),
        y=alt.Y("b:O", sort=order_b[::-1], title=label(b)),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("best:Q", scale=LOSS_SCHEME, title=f"best {loss}"),
        tooltip=[
            "a",
            "b",
            alt.Tooltip("best:Q", format=".3f"),
            alt.Tooltip("median:Q", format=".3f"),
            "trials",
        ],
    )
    text = base.mark_text(fontSize=10, color="white").encode(text="trials:Q")
    return (rect + text).properties(width=200, height=200)


def _levels(values: pd.Series) -> pd.Series:
    """Ordered string levels: the values themselves, or log-spaced bins when there are many."""
    v = values.astype(float)
    if v.nunique() <= MAX_LEVELS:
        levels = sorted(v.dropna().unique())
        edges = np.array([*levels, np.inf])
        labels = [f"{x:g}" for x in levels]
        return pd.cut(v, edges, right=False, labels=labels)
    low, high = v.min(), v.max()
    log = low > 0
    edges = np.linspace(*(np.log10([low, high]) if log else [low, high]), HEATMAP_BINS + 1)
    edges = 10**edges if log else edges
    labels = [f"{a:.2g}-{b:.2g}" for a, b in itertools.pairwise(edges)]
    return pd.cut(v, edges, include_lowest=True, labels=labels)


def regression_charts(points: pd.DataFrame, fit: Fit, loss: str, seed: int = 0) -> alt.VConcatChart:
    """Residuals vs predicted, per architecture, and the largest coefficients."""
    df = points[["trial_id", "arch", "status", loss]].copy()
    df["predicted"], df["residual"] = fit.predicted, points[loss].to_numpy(float) - fit.predicted
    df, sampled = sample_rows(df, ROW_CAP, seed=seed)
    r2 = ", ".join(f"{a} {v:.2f}" for a, v in fit.r2_by_arch.items())
    scatter = (
        alt.Chart(plain(df))
        .mark_point(filled=True, opacity=0.5, size=25)
        .encode(
            x=alt.X("predicted:Q", scale=alt.Scale(zero=False), title=f"predicted {loss}"),
            y=alt.Y("residual:Q", title="residual (actual - predicted)"),
            color=alt.Color("arch:N", scale=arch_colour(sorted(df["arch"].unique())), legend=None),
            tooltip=["trial_id", "arch", "status", loss, "predicted", "residual"],
        )
        .properties(width=280, height=220)
        .facet(column=alt.Column("arch:N", title=None))
        .properties(
            title=titled(
                f"Linear model of {loss}: residuals vs predicted",
                [
                    f"R² {fit.r2:.3f} over {fit.n} trials; per architecture: {r2}.",
                    sampled,
                    "⚠ too few trials to trust (see the warning above)" if fit.warning else "",
                ],
            )
        )
    )
    coef = pd.DataFrame({"term": fit.terms, "coefficient": fit.coefficients})
    coef = coef.reindex(coef["coefficient"].abs().sort_values(ascending=False).index).head(20)
    bars = (
        alt.Chart(coef)
        .mark_bar()
        .encode(
            x=alt.X("coefficient:Q", title=f"change in {loss} per standard deviation"),
            y=alt.Y("term:N", sort="-x", title=None),
            color=alt.condition(
                "datum.coefficient < 0", alt.value("#54a24b"), alt.value("#e45756")
            ),
            tooltip=["term", alt.Tooltip("coefficient:Q", format=".4f")],
        )
        .properties(
            width=WIDTH - 100,
            height=16 * len(coef),
            title=titled(
                "Largest coefficients",
                "Green lowers the loss. Numeric terms are log10 and standardised; "
                "categories are against their most common value.",
            ),
        )
    )
    return alt.vconcat(scatter, bars)


def parallel_chart(
    all_arch: pd.DataFrame, hparams: list[str], loss: str, arch: str, top: int
) -> alt.LayerChart:
    """The `top` best trials of one architecture across its hyperparameters and the loss.

    Each axis is scaled to the range searched over all of the architecture's trials (log for
    spans over a decade), so where the best trials sit within that range is visible.
    """
    axes = [*hparams, loss]
    best = all_arch.nsmallest(top, loss)
    rows, marks = [], []
    for column in axes:
        position, ticks = _unit_scale(all_arch[column], best[column])
        name = label(column)
        rows.append(
            pd.DataFrame(
                {
                    "trial_id": best["trial_id"],
                    "axis": name,
                    "position": position,
                    "value": best[column].astype(str),
                    loss: best[loss],
                }
            )
        )
        marks += [{"axis": name, "position": p, "text": t} for p, t in ticks]
    long = pd.concat(rows).dropna(subset=["position"])
    x = alt.X(
        "axis:N",
        sort=[label(c) for c in axes],
        title=None,
        axis=alt.Axis(labelAngle=-30, orient="top"),
    )
    y = alt.Y("position:Q", axis=None, scale=alt.Scale(domain=[-0.03, 1.03]))
    lines = (
        alt.Chart(long)
        .mark_line(strokeOpacity=0.7)
        .encode(
            x=x,
            y=y,
            detail="trial_id:N",
            color=alt.Color(f"{loss}:Q", scale=LOSS_SCHEME),
            tooltip=["trial_id", "axis", "value", loss],
        )
    )
    axis_marks = alt.Chart(pd.DataFrame(marks))
    tick_text = axis_marks.mark_text(fontSize=9, align="left", dx=4).encode(x=x, y=y, text="text:N")
    tick_dots = axis_marks.mark_tick(color="#888", size=6, orient="horizontal").encode(x=x, y=y)
    rules = (
        alt.Chart(pd.DataFrame({"axis": [label(c) for c in axes]}))
        .mark_rule(color="#bbb")
        .encode(x=x)
    )
    return (rules + lines + tick_dots + tick_text).properties(
        width=max(WIDTH, 80 * len(axes)),
        height=HEIGHT - 40,
        title=titled(
            f"{arch}: the best {len(best)} trials across hyperparameters",
            "Each axis spans the values searched for this architecture (log where they span a "
            "decade); colour: the loss.",
        ),
    )


def _unit_scale(searched: pd.Series, shown: pd.Series) -> tuple[pd.Series, list[tuple[float, str]]]:
    """`shown` mapped onto [0, 1] by the range of `searched`, and labelled tick positions."""
    if hp_kind(searched) == "cat":
        levels = sorted(searched.dropna().astype(str).unique())
        spread = max(len(levels) - 1, 1)
        where = {v: i / spread for i, v in enumerate(levels)}
        return shown.astype(str).map(where).where(shown.notna()), [(p, v) for v, p in where.items()]
    s, v = searched.astype(float), shown.astype(float)
    low, high = s.min(), s.max()
    if low > 0 and high / low > 10:
        v, low_t, high_t = np.log10(v), np.log10(low), np.log10(high)
    else:
        low_t, high_t = low, high
    span = high_t - low_t if high_t > low_t else 1.0
    return (v - low_t) / span, [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]


def categorical_chart(points: pd.DataFrame, hparams: list[str], loss: str) -> alt.Chart | None:
    """For each categorical hyperparameter, the spread of the loss by value and architecture."""
    charts = [_category_box(points, c, loss) for c in hparams if hp_kind(points[c]) == "cat"]
    if not charts:
        return None
    return alt.hconcat(*charts).properties(
        title=titled(
            f"{loss} by categorical hyperparameter",
            "Box: quartiles; tick: median; line: min to max. Every completed and "
            "early-stopped trial at its last evaluation (aggregated here, not in the "
            "browser).",
        )
    )


def _category_box(points: pd.DataFrame, column: str, loss: str) -> alt.Chart:
    df = pd.DataFrame(
        {"value": points[column].astype(str), "arch": points["arch"], loss: points[loss]}
    )[points[column].notna()]
    q = df.groupby(["value", "arch"])[loss]
    stats = pd.concat(
        {
            "min": q.min(),
            "q1": q.quantile(0.25),
            "median": q.median(),
            "q3": q.quantile(0.75),
            "max": q.max(),
            "trials": q.size(),
        },
        axis=1,
    )
    stats = stats.reset_index()
    colour = alt.Color("arch:N", scale=arch_colour(sorted(points["arch"].unique())))
    base = alt.Chart(stats).encode(
        x=alt.X("value:N", title=label(column), axis=alt.Axis(labelAngle=0)),
        xOffset="arch:N",
        tooltip=["value", "arch", "trials", "median", "min", "max"],
    )
    whisker = base.mark_rule().encode(
        y=alt.Y("min:Q", title=loss, scale=alt.Scale(zero=False)), y2="max:Q", color=colour
    )
    box = base.mark_bar(size=12, opacity=0.6).encode(y="q1:Q", y2="q3:Q", color=colour)
    median = base.mark_tick(color="black", size=12, thickness=2).encode(y="median:Q")
    return (whisker + box + median).properties(
        width=60 * stats["value"].nunique() + 40, height=HEIGHT - 60
    )
