"""A linear model of the final loss on architecture and hyperparameters (numpy least squares).

Numeric hyperparameters enter as log10 when positive (widths and learning rates act
multiplicatively), standardised so that coefficients compare across parameters. Categorical ones
(strings, booleans) are one-hot against their most common value. A parameter an architecture does
not use is 0 there: its effect is then carried by that architecture's one-hot column. The log of
tokens seen enters too, so that early-stopped trials (trained for less) do not bias the rest.

With fewer than TRIALS_PER_TERM trials per term the fit is mostly noise (the common rule of thumb
of about 10 observations per predictor, Peduzzi et al. 1996; Harrell, Regression Modeling
Strategies): it is still drawn, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.load import hp_kind, label

TRIALS_PER_TERM = 10


@dataclass
class Fit:
    """The least-squares fit, or a `reason` why there is none."""

    n: int  # trials fitted
    terms: list[str] = field(default_factory=list)
    coefficients: np.ndarray = field(default_factory=lambda: np.zeros(0))
    predicted: np.ndarray = field(default_factory=lambda: np.zeros(0))
    r2: float = float("nan")
    r2_by_arch: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    warning: str = ""  # set when there are too few trials per term for the fit to mean much


def fit_loss(points: pd.DataFrame, hparams: list[str], loss: str) -> Fit:
    """Regress `loss` on the design matrix of `points`; R² overall and per architecture."""
    terms, x = design_matrix(points, hparams)
    y = points[loss].to_numpy(float)
    n, p = x.shape
    if n <= p + 1:
        reason = f"the regression needs more trials ({n}) than terms ({p} plus an intercept)"
        return Fit(n, reason=reason)
    x1 = np.column_stack([np.ones(n), x])
    beta, *_ = np.linalg.lstsq(x1, y, rcond=None)  # min-norm, so collinear terms are harmless
    predicted = x1 @ beta
    by_arch = {
        arch: _r2(y[mask], predicted[mask])
        for arch in sorted(points["arch"].unique())
        if (mask := (points["arch"] == arch).to_numpy()).sum() > 1
    }
    warning = ""
    if n < TRIALS_PER_TERM * p:
        warning = (
            f"only {n} trials for {p} terms: too few for these coefficients to mean much (it "
            f"needs {TRIALS_PER_TERM * p}, {TRIALS_PER_TERM} per term); with this few, R² "
            "flatters the fit"
        )
    return Fit(n, terms, beta[1:], predicted, _r2(y, predicted), by_arch, warning=warning)


def design_matrix(points: pd.DataFrame, hparams: list[str]) -> tuple[list[str], np.ndarray]:
    """The regression's terms (names) and its matrix (trials x terms), without intercept."""
    columns: dict[str, np.ndarray] = {}
    columns.update(_one_hot(points["arch"], "arch"))
    for name in hparams:
        if hp_kind(points[name]) == "cat":
            columns.update(_one_hot(points[name], label(name)))
        else:
            columns[_numeric_name(points[name], label(name))] = _standardise(points[name])
    tokens = points["tokens_seen"].astype(float)
    if tokens.nunique() > 1 and (tokens > 0).all():
        columns["log10 tokens_seen"] = _standardise(np.log10(tokens))
    terms = [t for t, v in columns.items() if np.ptp(v) > 0]  # a constant column adds nothing
    matrix = np.column_stack([columns[t] for t in terms]) if terms else np.zeros((len(points), 0))
    return terms, matrix


def _one_hot(values: pd.Series, name: str) -> dict[str, np.ndarray]:
    """One column per value but the most common (the baseline); null rows are all zero."""
    present = values.dropna().astype(str)
    if present.empty:
        return {}
    baseline = present.value_counts().index[0]
    text = values.astype(object).where(values.notna(), None)
    return {
        f"{name}={v}": (text.map(lambda t, v=v: t is not None and str(t) == v)).to_numpy(float)
        for v in sorted(present.unique())
        if v != baseline
    }


def _numeric_name(values: pd.Series, name: str) -> str:
    return f"log10 {name}" if _use_log(values) else name


def _use_log(values: pd.Series) -> bool:
    present = values.dropna().astype(float)
    return bool(len(present) and (present > 0).all())


def _standardise(values: pd.Series) -> np.ndarray:
    """(log-)values scaled to mean 0, sd 1 over the trials that have them; 0 where null."""
    v = values.astype(float)
    if _use_log(values):
        v = np.log10(v)
    mean, sd = v.mean(), v.std(ddof=0)
    scaled = (v - mean) / sd if sd > 0 else v * 0.0
    return scaled.fillna(0.0).to_numpy(float)


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    total = ((y - y.mean()) ** 2).sum()
    return float(1 - ((y - predicted) ** 2).sum() / total) if total > 0 else float("nan")
