"""Hyperparameter importance per architecture, from Optuna's evaluators on a rebuilt study.

The results file holds everything Optuna needs: each usable trial becomes a `FrozenTrial` whose
params are its non-null hp_ columns (so a parameter an architecture does not use is simply absent,
as in a define-by-run search) and whose value is its final loss. Distributions are inferred from
the values seen, since the search space itself is not in the file.

An importance from a few dozen trials is mostly noise, so each comes with its spread (the
importance recomputed on bootstrap resamples of the trials) and a warning when there are too few
trials for it to mean anything.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from analysis.load import hp_kind, label
from pico.errors import PicoError

METHODS = {
    "ped-anova": ("PED-ANOVA", optuna.importance.PedAnovaImportanceEvaluator),
    "fanova": ("fANOVA", optuna.importance.FanovaImportanceEvaluator),
}
# Beyond this many trials per architecture the evaluator sees a random subsample (the chart says
# so), to keep a 10,000-trial report fast. On the synthetic benchmark a 1,000-trial sample gives
# the same top four parameters as 3,333; fANOVA fits random forests and is capped lower.
MAX_TRIALS = {"ped-anova": 1000, "fanova": 300}
MIN_TRIALS = 2
# Too few trials for an importance to mean anything: fewer than 10 per parameter (the common rule
# of thumb for fitting a model on that many inputs, Peduzzi et al. 1996), and for PED-ANOVA
# fewer than 50, Optuna's own advice: at least 5 trials in its top-10% quantile.
TRIALS_PER_PARAMETER = 10
MIN_TRIALS_TO_TRUST = {"ped-anova": 50, "fanova": 0}
# The spread: the importance recomputed on BOOTSTRAP_RESAMPLES resamples of the trials drawn with
# replacement (seeded), its 5th to 95th percentile shown. Each resample refits the evaluator
# (PED-ANOVA: about 4 ms plus 0.25 ms a trial on the 2-core development machine), so resamples
# hold at most BOOTSTRAP_MAX_TRIALS trials, which keeps the spread under a second per
# architecture at any size. With more trials than that, the spread shown is that of an estimate
# from BOOTSTRAP_MAX_TRIALS trials, wider than the bars' own: the chart says so. fANOVA fits
# random forests, about a second each, and gets no spread.
BOOTSTRAP_RESAMPLES = 40
BOOTSTRAP_MAX_TRIALS = 50
SPREAD = (0.05, 0.95)
# A numeric column with this few distinct values was searched as a grid: treat it as categorical,
# because kernel density estimates over a handful of spikes (PED-ANOVA) are artefacts of bandwidth.
MAX_GRID_VALUES = 8


@dataclass
class Importance:
    """One architecture's importances (empty with a `reason` when they could not be computed)."""

    arch: str
    values: dict[str, float]  # parameter label -> normalised importance, largest first
    n_used: int  # trials the evaluator saw
    n_total: int  # usable trials of this architecture
    reason: str = ""
    low: dict[str, float] = field(default_factory=dict)  # SPREAD percentiles over resamples
    high: dict[str, float] = field(default_factory=dict)
    resamples: int = 0  # 0: no spread (fANOVA)
    resample_size: int = 0  # trials per resample
    warning: str = ""  # set when there are too few trials for the importance to mean much


def method_name(method: str) -> str:
    """The evaluator's display name, e.g. 'PED-ANOVA'."""
    return METHODS[method][0]


def check_method(method: str) -> None:
    """Raise PicoError if the evaluator is unknown or cannot run here."""
    if method not in METHODS:
        raise PicoError(
            f"unknown importance method {method!r}; choose one of: {', '.join(METHODS)}"
        )
    if method == "fanova":
        try:
            import sklearn  # noqa: F401  (Optuna's fANOVA fits scikit-learn random forests)
        except ImportError:
            raise PicoError(
                "--importance fanova needs scikit-learn (pip install scikit-learn); "
                "the default ped-anova does not"
            ) from None


