"""Importance on a study rebuilt from results: the one parameter driving the loss ranks first."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from analysis import importance as imp
from pico.errors import PicoError

HPARAMS = ["hp_lr", "hp_d_model", "hp_n_layer", "hp_activation", "hp_k"]


def driven_trials(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """Trials whose loss depends on the learning rate alone; the rest is noise."""
    rng = np.random.default_rng(seed)
    lr = 10 ** rng.uniform(-4, -2, n)
    df = pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(n)],
            "hp_lr": lr,
            "hp_d_model": pd.array(rng.choice([32, 64, 128, 256], n), dtype="Int64"),
            "hp_n_layer": pd.array(rng.integers(1, 20, n), dtype="Int64"),
            "hp_activation": rng.choice(["relu", "gelu", "silu"], n),
            # Conditional: only half the trials use k, as with an architecture-specific field.
            "hp_k": pd.array(
                np.where(rng.random(n) < 0.5, rng.integers(2, 9, n), 0), dtype="Int64"
            ),
        }
    )
    df.loc[df["hp_k"] == 0, "hp_k"] = pd.NA
    df["val_loss"] = 4.0 + 3.0 * (np.log10(lr) + 2.5) ** 2 + rng.normal(0, 1e-3, n)
    return df


@pytest.mark.parametrize("method", ["ped-anova", "fanova"])
def test_the_driving_parameter_ranks_first(method):
    if method == "fanova" and importlib.util.find_spec("sklearn") is None:
        pytest.skip("Optuna's fANOVA needs scikit-learn, which is not installed")
    result = imp.importance(driven_trials(), HPARAMS, "val_loss", method, "arch")
    assert not result.reason
    ranked = list(result.values)
    assert ranked[0] == "lr", result.values
    assert result.values["lr"] > 0.5
    assert result.values["lr"] > 3 * max(v for k, v in result.values.items() if k != "lr")
    assert abs(sum(result.values.values()) - 1) < 1e-6


def test_conditional_parameters_are_absent_not_imputed():
    df = driven_trials(20)
    study = imp.rebuild_study(df, HPARAMS, "val_loss")
    trials = study.get_trials()
    assert len(trials) == 20
    for trial, k in zip(trials, df["hp_k"], strict=True):
        assert ("k" in trial.params) == (not pd.isna(k))
        assert trial.params["activation"] in ("relu", "gelu", "silu")
    assert [t.value for t in trials] == pytest.approx(df["val_loss"].tolist())


def test_distributions_are_inferred_from_the_values():
    df = driven_trials()
    assert imp.infer_distribution(df["hp_lr"]) == FloatDistribution(
        float(df["hp_lr"].min()), float(df["hp_lr"].max()), log=True
    )
    # Few distinct values: a grid, treated as categories.
    assert isinstance(imp.infer_distribution(df["hp_d_model"]), CategoricalDistribution)
    layers = imp.infer_distribution(df["hp_n_layer"])
    assert isinstance(layers, IntDistribution) and layers.log
    assert imp.infer_distribution(pd.Series([True, False, pd.NA], dtype="boolean")) == (
        CategoricalDistribution([False, True])
    )


def test_too_few_trials_is_a_reason_not_an_error():
    result = imp.importance(driven_trials(1), HPARAMS, "val_loss", "ped-anova", "lstm")
    assert result.values == {}
    assert "needs >= 2 trials" in result.reason and "lstm has 1" in result.reason
    none_vary = imp.importance(driven_trials(5), [], "val_loss", "ped-anova", "lstm")
    assert "no hyperparameter" in none_vary.reason


def test_large_studies_are_subsampled_and_say_so(monkeypatch):
    monkeypatch.setitem(imp.MAX_TRIALS, "ped-anova", 50)
    result = imp.importance(driven_trials(200), HPARAMS, "val_loss", "ped-anova", "a")
    assert (result.n_used, result.n_total) == (50, 200)
    assert next(iter(result.values)) == "lr"


def test_unknown_method_is_bad_input():
    with pytest.raises(PicoError, match="unknown importance method"):
        imp.check_method("shap")


def test_the_spread_settles_the_ranking_when_there_are_enough_trials():
    result = imp.importance(driven_trials(120), HPARAMS, "val_loss", "ped-anova", "arch")
    assert not result.warning  # 120 trials: over 10 per parameter and over 50
    assert result.resamples == imp.BOOTSTRAP_RESAMPLES
    assert result.resample_size == imp.BOOTSTRAP_MAX_TRIALS  # resamples are capped
    assert set(result.low) == set(result.high) == set(result.values)
    others = max(result.high[k] for k in result.values if k != "lr")
    assert result.low["lr"] > others  # lr's whisker clears every other parameter's


def test_few_trials_come_with_a_warning_and_a_wide_spread():
    result = imp.importance(driven_trials(12), HPARAMS, "val_loss", "ped-anova", "lstm")
    assert result.warning.startswith("only 12 trials for 5 parameters: too few")
    assert "needs 50" in result.warning  # PED-ANOVA's own minimum beats 10 per parameter
    assert result.resample_size == 12
    assert max(result.high[k] - result.low[k] for k in result.values) > 0.2
    again = imp.importance(driven_trials(12), HPARAMS, "val_loss", "ped-anova", "lstm")
    assert again.low == result.low and again.high == result.high  # seeded


def test_fanova_gets_no_spread():
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("Optuna's fANOVA needs scikit-learn, which is not installed")
    result = imp.importance(driven_trials(10), HPARAMS, "val_loss", "fanova", "lstm")
    assert result.resamples == 0 and result.low == {} and result.values
