"""Assemble the report: which charts and tables, in what order, and what could not be drawn."""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import charts_hparams as ch
from analysis import charts_results as cr
from analysis import charts_scaling as cs
from analysis import tables
from analysis.importance import importance, method_name
from analysis.load import LOSS_GROUP_COLUMNS, Results, label
from analysis.page import Figure, Section, answer, render_page, warning, write_pngs
from analysis.regression import fit_loss
from pico import scaling_law as sl
from pico.files import write_atomic

COMPUTE_AXES = ("n_params", "train_flops", "elapsed_s")  # val_loss is plotted against each
# Resamples of the loss law's runs: half the library's 200, which took 3.5 s of CPU for the fits
# of a 60-run ladder (docs/report.md); a band's width then varies by up to a fifth between seeds.
SCALING_BOOTSTRAP = 100


@dataclass
class Options:
    """What the command line asked for."""

    objectives: list[str]
    maximize: list[bool]
    top: int = 20
    importance: str = "ped-anova"
    seed: int = 0


def write_report(
    results: Results,
    options: Options,
    html_path: Path,
    png_dir: Path,
    log: Callable[[str], None] = print,
) -> None:
    """Build every section, write the PNGs, then the HTML page (last, atomically)."""
    notes = list(results.notes)
    sections = build_sections(results, options, notes, log)
    figures = [f for s in sections for f in s.figures]
    write_pngs(figures, png_dir, log)
    png_rel = Path(_relative(png_dir, html_path.parent)).as_posix()
    page = render_page(_title(results), _summary(results), notes, sections, png_rel)
    write_atomic(html_path, page)
    log(f"wrote {html_path} ({len(page) / 1e6:.1f} MB, {len(figures)} charts)")


def build_sections(
    results: Results, options: Options, notes: list[str], log: Callable[[str], None]
) -> list[Section]:
    """Every section of the report, in reading order; problems are appended to `notes`."""
    steps = [
        ("overview", _overview),
        ("confirmation", _confirmation),
        ("Pareto frontiers", _pareto),
        ("scaling laws", _scaling),
        ("best trials", _best),
        ("learning curves", _curves),
        ("hyperparameter importance", _importance),
        ("hyperparameter effects", _effects),
    ]
    sections = []
    for name, step in steps:
        start = time.perf_counter()
        sections.append(step(results, options, notes))
        log(f"built {name} ({time.perf_counter() - start:.1f}s)")
    return sections


def _overview(results: Results, options: Options, notes: list[str]) -> Section:
    items = [tables.html_table(tables.status_counts(results.trials), "Trials by status")]
    errors = tables.error_counts(results.trials)
    if len(errors):
        items.append(tables.html_table(errors, "Most common errors"))
    if results.meta:
        items.append(tables.html_table(tables.metadata_table(results.meta), "Experiment metadata"))
    return Section("Overview", _comparability(results), items)


def _confirmation(results: Results, options: Options, notes: list[str]) -> Section:
    found = results.confirmation
    if found.empty:
        intro = (
            "This file has no confirmation trials: every loss in this report is one run on one "
            "seed, so two trials that differ by less than the seed-to-seed noise (unknown here) "
            "may differ by luck alone, and the best trial is partly the luckiest. The search's "
            "confirmation stage reruns the best configs of each architecture on fresh seeds and "
            "fills this section."
        )
        return Section("Confirmation", intro)
    chart = cr.confirmed_chart(found.summary, found.runs, found.loss, found.floor)
    items: list[Figure | str] = [
        answer(found.answer),
        Figure.of("confirmed", chart),
        tables.html_table(
            tables.confirmation_table(found.summary, found.metrics),
            "Confirmed configs: final loss over fresh seeds (completed runs only)",
        ),
    ]
    if len(found.comparisons):
        caption = "Comparisons on shared seeds, Holm-corrected over all of them"
        items.append(tables.html_table(tables.comparison_table(found.comparisons), caption))
    intro = (
        "The best configs of each architecture, rerun to the end on fresh seeds shared by all of "
        "them. Each gets its mean with a 95% Student-t interval, and the gap between its search "
        "score and that mean (the winner's curse: the search picks the luckiest draws). Configs "
        "are compared by paired t-tests on the seeds they share (Welch's test where they share "
        "none): each architecture's best (the config its search ranked first) against the other "
        "architectures' best, and against its other confirmed configs. The p-values are "
        "adjusted with Holm's method over all those comparisons, so that the chance of calling "
        "any one of them real by luck stays under 5%. Methods: docs/statistics.md."
    )
    return Section("Confirmation", intro, items)


