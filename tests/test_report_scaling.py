"""The report's scaling-law section on synthetic IsoFLOP ladders drawn from known laws.

`analysis.synthetic.make_ladder` draws each architecture's final losses from its own
L = E + A/N^alpha + B/D^beta (LADDER_LAWS: different exponents) with 0.5% noise, at 5 sizes
around the optimum of each of 4 budgets (1e12 to 1e15 FLOPs), so the section's charts can be
checked against the truth: the frontier, the IsoFLOP minima and exponents, the best learning
rate and the residuals. Too few sizes or budgets, and an ordinary search, must still give a
report that says what is missing.
"""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import pytest

from analysis import charts_scaling as cs
from analysis.build import Options, build_sections
from analysis.load import load_results
from analysis.page import Section
from analysis.report import main
from analysis.synthetic import (
    LADDER_LAWS,
    LADDER_LR,
    LADDER_LR_EXPONENT,
    LADDER_NOISE,
    ladder_loss,
    ladder_optimum,
    make_ladder,
    make_results,
)

SCALING_CHARTS = (
    "scaling_frontier",
    "scaling_isoflop",
    "scaling_optimal",
    "scaling_lr",
    "scaling_residuals",
)
LR_FACTORS = (0.5, 1.0, 2.0)  # each size's best learning rate and an octave either side
OPTIONS = Options(["val_loss", "n_params"], [False, False])


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> dict:
    """The whole report of a 180-run ladder (3 architectures x 4 budgets x 5 sizes x 3
    learning rates), built once."""
    folder = tmp_path_factory.mktemp("ladder")
    path = make_ladder(folder / "results.parquet", lr_factors=LR_FACTORS)
    assert main([str(path), "--top", "3"]) == 0
    page = (folder / "report.html").read_text()
    return {"folder": folder, "path": path, "html": page, "specs": page_specs(page)}


def page_specs(page: str) -> dict:
    """The Vega-Lite specs embedded in the page, by chart id."""
    blob = page.split("const PICO_SPECS = ", 1)[1].split(";\n", 1)[0]
    return json.loads(blob)


def data_rows(spec: dict, column: str) -> pd.DataFrame:
    """Every row of the chart's data sets that has `column`."""
    rows = [row for data in spec["datasets"].values() for row in data if column in row]
    return pd.DataFrame(rows)


def section(page: str) -> str:
    """The HTML of the page's scaling-law section."""
    return page.split('id="scaling-laws"', 1)[1].split("<section>", 1)[0]


def scaling_section(path) -> tuple[list, list[str], Section]:
    """The scaling section's items (HTML unescaped), the report's notes and the section itself,
    for a results file."""
    notes: list[str] = []
    sections = build_sections(load_results(path), OPTIONS, notes, print)
    [found] = [s for s in sections if s.title == "Scaling laws"]
    items = [item if not isinstance(item, str) else html.unescape(item) for item in found.items]
    return items, notes, found


def slope(rows: pd.DataFrame, x: str, y: str) -> float:
    """The exponent of a power law drawn as a line: its slope on log-log axes."""
    return float(np.polyfit(np.log(rows[x]), np.log(rows[y]), 1)[0])


# ------------------------------------------------------------------ a ladder with enough runs


def test_the_section_draws_every_chart_and_says_how(ladder):
    for name in SCALING_CHARTS:
        assert name in ladder["specs"], name
        assert (ladder["folder"] / "report_png" / f"{name}.png").exists(), name
    text = section(ladder["html"])
    assert "Fitted scaling laws (90% intervals)" in text
    assert 'class="warning"' not in text
    # The report bootstraps fewer resamples than the library's default, and says so.
    assert "100 bootstrap resamples" in text and "half pico/scaling_law.py's 200" in text


def test_the_frontier_is_the_true_laws_and_fits_tuned_runs_only(ladder):
    front = data_rows(ladder["specs"]["scaling_frontier"], "n_opt")
    assert sorted(front["arch"].unique()) == sorted(LADDER_LAWS)
    for arch, rows in front.groupby("arch"):
        flops = rows["train_flops"].to_numpy()
        n_star = ladder_optimum(arch, flops)
        truth = ladder_loss(arch, n_star, flops / (6 * n_star))
        # 0.5% noise per run; over four ladders the frontier was within 0.8% of the truth.
        np.testing.assert_allclose(rows["val_loss"], truth, rtol=0.02, err_msg=arch)
        assert (rows["low"] <= rows["val_loss"]).all() and (rows["val_loss"] <= rows["high"]).all()
        assert flops.min() == pytest.approx(1e12, rel=0.01)
        assert flops.max() == pytest.approx(1e15, rel=0.01)
    # The dots are the runs fitted: each size's lowest loss at each budget, 60 of the 180.
    shown = set(data_rows(ladder["specs"]["scaling_frontier"], "trial_id")["trial_id"])
    runs = pd.read_parquet(ladder["path"])
    best = runs.loc[runs.groupby(["arch", "n_params", "tokens_seen"])["val_loss"].idxmin()]
    assert len(runs) == 180 and shown == set(best["trial_id"])


