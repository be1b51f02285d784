"""Charts of outcomes: Pareto frontiers, perplexity vs accuracy, learning curves, ASHA rungs."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from analysis.chart_common import (
    CURVE_ROW_CAP,
    HEIGHT,
    ROW_CAP,
    WIDTH,
    arch_colour,
    best_rows,
    log_axis,
    plain,
    sample_rows,
    scale_for,
    status_shape,
    titled,
    trial_tooltip,
)
from analysis.pareto import frontier, frontier_by_group

DENSITY_BINS = (30, 24)  # log tokens x loss cells for the density of learning curves
# Completed runs stand out; stopped ones recede (their stop markers carry the colour).
STATUS_COLOURS = {"completed": "#1f77b4", "early_stopped": "#b0b0b0", "running": "#17becf"}
ARCH_CHART_WIDTH = 330


def pareto_chart(
    points: pd.DataFrame, objectives: list[str], maximize: list[bool], seed: int = 0
) -> tuple[alt.Chart, pd.DataFrame]:
    """objectives[0] (y) against objectives[1] (x), non-dominated trials joined by a step line.

    The frontier is computed over every objective given (2 or more); the black step line joins
    the frontier over all architectures, the dashed coloured ones each architecture's own.
    Returns the chart and the frontier's rows.
    """
    y, x = objectives[0], objectives[1]
    cols = list(dict.fromkeys(["trial_id", "arch", "status", "rung", *objectives]))
    df = points[cols].copy()
    df = df[np.isfinite(df[objectives].astype(float)).all(axis=1)]
    df["frontier"] = frontier(df, objectives, maximize)
    df["arch_frontier"] = frontier_by_group(df, objectives, maximize, by="arch")
    shown, sampled = sample_rows(df, ROW_CAP, df["frontier"] | df["arch_frontier"], seed)
    shown = plain(shown)

    colour = alt.Color("arch:N", scale=arch_colour(sorted(df["arch"].unique())), title="arch")
    shape = alt.Shape("status:N", scale=status_shape(list(df["status"].unique())))
    enc = {
        "x": alt.X(f"{x}:Q", scale=scale_for(df[x]), axis=log_axis(df[x]), title=x),
        "y": alt.Y(f"{y}:Q", scale=scale_for(df[y]), axis=log_axis(df[y]), title=y),
        "tooltip": trial_tooltip(shown, objectives),
    }
    base = alt.Chart(shown).encode(**enc)
    dots = base.mark_point(filled=True, opacity=0.45, size=30).encode(color=colour, shape=shape)
    best = base.transform_filter("datum.frontier").mark_point(
        filled=True, size=110, stroke="black", strokeWidth=1.2, opacity=1
    )
    layers = [dots, best.encode(color=colour, shape=shape)]
    if len(objectives) == 2:
        # Step-after: the best y attainable holds from one frontier point until the next x.
        step = "step-before" if maximize[1] else "step-after"
        arch_lines = base.transform_filter("datum.arch_frontier").mark_line(
            interpolate=step, strokeDash=[4, 3], strokeOpacity=0.8
        )
        all_line = base.transform_filter("datum.frontier").mark_line(
            interpolate=step, color="black", strokeWidth=2
        )
        layers = [arch_lines.encode(color=colour, order=f"{x}:Q"), all_line, *layers]
    n_front = int(df["frontier"].sum())
    subtitle = [
        f"{n_front} non-dominated of {len(df)} trials (large, outlined) over "
        f"{', '.join(_directed(o, m) for o, m in zip(objectives, maximize, strict=True))}.",
        "Black: the frontier over all architectures; dashed: each architecture's own. "
        "Triangles are trials that ASHA stopped early, at their last evaluation.",
        sampled,
    ]
    chart = alt.layer(*layers).properties(
        width=WIDTH, height=HEIGHT, title=titled(f"Pareto frontier: {y} vs {x}", subtitle)
    )
    return chart, df[df["frontier"]].sort_values(x)


def perplexity_accuracy_chart(points: pd.DataFrame, loss: str, seed: int = 0) -> alt.Chart:
    """Perplexity (log scale) against token accuracy, one dot per trial, coloured by arch."""
    df = points[np.isfinite(points[["perplexity", "token_accuracy"]].astype(float)).all(axis=1)]
    df, sampled = best_rows(df, loss, ROW_CAP, seed)
    df = plain(df[["trial_id", "arch", "status", "rung", loss, "perplexity", "token_accuracy"]])
    chart = (
        alt.Chart(df)
        .mark_point(filled=True, opacity=0.6, size=35)
        .encode(
            x=alt.X("token_accuracy:Q", scale=alt.Scale(zero=False), title="token accuracy"),
            y=alt.Y("perplexity:Q", scale=alt.Scale(type="log"), title="perplexity (log)"),
            color=alt.Color("arch:N", scale=arch_colour(sorted(df["arch"].unique()))),
            shape=alt.Shape("status:N", scale=status_shape(list(df["status"].unique()))),
            tooltip=trial_tooltip(df, [loss, "perplexity", "token_accuracy"]),
        )
    )
    subtitle = ["Each trial at its last evaluation.", sampled]
    if loss == "val_bpb":
        subtitle.append("Both are per token: compare them only within one tokenizer.")
    return chart.properties(
        width=WIDTH, height=HEIGHT, title=titled("Perplexity vs token accuracy", subtitle)
    )


def learning_curves_chart(
    curves: pd.DataFrame, final: pd.DataFrame, loss: str, archs: list[str]
) -> alt.HConcatChart:
    """loss vs tokens seen per architecture; a marker where ASHA stopped a trial, by rung.

    Every trial is drawn when its architecture's evaluations fit the row budget. Otherwise the
    best trials (by final loss) are drawn and every evaluation shows as a grey density behind.
    """
    charts = [_arch_curves(curves, final, loss, arch) for arch in archs]
    return (
        alt.hconcat(*charts)
        .resolve_scale(color="independent")
        .properties(
            title=titled(
                f"Learning curves: {loss} vs tokens seen",
                "Lines are trials (colour: status); ▼ marks where ASHA stopped a trial, coloured "
                "by the rung it reached.",
            )
        )
    )


def _arch_curves(curves: pd.DataFrame, final: pd.DataFrame, loss: str, arch: str) -> alt.Chart:
    ranked = final[final["arch"] == arch].sort_values(loss)
    rows = curves[curves["trial_id"].isin(ranked["trial_id"])]
    rows = rows[np.isfinite(rows[loss].astype(float)) & (rows["tokens_seen"] > 0)]
    per_trial = rows.groupby("trial_id").size().reindex(ranked["trial_id"]).fillna(0).cumsum()
    drawn_ids = per_trial.index[per_trial.to_numpy() <= CURVE_ROW_CAP]
    drawn = plain(
        rows[rows["trial_id"].isin(drawn_ids)][["trial_id", "status", "rung", "tokens_seen", loss]]
    )
    tokens = rows["tokens_seen"]
    x = alt.X("tokens_seen:Q", scale=scale_for(tokens), axis=log_axis(tokens), title="tokens seen")
    y = alt.Y(f"{loss}:Q", scale=alt.Scale(zero=False), title=loss)
    lines = (
        alt.Chart(drawn)
        .mark_line(strokeOpacity=0.45, strokeWidth=1)
        .encode(
            x=x,
            y=y,
            detail="trial_id:N",
            color=alt.Color("status:N", scale=status_colour(drawn["status"])),
            tooltip=["trial_id", "status", "tokens_seen", loss],
        )
    )
    stops = drawn.groupby("trial_id").tail(1)
    stops = stops[stops["status"] == "early_stopped"]
    markers = (
        alt.Chart(stops)
        .mark_point(shape="triangle-down", filled=True, size=60, opacity=0.9)
        .encode(
            x=x,
            y=y,
            color=alt.Color("rung:O", scale=alt.Scale(scheme="plasma"), title="stopped at rung"),
            tooltip=["trial_id", "rung", "tokens_seen", loss],
        )
    )
    layers = [lines, markers] if len(stops) else [lines]
    subtitle = f"all {len(ranked)} trials"
    if len(drawn_ids) < len(ranked):
        layers.insert(0, _density(rows, loss, x, y))
        subtitle = (
            f"best {len(drawn_ids)} of {len(ranked)} trials drawn (and their stops); "
            f"grey: density of all {len(rows)} evaluations"
        )
    return (
        alt.layer(*layers)
        .resolve_scale(color="independent")
        .properties(width=ARCH_CHART_WIDTH, height=HEIGHT, title=titled(arch, subtitle))
    )


def _density(rows: pd.DataFrame, loss: str, x: alt.X, y: alt.Y) -> alt.Chart:
    """Every evaluation binned on log tokens x loss, as grey cells (the lines show the best)."""
    log_t = np.log10(rows["tokens_seen"].to_numpy(float))
    values = rows[loss].to_numpy(float)
    top = np.quantile(values, 0.99)  # one diverging run should not flatten the whole plot
    counts, tx, ly = np.histogram2d(log_t, np.minimum(values, top), bins=DENSITY_BINS)
    i, j = np.nonzero(counts)
    cells = pd.DataFrame(
        {
            "tokens_seen": 10 ** tx[i],
            "tokens_end": 10 ** tx[i + 1],
            loss: ly[j],
            "loss_end": ly[j + 1],
            "evaluations": counts[i, j].astype(int),
        }
    )
    return (
        alt.Chart(cells)
        .mark_rect(opacity=0.6)
        .encode(
            x=x,
            x2="tokens_end:Q",
            y=y,
            y2="loss_end:Q",
            color=alt.Color(
                "evaluations:Q", scale=alt.Scale(scheme="greys", type="log"), legend=None
            ),
            tooltip=["evaluations"],
        )
    )


def rungs_chart(trials: pd.DataFrame) -> alt.Chart:
    """How many trials reached each ASHA rung, by architecture and status (every trial)."""
    counts = trials.groupby(["arch", "rung", "status"]).size().rename("trials").reset_index()
    return (
        alt.Chart(plain(counts))
        .mark_bar()
        .encode(
            x=alt.X("rung:O", title="highest ASHA rung reached"),
            y=alt.Y("trials:Q", title="trials"),
            color=alt.Color("status:N"),
            column=alt.Column("arch:N", title=None),
            tooltip=["arch", "rung", "status", "trials"],
        )
        .properties(
            width=220,
            height=200,
            title=titled("Trials by ASHA rung", "Every trial in the file, errored ones included."),
        )
    )


def status_colour(statuses: pd.Series) -> alt.Scale:
    """Line colours for the statuses present (so the legend lists only those)."""
    present = sorted(statuses.unique())
    return alt.Scale(domain=present, range=[STATUS_COLOURS.get(s, "#9467bd") for s in present])


def _directed(name: str, maximize: bool) -> str:
    return f"{name} ({'max' if maximize else 'min'})"