def _confirmed_points(results: Results, y: str, x: str) -> pd.DataFrame | None:
    """Each confirmed config at its mean x and mean y, with the y interval (Pareto overlay)."""
    found = results.confirmation
    if found.empty or y != results.loss:
        return None
    summary = found.summary
    mean_x = found.runs.groupby("confirms")[x].mean()
    points = pd.DataFrame(
        {
            "config": summary["arch"] + " " + summary["config"],
            "arch": summary["arch"],
            "n": summary["n"],
            x: summary["config"].map(mean_x),
            y: summary[f"{y}_mean"],
            "low": summary[f"{y}_low"],
            "high": summary[f"{y}_high"],
        }
    )
    return points.dropna(subset=[x, y])


def _pareto(results: Results, options: Options, notes: list[str]) -> Section:
    loss = results.loss
    pairs = [(options.objectives, options.maximize)]
    pairs += [([loss, x], [False, False]) for x in COMPUTE_AXES if [loss, x] != options.objectives]
    items: list[Figure | str] = []
    for objectives, maximize in pairs:
        usable = np.isfinite(results.points[objectives].astype(float)).all(axis=1)
        if not usable.any():
            notes.append(f"Pareto chart over {', '.join(objectives)}: no trial has them all.")
            continue
        y, x = objectives[0], objectives[1]
        floor = results.confirmation.floor if y == loss else None
        chart, front = cr.pareto_chart(
            results.points,
            objectives,
            maximize,
            options.seed,
            _confirmed_points(results, y, x),
            floor,
        )
        items.append(Figure.of("pareto_" + "_".join(objectives), chart))
        if objectives == options.objectives:
            table = tables.frontier_table(front, results.points, results.hparams)
            caption = f"Non-dominated trials over {', '.join(objectives)}"
            items.append(tables.html_table(table, caption))
    intro = (
        "A trial is <em>non-dominated</em> when no other trial is at least as good in every "
        "objective and strictly better in one; the frontier is all of them (ties are all kept). "
        "Each trial counts at its last evaluation: an early-stopped trial is a valid point, "
        "trained for less, and is drawn as a triangle. The table lists the frontier over "
        f"<code>--objectives</code> ({html.escape(', '.join(options.objectives))})."
    )
    return Section("Pareto frontiers", intro, items)


