"""The confirmation stage's numbers for the report, computed once per file with pico/stats.py."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pico import stats


@dataclass
class Confirmation:
    """Each confirmed config's interval, the comparisons between them, and the noise floor."""

    loss: str  # the loss every number is in (val_bpb when the file mixes corpora)
    summary: pd.DataFrame  # stats.confirmation_summary: one row per confirmed config
    comparisons: pd.DataFrame  # stats.compare_confirmed: one row per test
    floor: stats.NoiseFloor
    runs: pd.DataFrame  # the completed confirmation runs' final rows
    answer: list[str]  # stats.answer_lines

    @property
    def empty(self) -> bool:
        """True when the file has no confirmation trial."""
        return self.summary.empty

    @property
    def metrics(self) -> tuple[str, ...]:
        """What the summary holds: nats and bits per byte, or bits per byte alone."""
        return _metrics(self.loss)


def confirmation(trials: pd.DataFrame, loss: str) -> Confirmation:
    """Everything the report shows of the confirmation trials among `trials` (final rows).

    Bits per byte are summarised beside nats when the losses are in nats (one corpus and
    tokenizer); when they are in bits per byte, nats do not compare and are left out.
    """
    return Confirmation(
        loss,
        stats.confirmation_summary(trials, _metrics(loss)),
        stats.compare_confirmed(trials, loss),
        stats.noise_floor(trials, loss),
        stats.confirmation_runs(trials, (loss,)),
        stats.answer_lines(trials, loss),
    )


def _metrics(loss: str) -> tuple[str, ...]:
    return ("val_loss", "val_bpb") if loss == "val_loss" else (loss,)
