"""The report end to end on synthetic results files, and the page rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import charts_results
from analysis.build import Options, build_sections
from analysis.load import load_results
from analysis.pareto import non_dominated
from analysis.report import main, parse_objectives
from analysis.synthetic import make_results

EXPECTED_CHARTS = [
    "confirmed",
    "pareto_val_loss_n_params",
    "pareto_val_loss_train_flops",
    "pareto_val_loss_elapsed_s",
    "perplexity_accuracy",
    "parallel_kgram_mlp",
    "parallel_lstm",
    "parallel_kv_transformer",
    "learning_curves",
    "asha_rungs",
    "importance",
    "correlation",
    "heatmaps_kgram_mlp",
    "heatmaps_lstm",
    "heatmaps_kv_transformer",
    "by_category",
    "regression",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """One full report of a 90-trial, three-architecture synthetic search whose best two
    configs per architecture were confirmed on 4 seeds, built once."""
    folder = tmp_path_factory.mktemp("report")
    results = make_results(
        folder / "results.parquet", n_trials=90, n_evals=10, seed=1, confirm_top=2, confirm_seeds=4
    )
    assert main([str(results), "--top", "5"]) == 0
    html = (folder / "report.html").read_text()
    return {"folder": folder, "results": results, "html": html, "specs": page_specs(html)}


def page_specs(html: str) -> dict:
    """The Vega-Lite specs embedded in the page, by chart id."""
    blob = html.split("const PICO_SPECS = ", 1)[1].split(";\n", 1)[0]
    return json.loads(blob)


def dataset_sizes(spec: dict) -> list[int]:
    return [len(rows) for rows in spec.get("datasets", {}).values()]


def test_every_chart_is_in_the_page_and_saved_as_png(report):
    assert sorted(report["specs"]) == sorted(EXPECTED_CHARTS)
    for name in EXPECTED_CHARTS:
        assert f'id="{name}"' in report["html"]
        png = report["folder"] / "report_png" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png.read_bytes()[16:24])
        assert width > 200 and height > 150


def test_page_is_self_contained(report):
    html = report["html"]
    assert "<script src" not in html and "<link" not in html
    assert html.count("window.vegaEmbed=") == 1  # the libraries are inlined exactly once
    for spec in report["specs"].values():
        assert all(n <= 5000 for n in dataset_sizes(spec))  # Altair's MaxRowsError limit


def test_pareto_table_is_the_true_frontier(report):
    rows = pd.read_parquet(report["results"])
    rows = rows[rows["phase"] == "search"]
    final = rows[rows["is_last"] & rows["status"].isin(["completed", "early_stopped"])]
    final = final[np.isfinite(final["val_loss"])]
    mask = non_dominated(final[["val_loss", "n_params"]].to_numpy(float))
    expected = set(final.loc[mask, "trial_id"])
    table = report["html"].split("Non-dominated trials over val_loss, n_params", 1)[1]
    table = table.split("</table>", 1)[0]
    shown = set(re.findall(r"<td>(trial_\d+)</td>", table))
    assert shown == expected and len(expected) >= 2


def test_tables_commands_and_metadata(report):
    html = report["html"]
    assert "python launch/train.py --from-results" in html and "--trial trial_" in html
    assert "Trials by status" in html and "early_stopped" in html and "errored" in html
    assert "Experiment metadata" in html and "schema_version" in html
    assert "Hyperparameter importance (PED-ANOVA" in json.dumps(report["specs"]["importance"])
    assert "losses compare directly" in html


def test_heatmaps_only_use_each_architectures_own_parameters(report):
    kgram = json.dumps(report["specs"]["heatmaps_kgram_mlp"])
    lstm = json.dumps(report["specs"]["heatmaps_lstm"])
    assert '"title": "k"' in kgram and '"title": "n_head"' not in kgram
    assert '"title": "k"' not in lstm and '"title": "hidden_size"' in lstm


def test_large_inputs_are_sampled_and_the_chart_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(charts_results, "ROW_CAP", 40)
    monkeypatch.setattr(charts_results, "CURVE_ROW_CAP", 30)
    results = load_results(make_results(tmp_path / "r.parquet", n_trials=150, n_evals=8))
    options = Options(["val_loss", "n_params"], [False, False])
    figures = {f.name: f for s in build_sections(results, options, [], print) for f in s.figures}
    pareto = json.dumps(figures["pareto_val_loss_n_params"].spec)
    assert "Showing all" in pareto and "a random" in pareto
    frontier_rows = [
        row
        for rows in figures["pareto_val_loss_n_params"].spec["datasets"].values()
        for row in rows
        if row["frontier"]
    ]
    assert len(frontier_rows) == int(
        non_dominated(results.points[["val_loss", "n_params"]].to_numpy(float)).sum()
    )
    curves = json.dumps(figures["learning_curves"].spec)
    assert "density of all" in curves and "trials drawn" in curves


def test_mixed_corpora_switch_to_bits_per_byte(tmp_path):
    path = make_results(tmp_path / "r.parquet", n_trials=40, corpora=("shakespeare", "wiki"))
    results = load_results(path)
    assert results.loss == "val_bpb"
    assert any("bits per byte" in note for note in results.notes)
    assert parse_objectives("val_loss,n_params", results) == (
        ["val_bpb", "n_params"],
        [False, False],
    )


def set_per_trial(path: Path, column: str, values: list) -> None:
    """Give the trials of a results file `values` in turn in `column`, keeping its metadata."""
    table = pq.read_table(path)
    ids = table.column("trial_id").to_pylist()
    rank = {trial: i for i, trial in enumerate(dict.fromkeys(ids))}
    kind = table.schema.field(column).type
    chosen = pa.array([values[rank[t] % len(values)] for t in ids], type=kind)
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, chosen), path)


def test_block_sizes_alone_keep_losses_in_nats(tmp_path):
    path = make_results(tmp_path / "r.parquet", n_trials=40)
    set_per_trial(path, "hp_block_size", [64, 128, 256])
    results = load_results(path)
    assert results.trials["hp_block_size"].nunique() == 3
    assert results.loss == "val_loss"
    assert not any("bits per byte" in note for note in results.notes)


def test_mixed_tokenizers_switch_to_bits_per_byte_and_say_why(tmp_path):
    path = make_results(tmp_path / "r.parquet", n_trials=40)
    set_per_trial(path, "hp_tokenizer", ["bpe:4096", "gpt2"])
    set_per_trial(path, "hp_block_size", [64, 128])
    results = load_results(path)
    assert results.loss == "val_bpb"
    [note] = [note for note in results.notes if "bits per byte" in note]
    assert note.startswith("The trials differ in tokenizer:") and "block" not in note


def test_three_objectives_and_one_architecture(tmp_path):
    path = make_results(tmp_path / "r.parquet", n_trials=40)
    results = load_results(path, archs=["lstm"])
    assert results.archs == ["lstm"]
    objectives, maximize = parse_objectives("val_loss,n_params,token_accuracy:max", results)
    assert maximize == [False, False, True]
    notes: list[str] = []
    sections = build_sections(results, Options(objectives, maximize), notes, print)
    names = [f.name for s in sections for f in s.figures]
    assert "pareto_val_loss_n_params_token_accuracy" in names
    assert "pareto_val_loss_n_params" in names  # the standard charts stay
    assert not any(n.startswith("parallel_kgram") for n in names)


def test_a_single_trial_still_gives_a_report_that_says_what_is_missing(tmp_path, capsys):
    path = make_results(tmp_path / "one.parquet", n_trials=1, archs=("lstm",), failures=False)
    out = tmp_path / "out" / "one.html"
    assert main([str(path), "--out", str(out)]) == 0
    html = out.read_text()
    assert "What this report could not draw" in html
    assert "importance needs &gt;= 2 trials per architecture, lstm has 1" in html
    assert "Regression: the regression needs more trials" in html
    assert (tmp_path / "out" / "one_png" / "pareto_val_loss_n_params.png").exists()
    assert "wrote" in capsys.readouterr().out  # progress lines as it goes


# ------------------------------------------------------------------ in a real browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]


class ChartProbe(HTMLParser):
    """Collects each chart div's rendered flag and whether a canvas or svg sits inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict] = {}
        self.errors: list[str] = []
        self._open: list[str | None] = []  # chart id (or None) of each open div
        self._in_errors = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div":
            is_chart = "pico-chart" in (a.get("class") or "")
            self._open.append(a["id"] if is_chart else None)
            if is_chart:
                self.charts[a["id"]] = {"rendered": a.get("data-rendered"), "drawn": False}
        elif tag in ("canvas", "svg"):
            for chart in filter(None, self._open):
                self.charts[chart]["drawn"] = True
        self._in_errors = self._in_errors or a.get("id") == "pico-errors"

    def handle_endtag(self, tag):
        if tag == "div" and self._open:
            self._open.pop()
        if tag == "ul":
            self._in_errors = False

    def handle_data(self, data):
        if self._in_errors and data.strip():
            self.errors.append(data.strip())