def _scaling(results: Results, options: Options, notes: list[str]) -> Section:
    found = cs.scaling_fits(
        results.trials, results.loss, results.archs, bootstrap=SCALING_BOOTSTRAP, seed=options.seed
    )
    if found.reason:
        intro = (
            f"No scaling law: {html.escape(found.reason)}. A ladder trains each architecture at "
            "several sizes to several compute budgets, every run to the end with one recipe, and "
            f"fills this section: <code>{sl.LADDER_HINT}</code>."
        )
        return Section("Scaling laws", intro)
    fits = found.fits
    items: list[Figure | str] = [
        warning(f"Scaling laws for {fit.arch}: {'. Also: '.join(fit.problems)}.")
        for fit in fits
        if fit.problems
    ]
    if items:
        lacking = ", ".join(fit.arch for fit in fits if fit.problems)
        notes.append(f"Scaling laws for {lacking}: some fits could not be made (see that section).")
    if any(fit.law or fit.iso or fit.lr_law for fit in fits):
        items.append(tables.html_table(cs.law_table(fits), "Fitted scaling laws (90% intervals)"))
    charts = [
        ("scaling_frontier", cs.frontier_chart, any(fit.law for fit in fits)),
        ("scaling_isoflop", cs.isoflop_chart, any(fit.iso for fit in fits)),
        ("scaling_optimal", cs.optimal_chart, any(fit.iso for fit in fits)),
        ("scaling_lr", cs.lr_chart, any(fit.lr_law for fit in fits)),
        ("scaling_residuals", cs.residual_chart, any(fit.law for fit in fits)),
    ]
    items += [Figure.of(name, chart(fits)) for name, chart, drawn in charts if drawn]
    intro = (
        "Scaling laws fitted to the runs that converged (pico/scaling_law.py, method in "
        "docs/scaling_laws.md), per architecture; each chart shows every architecture in its "
        "own colour, so the steeper curve is the one that gains more from scale. Each size's "
        "best learning rate at each budget is fitted, the others are left out. The loss law "
        "L(N, D) = E + A/N^alpha + B/D^beta gives the compute-optimal frontier; the IsoFLOP "
        "analysis gives N_opt and D_opt from each budget's best size, with no law for the loss. "
        f"Intervals are 90%: for the loss law from {SCALING_BOOTSTRAP} bootstrap resamples of "
        f"the runs (half pico/scaling_law.py's {sl.BOOTSTRAP}, to keep the report fast: a band's "
        "width varies by up to a fifth between bootstrap seeds), for the power laws Student-t "
        "across budgets or sizes."
    )
    return Section("Scaling laws", intro, items)


def _best(results: Results, options: Options, notes: list[str]) -> Section:
    points, loss = results.points, results.loss
    best = tables.best_configs(
        points, loss, results.hparams, str(results.path), results.confirmation.summary
    )
    items: list[Figure | str] = [tables.html_table(best, f"Best trial per architecture by {loss}")]
    items.append(Figure.of("perplexity_accuracy", cr.perplexity_accuracy_chart(points, loss)))
    for arch in results.archs:
        hparams = results.arch_hparams(arch)
        if not hparams:
            notes.append(f"Parallel coordinates for {arch}: no hyperparameter varies.")
            continue
        sub = points[points["arch"] == arch]
        chart = ch.parallel_chart(sub, hparams, loss, arch, options.top)
        items.append(Figure.of(f"parallel_{arch}", chart))
    intro = (
        "The best configuration of each architecture, with the command that retrains it, then "
        f"perplexity against accuracy and the best <code>--top</code> {options.top} trials of "
        "each architecture across their hyperparameters."
    )
    return Section("Best trials", intro, items)


def _curves(results: Results, options: Options, notes: list[str]) -> Section:
    chart = cr.learning_curves_chart(results.curves, results.points, results.loss, results.archs)
    items: list[Figure | str] = [Figure.of("learning_curves", chart)]
    items.append(Figure.of("asha_rungs", cr.rungs_chart(results.search_trials)))
    intro = (
        "Validation loss at every evaluation of each trial. A triangle marks the last "
        "evaluation of a trial that ASHA stopped, coloured by the rung it reached; the bar "
        "chart counts every trial by the highest rung reached."
    )
    return Section("Learning curves", intro, items)


def _importance(results: Results, options: Options, notes: list[str]) -> Section:
    name = method_name(options.importance)
    found = []
    for arch in results.archs:
        sub = results.points[results.points["arch"] == arch]
        imp = importance(
            sub, results.arch_hparams(arch), results.loss, options.importance, arch, options.seed
        )
        if imp.reason:
            notes.append(f"Importance for {arch}: {imp.reason}.")
        else:
            found.append(imp)
    items: list[Figure | str] = [
        warning(f"Importance for {imp.arch}: {imp.warning}.") for imp in found if imp.warning
    ]
    if found:
        items.append(Figure.of("importance", ch.importance_chart(found, name, results.loss)))
    intro = (
        f"Optuna's {name} evaluator on a study rebuilt from the file's search trials, one per "
        "architecture. Each parameter an architecture does not use is absent from its trials, "
        "as in the search. The whiskers show how much each share moves when the trials are "
        "resampled: a ranking whose whiskers overlap is not settled. Choose the evaluator with "
        "<code>--importance ped-anova|fanova</code>."
    )
    return Section("Hyperparameter importance", intro, items)


