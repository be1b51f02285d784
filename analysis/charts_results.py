"""Charts of outcomes: Pareto frontiers, confirmed configs, perplexity vs accuracy, learning
curves, ASHA rungs."""

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
    noise_band,
    noise_text,
    plain,
    sample_rows,
    scale_for,
    status_shape,
    titled,
    trial_tooltip,
)
from analysis.pareto import frontier, frontier_by_group
from pico.stats import NoiseFloor

DENSITY_BINS = (30, 24)  # log tokens x loss cells for the density of learning curves
# Completed runs stand out; stopped ones recede (their stop markers carry the colour).
STATUS_COLOURS = {"completed": "#1f77b4", "early_stopped": "#b0b0b0", "running": "#17becf"}
ARCH_CHART_WIDTH = 330


def pareto_chart(
    points: pd.DataFrame,
    objectives: list[str],
    maximize: list[bool],
    seed: int = 0,
    confirmed: pd.DataFrame | None = None,
    floor: NoiseFloor | None = None,
) -> tuple[alt.Chart, pd.DataFrame]:
    """objectives[0] (y) against objectives[1] (x), non-dominated trials joined by a step line.

    The frontier is computed over every objective given (2 or more); the black step line joins
    the frontier over all architectures, the dashed coloured ones each architecture's own.
    `confirmed` (columns config, arch, the two objectives as means, low and high: the y
    interval, n) adds each confirmed config as a diamond with its interval; `floor` adds the
    noise band above the best y. Both only make sense when y is the loss, and only the search
    trials decide the frontier. Returns the chart and the frontier's rows.
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
        f"{n_front} non-dominated of {len(df)} search trials (large, outlined) over "
        f"{', '.join(_directed(o, m) for o, m in zip(objectives, maximize, strict=True))}.",
        "Black: the frontier over all architectures; dashed: each architecture's own. "
        "Triangles are trials that ASHA stopped early, at their last evaluation.",
        sampled,
    ]
    if confirmed is not None and len(confirmed):
        layers += _confirmed_layers(plain(confirmed), enc["x"], y, colour)
        subtitle.append(
            f"Diamonds: the {len(confirmed)} confirmed configs, mean over their seeds with its "
            "95% interval."
        )
    if floor is not None and floor.df:
        best = df[y].max() if maximize[0] else df[y].min()
        edge = best - floor.band if maximize[0] else best + floor.band
        layers.insert(0, noise_band(y, best, edge))
        subtitle += noise_text(floor, "the best trial")
    chart = alt.layer(*layers).properties(
        width=WIDTH, height=HEIGHT, title=titled(f"Pareto frontier: {y} vs {x}", subtitle)
    )
    return chart, df[df["frontier"]].sort_values(x)


def _confirmed_layers(
    confirmed: pd.DataFrame, x: alt.X, y: str, colour: alt.Color
) -> list[alt.Chart]:
    """Each confirmed config as a diamond at its mean, with a rule over its interval."""
    base = alt.Chart(confirmed).encode(x=x)
    bars = base.mark_rule(strokeWidth=2).encode(
        y=alt.Y("low:Q", title=y), y2="high:Q", color=colour
    )
    means = base.mark_point(
        shape="diamond", filled=True, size=120, stroke="black", strokeWidth=1, opacity=1
    ).encode(
        y=alt.Y(f"{y}:Q", title=y),
        color=colour,
        tooltip=["config", "arch", "n", alt.Tooltip(f"{y}:Q", format=".4f"), "low", "high"],
    )
    return [bars, means]


def confirmed_chart(
    summary: pd.DataFrame, runs: pd.DataFrame, loss: str, floor: NoiseFloor
) -> alt.LayerChart:
    """Each confirmed config: every seed's final loss, their mean with its 95% interval, and
    the config's search score, so the winner's curse shows as the gap between the two."""
    label = summary["arch"] + " " + summary["config"]
    order = list(label)
    configs = pd.DataFrame(
        {
            "config": label,
            "arch": summary["arch"],
            "n": summary["n"],
            "mean": summary[f"{loss}_mean"],
            "low": summary[f"{loss}_low"],
            "high": summary[f"{loss}_high"],
            "search": summary[f"search_{loss}"],
        }
    )
    names = dict(zip(summary["config"], label, strict=True))
    seeds = pd.DataFrame(
        {"config": runs["confirms"].map(names), "seed": runs["seed"], loss: runs[loss]}
    )
    y = alt.Y("config:N", sort=order, title=None)
    x_title = f"final {loss}"
    colour = alt.Color("arch:N", scale=arch_colour(sorted(configs["arch"].unique())))
    base = alt.Chart(plain(configs)).encode(y=y)
    interval = base.mark_rule(strokeWidth=3).encode(
        x=alt.X("low:Q", scale=alt.Scale(zero=False), title=x_title), x2="high:Q", color=colour
    )
    mean = base.mark_point(shape="diamond", filled=True, size=140, opacity=1).encode(
        x=alt.X("mean:Q", title=x_title),
        color=colour,
        tooltip=["config", "n", alt.Tooltip("mean:Q", format=".4f"), "low", "high", "search"],
    )
    search = base.mark_point(shape="cross", size=90, color="black", opacity=0.8).encode(
        x=alt.X("search:Q", title=x_title), tooltip=["config", "search"]
    )
    dots = (
        alt.Chart(plain(seeds))
        .mark_circle(size=25, color="#666", opacity=0.6)
        .encode(x=alt.X(f"{loss}:Q", title=x_title), y=y, tooltip=["config", "seed", loss])
    )
    subtitle = [
        "Diamond: the mean over the config's seeds, with its 95% t-interval; grey dots: each "
        "seed's run; black cross: its search score (left of the diamond: the search was lucky, "
        "the winner's curse).",
        "Each architecture's first row is the config its search ranked best.",
    ]
    if floor.df:
        subtitle.append(
            f"Seed-to-seed sd {floor.sd:.4f} (pooled over {floor.runs} runs of "
            f"{floor.configs} configs)."
        )
    return alt.layer(interval, dots, search, mean).properties(
        width=WIDTH,
        height=max(26 * len(configs), 80),
        title=titled(f"Confirmed configs: final {loss} over fresh seeds", subtitle),
    )


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
