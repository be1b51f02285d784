"""The confirmation stage: rerun the best configs of a search over fresh seeds.

A search ranks configs by one run each, so its winner is partly the luckiest draw. After the
search phase has ended, `--confirm-top K --confirm-seeds S` reruns the K best search trials of
each architecture with S new seeds each (initialisation and data order), to the full
`max_steps`, as ordinary trials of the same trainable in the same study (phase `confirm`,
launch/study.py) and results file. Every confirmed config uses the same S seeds, so configs can be
compared seed by seed (pico/stats.py).

Which trials: per architecture, the search trials that ran furthest (completed ones before those
ASHA stopped early), then by their final val_loss. A trial that errored or diverged is never
confirmed. The plan is a function of the study, so a resumed confirmation stage continues it:
confirmation trials already asked are not asked again.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from launch import status
from launch.results import ResultsTable, TrialRecord

CONFIRMABLE = (status.COMPLETED, status.EARLY_STOPPED)


def confirmation_seeds(search_seed: int, count: int) -> list[int]:
    """The `count` seeds every confirmed config runs with: new ones, never the search's."""
    return [search_seed + 1 + i for i in range(count)]


def final_val_loss(record: TrialRecord) -> float | None:
    """The val_loss of a trial's last evaluation, if it is a finite number."""
    last = record.evals.get(record.last_step) or {}
    loss = last.get("val_loss")
    return loss if isinstance(loss, int | float) and math.isfinite(loss) else None


def chosen_trials(table: ResultsTable, top: int) -> list[TrialRecord]:
    """The `top` best search trials of each architecture (module docstring), by architecture."""
    by_arch: dict[str, list[tuple[int, float, str, TrialRecord]]] = defaultdict(list)
    for record in table.trials.values():
        loss = final_val_loss(record)
        if record.phase == "search" and record.status in CONFIRMABLE and loss is not None:
            arch = record.config["arch"]
            by_arch[arch].append((-record.last_step, loss, record.trial_id, record))
    return [
        record
        for arch in sorted(by_arch)
        for *_, record in sorted(by_arch[arch], key=lambda entry: entry[:3])[:top]
    ]


def confirmation_plan(
    table: ResultsTable, top: int, seeds: list[int], asked: set[tuple[str, int]]
) -> list[tuple[str, dict[str, Any]]]:
    """(confirmed trial id, config) of each confirmation trial still to ask, seed by seed, so
    that an interrupted stage leaves whole seeds of every config rather than all seeds of some.
    `asked` holds the (trial id, seed) pairs the study already has."""
    chosen = chosen_trials(table, top)
    return [
        (record.trial_id, {**record.config, "seed": seed})
        for seed in seeds
        for record in chosen
        if (record.trial_id, seed) not in asked
    ]
