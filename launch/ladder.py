"""The ladder run: `launch/search.py --space kv_transformer --ladder 1e12,3e12,1e13` trains an
IsoFLOP ladder (pico/ladder.py) on Ray Tune instead of sampling a search.

Each architecture of the space starts from Pico's default config with the search's fixed fields
(corpus, tokenizer, evaluation, seed). Learning rates, unless `--ladder-lrs` gives them:
- the Transformer runs under muP with one learning rate, the default 3e-3 at base width 128:
  muP keeps the best learning rate in place across width (docs/mup.md measured +0.40 octaves
  from width 32 to 256 here, against -2.61 under the standard parametrization), so tuning it
  per size would spend compute to find the same value;
- the K-gram MLP and the LSTM have no such rule, so each size is tuned by a small inner search:
  the default learning rate, half of it and twice it.

The plan is a function of the settings and the vocabulary alone, so a resumed ladder rebuilds it
and asks the study for the runs it has not asked yet. Every run lands in the results file as a
search trial that ran to its own `max_steps`.
"""

from __future__ import annotations

from typing import Any

from launch.settings import SearchSettings
from pico.config import ARCHS, TrainConfig
from pico.ladder import ladder_plan

INNER_LR_FACTORS = (0.5, 1.0, 2.0)  # an octave either side of the default learning rate


def ladder_archs(space: str) -> list[str]:
    """The architectures a ladder over `space` trains: the one it names, or all three."""
    return [space] if space in ARCHS else list(ARCHS)


def ladder_bases(settings: SearchSettings) -> list[tuple[TrainConfig, list[float]]]:
    """Each architecture's base config and the learning rates each of its sizes runs with."""
    bases = []
    for arch in ladder_archs(settings.space):
        extra = {"parametrization": "mup"} if arch == "kv_transformer" else {}
        base = TrainConfig(arch=arch, **settings.fixed_fields(), **extra).validate()
        if settings.ladder_lrs:
            lrs = list(settings.ladder_lrs)
        elif arch == "kv_transformer":
            lrs = [base.lr]
        else:
            lrs = [base.lr * factor for factor in INNER_LR_FACTORS]
        bases.append((base, lrs))
    return bases


def ladder_configs(settings: SearchSettings, vocab_size: int) -> list[dict[str, Any]]:
    """The ladder's runs, as trial configs, in the order they are asked."""
    from pico.models import build_model

    plan = ladder_plan(
        ladder_bases(settings),
        widths=settings.ladder_widths,
        budgets=settings.ladder,
        flops_per_token=lambda config: build_model(config, vocab_size).flops_per_token(),
    )
    return [config.to_dict() for config in plan]