def chromium(args: list[str], tmp: Path) -> str:
    cmd = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def png_is_blank(path: Path) -> bool:
    """True if a PNG is one flat colour: its filtered scanlines then hold almost no variety."""
    data, pos, idat = path.read_bytes(), 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    counts = np.bincount(np.frombuffer(zlib.decompress(idat), np.uint8), minlength=256)
    flat = np.sort(counts)[-2:].sum()  # a flat image filters to one or two byte values
    return (counts.sum() - flat) < 0.001 * counts.sum()


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not installed (apt-get install -y chromium); CI installs it",
)
def test_every_chart_renders_in_headless_chromium(report, tmp_path):
    page = (report["folder"] / "report.html").as_uri()
    probe = ChartProbe()
    probe.feed(chromium(["--dump-dom", page], tmp_path))
    assert probe.errors == []
    assert sorted(probe.charts) == sorted(EXPECTED_CHARTS)
    for name, state in probe.charts.items():
        assert state == {"rendered": "true", "drawn": True}, name
    shot = tmp_path / "shot.png"
    chromium([f"--screenshot={shot}", "--window-size=1400,4000", page], tmp_path)
    assert not png_is_blank(shot)
    assert not png_is_blank(report["folder"] / "report_png" / "learning_curves.png")


def test_blank_detector_detects_blank(tmp_path):
    import vl_convert

    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="200"></svg>'
    blank = tmp_path / "blank.png"
    blank.write_bytes(vl_convert.svg_to_png(svg))
    assert png_is_blank(blank)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_the_browser_check_catches_a_chart_that_fails(tmp_path):
    from analysis.page import Figure, Section, render_page

    good = {"mark": "point", "data": {"values": [{"x": 1}]}, "encoding": {"x": {"field": "x"}}}
    bad = {"mark": "no-such-mark", "data": {"values": [{"x": 1}]}}
    section = Section("Test", "", [Figure("good", good), Figure("bad", bad)])
    page = tmp_path / "page.html"
    page.write_text(render_page("t", "", [], [section], "png"))
    probe = ChartProbe()
    probe.feed(chromium(["--dump-dom", page.as_uri()], tmp_path))
    assert probe.charts["good"] == {"rendered": "true", "drawn": True}
    assert probe.charts["bad"]["rendered"] is None
    assert len(probe.errors) == 1 and probe.errors[0].startswith("bad: ")


