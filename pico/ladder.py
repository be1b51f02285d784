"""An IsoFLOP ladder: a few model widths trained to each of a few compute budgets, the runs a
scaling-law fit needs (pico/scaling_law.py), and the config a fitted law recommends.

    plan = ladder_plan([(base, [3e-3])], widths=[32, 64, 128], budgets=[1e12, 3e12, 1e13],
                       flops_per_token=lambda cfg: build_model(cfg, vocab).flops_per_token())

One width rule for all three architectures: `d_model` is the width, and every other width
(`hidden_size` of the K-gram MLP and the LSTM; the Transformer's MLP through `mlp_ratio`) keeps
its ratio to it, while depth, heads, batch and context stay the base config's. A Transformer
under muP keeps its base width and head count (`TrainConfig.widen`), so one learning rate means
the same at every width (docs/mup.md). Each run's schedule is matched to its length: its
`max_steps` spend the budget, warmup is a fixed fraction of them, and the cosine decay ends at
the last step; it is evaluated once, at the end, since only the final loss enters the fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pico.config import TrainConfig
from pico.errors import PicoError
from pico.scaling_law import (
    LADDER_HINT,
    LEVEL,
    MIN_SIZES,
    PARAMS,
    Prediction,
    best_lr_runs,
    budget_labels,
    compute_optimal,
    fit_flops_per_token,
    fit_loss_law,
    fit_lr_law,
    predict,
    scaling_runs,
)

WARMUP_FRACTION = 0.05  # of each run's steps: warmup scaled to the run, as Porian et al. 2024
MIN_STEPS = 20  # fewer and the step count's rounding moves a run's compute by > 2.5%


def at_width(base: TrainConfig, width: int) -> TrainConfig:
    """`base` at `d_model=width`, its other widths scaled in proportion (module docstring)."""
    if width < 1:
        raise PicoError(f"a ladder width must be a positive integer, got {width}")
    if base.parametrization == "mup":
        return base.widen(width)
    hidden = max(1, round(base.hidden_size * width / base.d_model))
    return base.replace(d_model=width, hidden_size=hidden).validate()


def matched_schedule(config: TrainConfig, steps: int) -> TrainConfig:
    """`config` trained for `steps`: warmup and decay fitted to that length, one evaluation at
    the end."""
    warmup = max(1, round(WARMUP_FRACTION * steps))
    return config.replace(max_steps=steps, warmup_steps=warmup, eval_interval=steps).validate()


def tokens_per_step(config: TrainConfig) -> int:
    """Training tokens one optimizer step consumes."""
    return config.batch_size * config.grad_accum * config.block_size


def ladder_plan(
    bases: Sequence[tuple[TrainConfig, Sequence[float]]],
    *,
    widths: Sequence[int],
    budgets: Sequence[float],
    flops_per_token: Callable[[TrainConfig], float],
) -> list[TrainConfig]:
    """Every run of the ladder, smallest budget first: for each budget, each (base config, its
    learning rates) x width x learning rate, trained for the steps that spend the budget
    (training FLOPs = flops_per_token x tokens).

    Several learning rates are an inner search per size; one is a rule (e.g. muP's transfer).
    Each run's `min_lr` keeps its base's ratio to `lr`. PicoError when a width would get fewer
    than MIN_STEPS steps at some budget: the budgets are too small for it.
    """
    if not bases or not widths or not budgets or not all(lrs for _, lrs in bases):
        raise PicoError("a ladder needs at least one width, one budget and one learning rate")
    if any(not b > 0 for b in budgets) or any(not lr > 0 for _, lrs in bases for lr in lrs):
        raise PicoError("ladder budgets and learning rates must be positive")
    rungs = []  # (config at its width, learning rates, FLOPs per optimizer step)
    for base, lrs in bases:
        for width in sorted(set(widths)):
            config = at_width(base, width)
            per_step = flops_per_token(config) * tokens_per_step(config)
            rungs.append((config, sorted(set(lrs)), per_step, base.min_lr / base.lr))
    smallest = min(budgets)
    config, _, per_step, _ = max(rungs, key=lambda rung: rung[2])  # the fewest steps
    if round(smallest / per_step) < MIN_STEPS:
        raise PicoError(
            f"budget {smallest:.3g} FLOPs gives {config.arch} at width {config.d_model} only "
            f"{round(smallest / per_step)} steps ({per_step:.3g} FLOPs each; at least "
            f"{MIN_STEPS}): raise the smallest budget to {MIN_STEPS * per_step:.2g} or drop "
            "the widest widths"
        )
    plan = []
    for budget in sorted(set(budgets)):
        for config, lrs, per_step, floor in rungs:
            steps = round(budget / per_step)
            for lr in lrs:
                plan.append(matched_schedule(config.replace(lr=lr, min_lr=lr * floor), steps))
    return plan


# ------------------------------------------------------------------------------ recommendation


@dataclass(frozen=True)
class WidthRule:
    """n_params = a w^2 + b w + c over the ladder's widths w (exact at fixed depth: every
    matrix is width x width, width x vocab or width x constant)."""

    coefficients: np.ndarray

    def n_params(self, width: float) -> float:
        return float(np.polyval(self.coefficients, width))

    def width_for(self, n_params: float, multiple: int) -> int:
        """The width, a multiple of `multiple`, whose n_params is nearest `n_params` on a log
        scale."""
        a, b, c = self.coefficients
        roots = np.roots([a, b, c - n_params]) if a else np.array([(n_params - c) / b])
        real = [r.real for r in np.atleast_1d(roots) if abs(r.imag) < 1e-9 and r.real > 0]
        if not real:
            raise PicoError(f"no positive width has {n_params:.3g} parameters under this rule")
        below = int(max(real) // multiple)
        candidates = {multiple * max(1, k) for k in (below, below + 1)}
        return min(candidates, key=lambda w: abs(np.log(self.n_params(w) / n_params)))


def width_rule(runs: pd.DataFrame) -> WidthRule:
    """The quadratic n_params(width) through a ladder's runs (`hp_d_model`, `n_params`)."""
    sizes = runs[["hp_d_model", "n_params"]].drop_duplicates("hp_d_model")
    if len(sizes) < 3:
        raise PicoError(
            f"the width rule needs runs at >= 3 widths (hp_d_model), got {len(sizes)}: run a "
            "ladder with more widths"
        )
    width = sizes["hp_d_model"].to_numpy(float)
    return WidthRule(np.polyfit(width, sizes["n_params"].to_numpy(float), 2))


