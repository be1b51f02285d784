"""What every chart shares: the row budget, sampling with intent, colours and scales."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from pico.config import ARCHS
from pico.stats import NoiseFloor

# Altair refuses more than 5000 rows of inline data per chart (MaxRowsError). Each data set we
# embed stays well under it: past a few thousand marks a chart says no more, and the page and
# its PNGs (rendered mark by mark) get slow.
ROW_CAP = 3000
CURVE_ROW_CAP = 1500  # evaluations drawn as lines per architecture; the rest is a density
WIDTH, HEIGHT = 560, 340
ARCH_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2")
STATUS_SHAPES = {"completed": "circle", "early_stopped": "triangle-down", "running": "diamond"}


def arch_colour(archs: list[str]) -> alt.Scale:
    """A colour scale that gives each architecture the same colour on every chart."""
    known = [a for a in ARCHS if a in archs] + [a for a in archs if a not in ARCHS]
    return alt.Scale(domain=known, range=list(ARCH_COLOURS[: len(known)]))


def status_shape(statuses: list[str]) -> alt.Scale:
    """Marker shapes by status: early-stopped trials are downward triangles everywhere."""
    present = sorted(set(statuses))
    return alt.Scale(domain=present, range=[STATUS_SHAPES.get(s, "square") for s in present])


def sample_rows(
    df: pd.DataFrame,
    cap: int,
    keep: pd.Series | None = None,
    seed: int = 0,
    kept_as: str = "highlighted",
) -> tuple[pd.DataFrame, str]:
    """Every row flagged in `keep`, plus a uniform random sample of the others, `cap` rows in all.

    Returns the rows and a sentence for the chart's subtitle ('' when nothing was left out).
    """
    if len(df) <= cap:
        return df, ""
    keep = keep if keep is not None else pd.Series(False, index=df.index)
    kept, rest = df[keep], df[~keep]
    room = max(cap - len(kept), 0)
    sampled = rest.sample(min(room, len(rest)), random_state=seed)
    note = (
        f"Showing all {len(kept)} {kept_as} trials and a random {len(sampled)} of the other "
        f"{len(rest)} ({len(df)} in all)."
        if len(kept)
        else f"Showing a random {len(sampled)} of {len(df)} trials."
    )
    return pd.concat([kept, sampled]).sort_index(), note


def best_rows(df: pd.DataFrame, loss: str, cap: int, seed: int = 0) -> tuple[pd.DataFrame, str]:
    """The best half of `cap` by loss, plus a random sample of the rest: the good ones all show."""
    if len(df) <= cap:
        return df, ""
    keep = df[loss].rank(method="first") <= cap // 2
    return sample_rows(df, cap, keep, seed, kept_as=f"best (by {loss})")


def log_axis(values: pd.Series) -> alt.Axis:
    """SI-formatted labels (2M, 10G) that skip rather than overlap, for log-scaled axes."""
    if scale_for(values).type == "log":
        return alt.Axis(format="~s", labelOverlap="greedy")
    return alt.Axis()


def scale_for(values: pd.Series) -> alt.Scale:
    """Log scale for positive values spanning more than a decade, else linear (zero excluded)."""
    v = values.astype(float)
    v = v[np.isfinite(v)]
    if len(v) and (v > 0).all() and v.max() / v.min() > 10:
        # Not "nice": a nice log domain rounds out to whole decades and squashes the data.
        return alt.Scale(type="log", nice=False, padding=10)
    return alt.Scale(zero=False)


def noise_band(field: str, low: float, high: float) -> alt.Chart:
    """A grey band across the whole chart from `low` to `high` on the y axis `field`."""
    band = pd.DataFrame({field: [low], "band_end": [high]})
    return (
        alt.Chart(band)
        .mark_rect(color="#888", opacity=0.18)
        .encode(y=alt.Y(f"{field}:Q", title=field), y2="band_end:Q")
    )


def noise_text(floor: NoiseFloor, reference: str) -> list[str]:
    """What the noise band means, in two subtitle lines."""
    return [
        f"Grey band: the noise floor, {floor.band:.4f} from {reference}: two runs of one config "
        "on different seeds differ by less 95% of the time",
        f"(seed-to-seed sd {floor.sd:.4f}, from {floor.runs} confirmation runs). A trial inside "
        f"it is not distinguishable from {reference} by one run each.",
    ]


def titled(text: str, subtitle: str | list[str] = "") -> alt.TitleParams:
    """A chart title with a (possibly multi-line) subtitle saying what is shown and how."""
    lines = [s for s in ([subtitle] if isinstance(subtitle, str) else subtitle) if s]
    return alt.TitleParams(text=text, subtitle=lines, anchor="start")


def trial_tooltip(df: pd.DataFrame, extra: list[str]) -> list[alt.Tooltip]:
    """Tooltips naming the trial, its architecture and status, then `extra` columns."""
    base = ["trial_id", "arch", "status", "rung"]
    return [alt.Tooltip(c) for c in base + extra if c in df.columns]


def plain(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with nullable pandas types turned into plain ones that serialise to JSON cleanly."""
    out = df.copy()
    for name in out.columns:
        if isinstance(out[name].dtype, pd.api.extensions.ExtensionDtype) and not isinstance(
            out[name].dtype, pd.StringDtype
        ):
            out[name] = out[name].astype(object).where(out[name].notna(), None)
    return out