def test_some_nan_losses_are_left_out_and_said(tmp_path):
    path = make_results(tmp_path / "r.parquet", n_trials=30)
    df = pd.read_parquet(path)
    last_completed = df.index[df["is_last"] & (df["status"] == "completed")][:2]
    df.loc[last_completed, "val_loss"] = np.nan
    df.to_parquet(path)
    results = load_results(path)
    assert not results.points["trial_id"].isin(df.loc[last_completed, "trial_id"]).any()
    assert any("2 trial(s)" in n and "NaN" in n for n in results.notes)


# ------------------------------------------------------------------ uncertainty


def test_confirmation_section_answers_in_words(report):
    html = report["html"]
    section = html.split('id="confirmation"', 1)[1].split("<section>", 1)[0]
    assert "Answer: kv_transformer wins at this budget" in section
    assert "Confirmed configs: final loss over fresh seeds" in section
    assert "winner&#x27;s curse (val_loss)" in section and "95% interval (val_bpb)" in section
    assert "Comparisons on shared seeds, Holm-corrected" in section
    assert "real at 5%" in section and "paired t, 4 seeds" in section
    assert section.count("<tr><td>between architectures</td>") == 3
    assert section.count("<tr><td>within ") == 2  # one runner-up per architecture
    assert "kv_transformer (confirmation)" in html  # the status table counts them apart