def test_isoflop_minima_and_exponents_match_the_law(ladder):
    minima = data_rows(ladder["specs"]["scaling_isoflop"], "loss_opt")
    curves = data_rows(ladder["specs"]["scaling_isoflop"], "curve")
    assert len(minima) == 12 and curves["curve"].nunique() == 12  # 4 budgets x 3 archs
    for arch, rows in minima.groupby("arch"):
        # A parabola's flat bottom moves with the noise: up to 14% in three ladders.
        ratio = rows["n_opt"] / ladder_optimum(arch, rows["flops"])
        assert ratio.between(0.75, 1.25).all(), (arch, ratio.tolist())

    optimal = ladder["specs"]["scaling_optimal"]
    n_lines = data_rows(optimal, "low").dropna(subset=["n_opt"])
    d_lines = data_rows(optimal, "low").dropna(subset=["d_opt"])
    exponents = {}
    for arch, (_, _, alpha, _, beta) in LADDER_LAWS.items():
        exponents[arch] = slope(n_lines[n_lines["arch"] == arch], "flops", "n_opt")
        # Fitted within 0.02 of Hoffmann et al.'s a = beta / (alpha + beta) in four ladders.
        assert exponents[arch] == pytest.approx(beta / (alpha + beta), abs=0.05), arch
        d_exponent = slope(d_lines[d_lines["arch"] == arch], "flops", "d_opt")
        assert d_exponent == pytest.approx(alpha / (alpha + beta), abs=0.05), arch
    # Whose compute-optimal size grows fastest: the order of the true exponents.
    assert exponents["kgram_mlp"] > exponents["lstm"] > exponents["kv_transformer"]
    assert "kv_transformer: N_opt = k C^a with a = " in json.dumps(optimal)


def test_best_learning_rates_follow_their_law(ladder):
    spec = ladder["specs"]["scaling_lr"]
    best = data_rows(spec, "n_lrs")
    assert len(best) == 60 and (best["n_lrs"] == len(LR_FACTORS)).all()
    truth = LADDER_LR * (best["n_params"] / 1e6) ** LADDER_LR_EXPONENT
    np.testing.assert_allclose(best["hp_lr"], truth, rtol=1e-6)  # the middle factor wins
    line = data_rows(spec, "low")
    assert line["arch"].nunique() == 3
    for arch, rows in line.groupby("arch"):
        gamma = slope(rows, "n_params", "hp_lr")
        assert gamma == pytest.approx(LADDER_LR_EXPONENT, abs=1e-3), arch


def test_residuals_look_like_the_noise_drawn(ladder):
    residuals = data_rows(ladder["specs"]["scaling_residuals"], "residual")
    residuals = residuals.dropna(subset=["trial_id"])  # not the zero line's row
    assert len(residuals) == 60
    for arch, rows in residuals.groupby("arch"):
        assert 0.4 * LADDER_NOISE < rows["residual"].std() < 1.6 * LADDER_NOISE, arch
        assert abs(rows["residual"].mean()) < LADDER_NOISE, arch


# ------------------------------------------------------------------ too little to fit


def test_two_sizes_per_budget_warn_once_per_architecture(tmp_path):
    items, notes, found = scaling_section(make_ladder(tmp_path / "r.parquet", sizes=2))
    warnings = [item for item in items if isinstance(item, str) and "Warning:" in item]
    assert len(warnings) == 3
    for arch, warning in zip(("kgram_mlp", "lstm", "kv_transformer"), warnings, strict=True):
        assert f"Scaling laws for {arch}: the IsoFLOP analysis needs >= 3 budgets with >= 3 " in (
            warning
        )
        assert "0 of 4 budgets qualify" in warning and "launch/search.py --ladder" in warning
    # The loss law still fits (8 sizes across the budgets); nothing needs the IsoFLOP minima,
    # and no size was tried at two learning rates.
    assert [f.name for f in found.figures] == ["scaling_frontier", "scaling_residuals"]
    assert "Scaling laws for kgram_mlp, lstm, kv_transformer: some fits could not be made" in (
        " ".join(notes)
    )


def test_too_few_runs_for_any_fit_say_what_is_missing(tmp_path):
    path = make_ladder(tmp_path / "r.parquet", budgets=(1e12, 1e13), sizes=2)
    items, notes, found = scaling_section(path)
    assert not found.figures
    assert not any("Fitted scaling laws" in item for item in items)
    lacking = "Scaling laws for kgram_mlp, lstm, kv_transformer: some fits could not be made"
    assert any(note.startswith(lacking) for note in notes)
    for arch in LADDER_LAWS:
        [warning] = [item for item in items if f"Scaling laws for {arch}:" in item]
        # One line per architecture, though both the loss law and the IsoFLOP analysis failed.
        assert warning.count("the fit needs final losses of > 5 runs") == 1
        assert "got 4 runs at 4 sizes and 4 token counts" in warning


# ------------------------------------------------------------------ not a ladder


def test_an_ordinary_search_gets_one_short_note_and_its_report(tmp_path):
    path = make_results(tmp_path / "search.parquet", n_trials=30)
    assert main([str(path), "--top", "3"]) == 0
    page = (tmp_path / "report.html").read_text()
    text = section(page)
    assert "No scaling law: this file is a search: ASHA stopped" in text
    assert 'class="warning"' not in text and "pico-chart" not in text
    assert not any(name.startswith("scaling_") for name in page_specs(page))
    assert "Scaling laws for" not in page


def test_a_search_run_to_the_end_is_not_a_ladder_either(tmp_path):
    results = load_results(make_results(tmp_path / "fifo.parquet", n_trials=30, asha=False))
    found = cs.scaling_fits(results.trials, results.loss, results.archs)
    assert not found.fits
    assert found.reason.startswith("this file is a search: the converged ")
    named = found.reason.split(" differ in ", 1)[1].split(", which", 1)[0].split(", ")
    assert "activation" in named and "dropout" in named
    assert not set(named) & {"d_model", "n_layer", "batch_size", "lr", "seed"}