def _effects(results: Results, options: Options, notes: list[str]) -> Section:
    points, loss, hparams = results.points, results.loss, results.hparams
    items: list[Figure | str] = []
    corr = ch.correlation_chart(points, hparams, loss)
    if corr is None:
        notes.append("Correlation matrix: it needs two columns that vary over >= 3 trials.")
    else:
        items.append(Figure.of("correlation", corr))
    floor = results.confirmation.floor
    for arch in results.archs:
        sub = points[points["arch"] == arch]
        heat = ch.heatmap_chart(sub, results.arch_hparams(arch), loss, arch, floor)
        if heat is None:
            pairs = ", ".join(f"{a} x {b}" for a, b in ch.HEATMAP_PAIRS)
            notes.append(f"Heatmaps for {arch}: none of the pairs {pairs} varies together.")
            continue
        sparse = ch.sparse_heatmaps(sub, results.arch_hparams(arch), loss)
        if sparse:
            items.append(
                warning(
                    f"Heatmaps for {arch}: most cells hold fewer than {ch.MIN_TRIALS_PER_CELL} "
                    f"trials in {', '.join(sparse)}. A cell's colour is then one or two runs, "
                    "and neighbouring cells differ by the seed as much as by the parameters."
                )
            )
        items.append(Figure.of(f"heatmaps_{arch}", heat))
    cats = ch.categorical_chart(points, hparams, loss)
    if cats is None:
        notes.append("Loss by categorical hyperparameter: no categorical hyperparameter varies.")
    else:
        items.append(Figure.of("by_category", cats))
    fit = fit_loss(points, hparams, loss)
    if fit.reason:
        notes.append(f"Regression: {fit.reason}.")
    else:
        if fit.warning:
            items.append(warning(f"Regression: {fit.warning}."))
        items.append(Figure.of("regression", ch.regression_charts(points, fit, loss)))
    intro = (
        "How each hyperparameter moves the loss: rank correlations, the best loss over pairs of "
        "hyperparameters, the loss by categorical choice, and a linear model of the loss on "
        "architecture, hyperparameters and training length."
    )
    return Section("Hyperparameter effects", intro, items)


def _comparability(results: Results) -> str:
    """One sentence on what the losses can be compared across."""
    if results.loss == "val_bpb":
        return (
            "The trials were trained on different corpora or tokenizers, whose losses in nats "
            "per token do not compare: <strong>every loss below is bits per byte "
            "(val_bpb)</strong>."
        )
    first = results.points.iloc[0]
    shared = ", ".join(
        f"{label(c)} {first[c]}"
        for c in LOSS_GROUP_COLUMNS
        if c in results.points.columns and not pd.isna(first[c])
    )
    if not shared:
        return "Losses are validation cross-entropy in nats (val_loss)."
    return (
        f"Every trial shares {html.escape(shared)}, so losses compare directly, whatever the "
        "block size or any other hyperparameter: validation cross-entropy in nats (val_loss)."
    )


def _title(results: Results) -> str:
    names = results.trials["experiment"].dropna()
    name = results.meta.get("experiment") or (names.iloc[0] if len(names) else results.path.stem)
    return f"Pico report: {name}"


def _summary(results: Results) -> str:
    n_rows = len(results.curves)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    n_search = len(results.search_trials)
    confirmations = len(results.trials) - n_search
    also = f" and {confirmations} confirmation trials" if confirmations else ""
    return html.escape(
        f"{results.path.name}: {n_search} search trials ({len(results.points)} with a usable "
        f"final evaluation){also}, {n_rows} evaluations, architectures "
        f"{', '.join(results.archs)}. Generated {generated}."
    )


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())