def test_confirmed_configs_are_drawn_with_their_intervals(report):
    chart = json.dumps(report["specs"]["confirmed"])
    assert '"x2": {"field": "high"' in chart and "95% t-interval" in chart
    pareto = report["specs"]["pareto_val_loss_n_params"]
    text = json.dumps(pareto)
    assert "Diamonds: the 5 confirmed configs" in text and '"y2": {"field": "high"' in text
    assert "Grey band: the noise floor" in text and '"y2": {"field": "band_end"' in text
    assert "noise floor" in json.dumps(report["specs"]["heatmaps_lstm"])


def test_search_charts_leave_confirmation_trials_out(report):
    rows = pd.read_parquet(report["results"])
    confirm_ids = set(rows.loc[rows["phase"] == "confirm", "trial_id"])
    search_ids = set(rows.loc[rows["phase"] == "search", "trial_id"])
    for name in ("pareto_val_loss_n_params", "learning_curves", "perplexity_accuracy"):
        shown = {
            row["trial_id"]
            for data in report["specs"][name]["datasets"].values()
            for row in data
            if "trial_id" in row
        }
        assert shown and shown <= search_ids and not shown & confirm_ids, name
    results = load_results(report["results"])
    assert set(results.points["trial_id"]) <= search_ids
    assert len(results.trials) == len(search_ids) + len(confirm_ids)
    importance = json.dumps(report["specs"]["importance"])
    assert "30 trials" in importance and "38 trials" not in importance


def test_too_few_trials_are_said_plainly(report):
    html = report["html"]
    assert html.count('<p class="warning">') >= 3
    assert "Importance for lstm: only 29 trials for 9 parameters: too few" in html
    assert "Regression: only 89 trials for 20 terms: too few" in html
    assert "Heatmaps for lstm: most cells hold fewer than 3 trials in d_model x n_layer" in html
    importance = json.dumps(report["specs"]["importance"])
    assert "spread: 40 resamples" in importance and '"x2": {"field": "high"' in importance


def test_a_file_without_confirmation_says_its_losses_are_single_runs(tmp_path):
    path = make_results(tmp_path / "old.parquet", n_trials=12, archs=("lstm",))
    results = load_results(path)
    assert "phase" not in results.trials.columns and results.confirmation.empty
    sections = build_sections(results, Options(["val_loss", "n_params"], [False, False]), [], print)
    [confirmation] = [s for s in sections if s.title == "Confirmation"]
    assert not confirmation.items and "no confirmation trials" in confirmation.intro
    pareto = [f for s in sections for f in s.figures if f.name == "pareto_val_loss_n_params"]
    assert "Grey band" not in json.dumps(pareto[0].spec)
    assert "Diamonds" not in json.dumps(pareto[0].spec)


def test_regression_and_heatmap_warnings_depend_on_trials_per_term_and_cell():
    from analysis.charts_hparams import MIN_TRIALS_PER_CELL, sparse_heatmaps
    from analysis.regression import TRIALS_PER_TERM, fit_loss

    rng = np.random.default_rng(0)
    n = 400
    df = pd.DataFrame(
        {
            "arch": "lstm",
            "hp_d_model": pd.array(rng.choice([32, 64], n), dtype="Int64"),
            "hp_n_layer": pd.array(rng.choice([1, 2], n), dtype="Int64"),
            "tokens_seen": 1000,
        }
    )
    df["val_loss"] = 5 - 0.1 * np.log2(df["hp_d_model"].astype(float)) + rng.normal(0, 0.01, n)
    hparams = ["hp_d_model", "hp_n_layer"]
    assert not fit_loss(df, hparams, "val_loss").warning  # 400 trials, 2 terms
    few = df.head(TRIALS_PER_TERM * 2 - 1)
    assert "only 19 trials for 2 terms" in fit_loss(few, hparams, "val_loss").warning
    assert sparse_heatmaps(df, hparams, "val_loss") == []  # 100 trials per cell
    thin = df.head(4 * MIN_TRIALS_PER_CELL - 4)  # 4 cells, fewer than 3 trials in most
    assert sparse_heatmaps(thin, hparams, "val_loss") == ["d_model x n_layer (median 2)"]