def tuned_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The best-learning-rate run of each size at each budget (`budget` from the runs' train
    FLOPs, scaling_law.budget_labels), with `n_lrs` the learning rates it was chosen from: the
    runs a loss law should see, as the laws hold for tuned models."""
    return best_lr_runs(runs.assign(budget=budget_labels(runs["train_flops"])))


def recommend(
    frame: pd.DataFrame, arch: str, target_flops: float, *, level: float = LEVEL, seed: int = 0
) -> dict[str, Any]:
    """What to train with `target_flops` training FLOPs, from the converged runs of `arch` in a
    results DataFrame: the compute-optimal size and tokens (fitted loss law), a config at that
    size, and its predicted val loss with an interval at `level` where one run's loss falls.

    The config is the ladder's run nearest that size, set to the width whose parameter count is
    nearest N* (`width_rule`), trained for the steps that give D* tokens, with the learning rate
    of the fitted law lr*(N) when the ladder tuned it at >= 3 sizes, else the ladder's own (one
    learning rate: muP's transfer, or a fixed rule the user chose). PicoError when the runs
    cannot support a fit (the message says what is missing).
    """
    per_arch = scaling_runs(frame)
    if arch not in per_arch:
        found = ", ".join(per_arch) or "none"
        raise PicoError(
            f"no converged run of {arch} in the results (architectures with some: {found}): "
            f"run a ladder of it ({LADDER_HINT})"
        )
    runs = tuned_runs(per_arch[arch])
    n, d = runs["n_params"].to_numpy(float), runs["tokens_seen"].to_numpy(float)
    law = fit_loss_law(n, d, runs["val_loss"].to_numpy(float), level=level, seed=seed)
    cost = fit_flops_per_token(n, runs["flops_per_token"].to_numpy(float))
    best = compute_optimal(law, np.array([target_flops]), cost, level=level)
    n_star, d_star = float(best.n.value[0]), float(best.d.value[0])
    loss = predict(law, n_star, d_star, level=level, new_run=True)

    tuned = runs[runs["n_lrs"] > 1]
    lr_source = "the ladder's learning rate (not tuned per size)"
    nearest = int(np.abs(np.log(n / n_star)).argmin())  # the run nearest N*
    lr = float(runs.loc[nearest, "hp_lr"])
    if tuned["n_params"].nunique() >= MIN_SIZES:
        lr_law = fit_lr_law(tuned["n_params"], tuned["hp_lr"], level=level)
        lr = float(lr_law.predict(n_star).value)
        lr_source = (
            f"lr*(N) = {lr_law.coefficient.value:.3g} N^{lr_law.exponent.value:.3f} fitted on "
            f"{tuned['n_params'].nunique()} tuned sizes"
        )

    nearest_row = frame.loc[frame["trial_id"] == runs.loc[nearest, "trial_id"]].iloc[-1]
    base = TrainConfig.from_results_row(nearest_row)
    multiple = 1
    if arch == "kv_transformer":  # whole heads, and rotary positions pair up each head's dims
        multiple = base.n_head * (2 if base.pos_embedding == "rope" else 1)
    rule = width_rule(runs)
    width = rule.width_for(n_star, multiple)
    config = at_width(base, width)
    config = config.replace(lr=lr, min_lr=lr * base.min_lr / base.lr)
    config = matched_schedule(config, max(1, round(d_star / tokens_per_step(config))))
    flops_max = float(runs["train_flops"].max())
    sizes_run = (float(n.min()), float(n.max()))
    return {
        "arch": arch,
        "target_flops": target_flops,
        "level": level,
        "n_params": _interval(best.n),
        "tokens": _interval(best.d),
        "val_loss": _interval(loss),
        "config": config.to_dict(),
        "config_n_params": rule.n_params(width),
        "lr_source": lr_source,
        "extrapolation": target_flops / flops_max,
        "sizes_run": sizes_run,
        "size_inside": bool(sizes_run[0] <= n_star <= sizes_run[1]),
        "law": {
            name: {"value": e.value, "low": e.low, "high": e.high}
            for name, e in zip(PARAMS, (law.E, law.A, law.alpha, law.B, law.beta), strict=True)
        },
        "runs": len(runs),
        "sizes": law.n_sizes,
        "budgets": int(runs["budget"].nunique()),
    }


def _interval(prediction: Prediction) -> dict[str, float]:
    """A one-point prediction (0-d or of length 1) as JSON: value, low and high."""
    return {
        "value": float(np.ravel(prediction.value)[0]),
        "low": float(np.ravel(prediction.low)[0]),
        "high": float(np.ravel(prediction.high)[0]),
    }