def importance(
    df: pd.DataFrame, hparams: list[str], loss: str, method: str, arch: str = "", seed: int = 0
) -> Importance:
    """Importance of each of `hparams` (hp_ columns) for `loss` (lower is better) over `df`."""
    n_total = len(df)
    if n_total < MIN_TRIALS:
        reason = f"importance needs >= {MIN_TRIALS} trials per architecture, {arch} has {n_total}"
        return Importance(arch, {}, 0, n_total, reason)
    if not hparams:
        return Importance(arch, {}, 0, n_total, f"no hyperparameter of {arch} varies")
    if n_total > MAX_TRIALS[method]:
        df = df.sample(MAX_TRIALS[method], random_state=seed)
    study = rebuild_study(df, hparams, loss)
    values = _evaluate(study, method, seed)
    ranked = {k: float(v) for k, v in sorted(values.items(), key=lambda kv: -kv[1])}
    warning = _warning(n_total, hparams, method)
    if method == "fanova":
        return Importance(arch, ranked, len(df), n_total, warning=warning)
    size = min(len(df), BOOTSTRAP_MAX_TRIALS)
    draws = _bootstrap(study, method, BOOTSTRAP_RESAMPLES, size, seed)
    draws = draws.reindex(columns=list(ranked))
    return Importance(
        arch,
        ranked,
        len(df),
        n_total,
        low=draws.quantile(SPREAD[0]).to_dict(),
        high=draws.quantile(SPREAD[1]).to_dict(),
        resamples=BOOTSTRAP_RESAMPLES,
        resample_size=size,
        warning=warning,
    )


def _evaluate(study: optuna.Study, method: str, seed: int) -> dict[str, float]:
    """The evaluator's normalised importances on one study."""
    evaluator = METHODS[method][1](seed=seed) if method == "fanova" else METHODS[method][1]()
    with warnings.catch_warnings():
        # Optuna warns about small studies and experimental arguments: the page says n instead.
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(study, evaluator=evaluator)


def _bootstrap(
    study: optuna.Study, method: str, resamples: int, size: int, seed: int
) -> pd.DataFrame:
    """The importances on `resamples` studies of `size` trials drawn with replacement.

    One row per resample; a parameter a resample gave nothing is 0 there.
    """
    trials = study.get_trials(deepcopy=False)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        sample = optuna.create_study(direction="minimize")
        sample.add_trials([trials[i] for i in rng.integers(0, len(trials), size)])
        draws.append(_evaluate(sample, method, seed))
    return pd.DataFrame(draws).fillna(0.0)


def _warning(n_trials: int, hparams: list[str], method: str) -> str:
    """Why the importance cannot be trusted with this few trials ('' when it can)."""
    needed = max(TRIALS_PER_PARAMETER * len(hparams), MIN_TRIALS_TO_TRUST[method])
    if n_trials >= needed:
        return ""
    rule = f"{TRIALS_PER_PARAMETER} per parameter"
    if MIN_TRIALS_TO_TRUST[method]:
        rule += f" and at least {MIN_TRIALS_TO_TRUST[method]} for {method_name(method)}"
    return (
        f"only {n_trials} trials for {len(hparams)} parameters: too few for this ranking to "
        f"mean much (it needs {needed}: {rule})"
    )


def rebuild_study(df: pd.DataFrame, hparams: list[str], loss: str) -> optuna.Study:
    """An in-memory study with one completed trial per row of `df`."""
    distributions = {label(c): infer_distribution(df[c]) for c in hparams}
    columns = [label(c) for c in hparams]
    params = df[hparams].astype(object).where(df[hparams].notna(), None)
    trials = []
    for values, row in zip(df[loss].astype(float), params.itertuples(index=False), strict=True):
        present = {name: _native(v) for name, v in zip(columns, row, strict=True) if v is not None}
        trials.append(
            optuna.trial.create_trial(
                params=present,
                distributions={name: distributions[name] for name in present},
                value=values,
            )
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    study.add_trials(trials)
    return study


def infer_distribution(series: pd.Series) -> BaseDistribution:
    """The narrowest Optuna distribution that holds every non-null value of a hp_ column.

    Strings, booleans and numbers with at most MAX_GRID_VALUES distinct values become
    categorical; other numbers become int or float ranges, log-scaled when they span a decade.
    """
    values = series.dropna()
    kind = hp_kind(series)
    if kind == "cat" or values.nunique() <= MAX_GRID_VALUES:
        return CategoricalDistribution(sorted({_native(v) for v in values}, key=str))
    low, high = values.min(), values.max()
    # A search that spans a decade or more was almost certainly log-scaled (lr, widths).
    log = bool(low > 0 and high / low >= 10)
    if kind == "int":
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


def _native(value: object) -> object:
    """numpy scalars to Python ones, which Optuna's distributions compare against."""
    return value.item() if isinstance(value, np.generic) else value
