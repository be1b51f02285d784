"""Synthetic results files in the docs/results.md schema, for tests and the scale benchmark.

The losses follow a made-up but plausible law: wider, deeper models and a learning rate near 3e-3
do better, the Transformer beats the LSTM beats the K-gram MLP, and every learning curve decays
as a power of the tokens seen. An ASHA-like pass stops the worse trials at each rung. On request,
a confirmation stage reruns the best completed configs of each architecture on fresh seeds shared
by all of them, with a known seed-to-seed noise, for the statistics of pico/stats.py.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pico.config import (
    ACTIVATIONS,
    ARCH_FIELDS,
    ARCHS,
    FIELD_TYPES,
    KGRAM_NORMS,
    MODEL_FIELDS,
    POSITIONS,
    TRANSFORMER_NORMS,
    TrainConfig,
)

VOCAB = 4096
EVAL_INTERVAL = 20
BASE_LOSS = {"kgram_mlp": 5.0, "lstm": 4.7, "kv_transformer": 4.4}
BYTES_PER_TOKEN = 3.6  # a plausible BPE average, for val_bpb
CORPUS_OFFSET = 0.4  # nats added per extra corpus, so that mixed files really differ in val_loss
RUN_SD = 0.03  # sd of a trial's final loss around the law: the seed-to-seed noise
# A confirmation seed's own effect (initialisation and data order), shared by every config run on
# it; the rest of RUN_SD is each run's own. Pairing on seeds removes the shared part.
SEED_EFFECT_SD = 0.02
CONFIRM_SEED_BASE = 1000  # confirmation seeds are CONFIRM_SEED_BASE, +1, ... for every config


def make_results(
    path: str | Path,
    n_trials: int = 60,
    n_evals: int = 10,
    archs: tuple[str, ...] = ARCHS,
    corpora: tuple[str, ...] = ("shakespeare",),
    asha: bool = True,
    failures: bool = True,
    seed: int = 0,
    confirm_top: int = 0,
    confirm_seeds: int = 5,
) -> Path:
    """Write a synthetic results file and return its path.

    `asha` stops the worse two thirds of trials at each rung (else every trial runs all
    `n_evals` evaluations); `failures` makes about 2% of trials errored and 2% diverged.
    `confirm_top` > 0 adds confirmation trials (`phase` and `confirms` columns): the best
    `confirm_top` completed trials of each architecture, each rerun to the end on the same
    `confirm_seeds` seeds. Without it the file has no `phase` column, like a file written
    before confirmation existed.
    """
    rng = np.random.default_rng(seed)
    hp = _sample_hparams(rng, n_trials, archs, corpora)
    law = _law(hp)
    final = law + rng.normal(0, RUN_SD, len(hp))
    n_rows, status, rung = _plan_trials(rng, final, n_evals, asha, failures)
    df = _evaluations(rng, hp, final, n_rows, status, rung)
    if confirm_top:
        # Its own random stream, so that the search rows are the same with or without it.
        confirm_rng = np.random.default_rng([seed, 1])
        confirm = _confirmations(
            confirm_rng, hp, law, final, status, n_evals, confirm_top, confirm_seeds
        )
        df = pd.concat([df.assign(phase="search", confirms=None), confirm], ignore_index=True)
        df = df.astype({"phase": "string", "confirms": "string"})
    return _write(df, _metadata(n_evals, corpora), path)


def _write(df: pd.DataFrame, meta: dict, path: str | Path) -> Path:
    """Write the rows as Parquet with the `pico` metadata; return the path."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({"pico": json.dumps(meta)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _sample_hparams(
    rng: np.random.Generator, n: int, archs: tuple[str, ...], corpora: tuple[str, ...]
) -> pd.DataFrame:
    """One row per trial: every TrainConfig field, nulls where the architecture does not use it."""
    arch = np.array(archs)[np.arange(n) % len(archs)]
    rng.shuffle(arch)
    defaults = TrainConfig()
    hp = pd.DataFrame({f.name: [getattr(defaults, f.name)] * n for f in fields(TrainConfig)})
    hp["arch"] = arch
    hp["corpus"] = rng.choice(corpora, n)
    hp["d_model"] = rng.choice([32, 64, 128, 256], n)
    hp["n_layer"] = rng.integers(1, 5, n)
    hp["n_head"] = rng.choice([2, 4, 8], n)
    hp["hidden_size"] = rng.choice([64, 128, 256, 512], n)
    hp["k"] = rng.integers(2, 9, n)
    hp["activation"] = rng.choice(ACTIVATIONS, n)
    hp["norm"] = np.where(
        arch == "kgram_mlp", rng.choice(KGRAM_NORMS, n), rng.choice(TRANSFORMER_NORMS, n)
    )
    hp["pos_embedding"] = rng.choice(POSITIONS, n)
    hp["mlp_ratio"] = rng.choice([2, 4], n)
    hp["tie_weights"] = rng.random(n) < 0.5
    hp["dropout"] = rng.choice([0.0, 0.1, 0.2], n)
    hp["lr"] = 10 ** rng.uniform(-4, -2, n)
    hp["min_lr"] = hp["lr"] / 10
    hp["batch_size"] = rng.choice([16, 32, 64], n)
    hp["weight_decay"] = rng.choice([0.0, 0.01, 0.1], n)
    hp["seed"] = np.arange(n)
    hp["eval_interval"] = EVAL_INTERVAL
    hp = hp.astype({name: "object" for name in MODEL_FIELDS})
    for name in MODEL_FIELDS:  # conditional parameters: null where the arch has no use for them
        hp.loc[~hp["arch"].map(lambda a, name=name: name in ARCH_FIELDS[a]), name] = None
    return hp


def _law(hp: pd.DataFrame) -> np.ndarray:
    """The mean loss each config reaches at the end: the made-up law the tests can check."""
    num = {c: hp[c].astype(float).fillna(0).to_numpy() for c in ("d_model", "n_layer", "lr", "k")}
    loss = hp["arch"].map(BASE_LOSS).to_numpy(float, copy=True)
    loss -= 0.25 * np.log2(num["d_model"] / 32)
    loss -= 0.08 * (num["n_layer"] - 1)
    loss += 0.8 * (np.log10(num["lr"]) + 2.5) ** 2
    loss += np.where(hp["activation"] == "relu", 0.06, 0.0)
    loss -= np.where(hp["arch"] == "kgram_mlp", 0.04 * num["k"], 0.0)
    return loss + CORPUS_OFFSET * pd.factorize(hp["corpus"], sort=True)[0]


def _confirmations(
    rng: np.random.Generator,
    hp: pd.DataFrame,
    law: np.ndarray,
    final: np.ndarray,
    status: np.ndarray,
    n_evals: int,
    top: int,
    n_seeds: int,
) -> pd.DataFrame:
    """The confirmation trials: the `top` best completed configs per arch, on shared seeds.

    Each run's final loss is the config's law plus its seed's effect plus its own noise, so the
    seed-to-seed sd of one config is RUN_SD, as in the search.
    """
    done = pd.DataFrame({"arch": hp["arch"], "final": final})[status == "completed"]
    picks = done.sort_values("final").groupby("arch", sort=False).head(top).index.to_numpy()
    index = np.repeat(picks, n_seeds)
    seed_effect = rng.normal(0, SEED_EFFECT_SD, n_seeds)
    own_sd = np.sqrt(RUN_SD**2 - SEED_EFFECT_SD**2)
    runs = law[index] + np.tile(seed_effect, len(picks)) + rng.normal(0, own_sd, len(index))
    config = hp.iloc[index].reset_index(drop=True)
    config["seed"] = np.tile(CONFIRM_SEED_BASE + np.arange(n_seeds), len(picks))
    n = len(index)
    rows = _evaluations(
        rng,
        config,
        runs,
        np.full(n, n_evals),
        np.full(n, "completed", dtype=object),
        np.zeros(n, dtype=int),
        first_id=len(hp),
    )
    rows["phase"] = "confirm"
    rows["confirms"] = np.repeat([f"trial_{i:05d}" for i in index], n_evals)
    return rows


def _plan_trials(
    rng: np.random.Generator, final: np.ndarray, n_evals: int, asha: bool, failures: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How many evaluations each trial records, its status and the ASHA rung it reached."""
    n = len(final)
    n_rows = np.full(n, n_evals)
    status = np.full(n, "completed", dtype=object)
    milestones = sorted({m for m in (n_evals // 9, n_evals // 3) if 0 < m < n_evals - 1})
    rung = np.full(n, len(milestones) if asha else 0)
    if asha:
        alive = np.ones(n, bool)
        for r, m in enumerate(milestones, start=1):
            # The final loss ranks trials the same way the loss at the rung would.
            threshold = np.quantile(final[alive], 1 / 3)
            stop = alive & (final > threshold)
            n_rows[stop], status[stop], rung[stop] = m + 1, "early_stopped", r
            alive &= ~stop
    if failures:
        fate = rng.random(n)
        errored, diverged = fate < 0.02, (fate >= 0.02) & (fate < 0.04)
        n_rows[errored], status[errored], rung[errored] = 1, "errored", 0
        n_rows[diverged] = np.minimum(n_rows, rng.integers(1, n_evals + 1, n))[diverged]
        status[diverged] = "diverged"
        # A diverged trial reached only the rungs before its last evaluation.
        rung[diverged] = np.searchsorted(milestones, n_rows[diverged] - 1) if asha else 0
    return n_rows, status, rung


def _evaluations(
    rng: np.random.Generator,
    hp: pd.DataFrame,
    final: np.ndarray,
    n_rows: np.ndarray,
    status: np.ndarray,
    rung: np.ndarray,
    first_id: int = 0,
) -> pd.DataFrame:
    """The long table: one row per evaluation, trial-level columns repeated.

    Trials are numbered from `first_id` (confirmation trials follow the search's).
    """
    trial = np.repeat(np.arange(len(hp)), n_rows)
    number = trial + first_id
    index = np.arange(len(trial)) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    is_last = index == n_rows[trial] - 1
    cfg = hp.iloc[trial].reset_index(drop=True)
    n_params = _n_params(cfg)
    step = (index + 1) * EVAL_INTERVAL
    tokens = step * cfg["batch_size"].to_numpy() * cfg["block_size"].to_numpy()
    floor = final[trial]
    val_loss = floor + (np.log(VOCAB) - floor) * (1 + tokens / 2e5) ** -0.7
    val_loss += rng.normal(0, 0.01, len(trial))
    st = status[trial]
    failed = ((st == "errored") | (st == "diverged")) & is_last
    val_loss[failed] = np.nan
    flops_per_token = 6 * n_params
    tokens_per_s = 4e11 / flops_per_token * rng.uniform(0.8, 1.2, len(hp))[trial]
    df = pd.DataFrame(
        {
            "experiment": "synthetic",
            "trial_id": [f"trial_{i:05d}" for i in number],
            "arch": cfg["arch"].to_numpy(),
            "status": st,
        }
    )
    for name in (f.name for f in fields(TrainConfig)):
        df[f"hp_{name}"] = cfg[name].to_numpy()
    df["rung"] = rung[trial]
    df["node"] = "10.0.0." + (number % 4).astype(str)
    df["device"] = "cpu"
    df["seed"] = cfg["seed"].to_numpy()
    df["config_fingerprint"] = [f"{i:016x}" for i in number]
    df["checkpoint"] = [f"/tmp/ckpt/trial_{i:05d}" for i in number]
    df["error"] = np.where(st == "errored", "RuntimeError: synthetic failure", None)
    df["decode_latency_ms"] = np.nan
    df["step"] = np.where(failed & (st == "errored"), 0, step)
    df["tokens_seen"] = np.where(failed & (st == "errored"), 0, tokens)
    df["train_loss"] = val_loss - 0.05
    df["val_loss"] = val_loss
    df["perplexity"] = np.exp(val_loss)
    df["token_accuracy"] = np.clip(0.95 - 0.13 * val_loss + rng.normal(0, 0.01, len(df)), 0, 1)
    df["val_bpb"] = (val_loss - CORPUS_OFFSET * pd.factorize(cfg["corpus"], sort=True)[0]) / (
        np.log(2) * BYTES_PER_TOKEN
    )
    df["grad_norm"] = rng.lognormal(0, 0.3, len(df))
    df["lr"] = cfg["lr"].to_numpy(float)
    df["tokens_per_s"] = tokens_per_s
    df["elapsed_s"] = tokens / tokens_per_s + 0.5 * (index + 1)
    df["n_params"] = n_params
    df["flops_per_token"] = flops_per_token
    df["train_flops"] = (flops_per_token * tokens).astype(float)
    df["is_last"] = is_last
    return _schema_types(df)


def _n_params(cfg: pd.DataFrame) -> np.ndarray:
    """A rough parameter count per architecture (embedding, body, output)."""
    d = cfg["d_model"].astype(float).to_numpy()
    h = cfg["hidden_size"].fillna(0).astype(float).to_numpy()
    layers = cfg["n_layer"].astype(float).to_numpy()
    k = cfg["k"].fillna(1).astype(float).to_numpy()
    ratio = cfg["mlp_ratio"].fillna(4).astype(float).to_numpy()
    arch = cfg["arch"].to_numpy()
    body = np.select(
        [arch == "kgram_mlp", arch == "lstm"],
        [k * d * h + (layers - 1) * h * h + h * d, layers * 4 * h * (d + h)],
        layers * (4 + 2 * ratio) * d * d,
    )
    return (2 * VOCAB * d + body).astype(np.int64)


def _schema_types(df: pd.DataFrame) -> pd.DataFrame:
    """Give each hp_ column its TrainConfig type, nullable, as the real exporter writes it."""
    kinds = {int: "Int64", float: "float64", bool: "boolean", str: "string"}
    for f in fields(TrainConfig):
        df[f"hp_{f.name}"] = df[f"hp_{f.name}"].astype(kinds[FIELD_TYPES[f.name]])
    return df


def _metadata(n_evals: int, corpora: tuple[str, ...]) -> dict:
    """The `pico` metadata object of docs/results.md."""
    return {
        "schema_version": 2,
        "experiment": "synthetic",
        "space": "synthetic",
        "sampler": "random",
        "scheduler": {"name": "asha", "grace_period": EVAL_INTERVAL, "reduction_factor": 3},
        "objectives": [
            {"name": "val_loss", "direction": "minimize"},
            {"name": "n_params", "direction": "minimize"},
        ],
        "corpus": ",".join(corpora),
        "tokenizer": "bpe:4096",
        "corpus_fingerprint": "synthetic",
        "data_fingerprint": "synthetic",
        "versions": {"pico": "0.1.0"},
        "git_commit": "0000000",
        "command": f"synthetic: {n_evals} evaluations per trial",
        "started_at": "2025-01-01T00:00:00Z",
        "ended_at": "2025-01-01T01:00:00Z",
    }


# ------------------------------------------------------------------------------ a ladder

# Each architecture's known law L(N, D) = E + A/N^alpha + B/D^beta, as (E, A, alpha, B, beta).
# The exponents differ, so that the compute-optimal curves differ in slope; at 1e13 FLOPs the
# optima lie at 2e5 to 4e5 parameters and 4.5 to 4.9 nats, below the 8.3 of a uniform guess over
# VOCAB tokens.
LADDER_LAWS = {
    "kgram_mlp": (2.3, 24.0, 0.22, 306.0, 0.36),
    "lstm": (1.9, 50.0, 0.28, 143.0, 0.30),
    "kv_transformer": (1.6, 105.0, 0.34, 114.0, 0.28),
}
LADDER_BUDGETS = (1e12, 1e13, 1e14, 1e15)
LADDER_SPREAD = 0.6  # decades of size either side of each budget's optimum
LADDER_NOISE = 0.005  # relative sd of a run's final loss around its law
LADDER_LR = 3e-3  # the best learning rate at 1e6 parameters ...
LADDER_LR_EXPONENT = -0.25  # ... and how it moves with size: lr* ∝ N^LADDER_LR_EXPONENT
# A learning rate one octave from the best raises the loss by this fraction (a quarter of it
# for half an octave): far above LADDER_NOISE, so each size's best learning rate is its law's.
LR_PENALTY = 0.03


def ladder_loss(arch: str | np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The known law of `arch` (one, or one per run) at N parameters and D tokens: the loss of
    a run at its best learning rate, without noise."""
    e, a, alpha, b, beta = np.array([LADDER_LAWS[name] for name in np.atleast_1d(arch)]).T
    return e + a / np.asarray(n, float) ** alpha + b / np.asarray(d, float) ** beta


def ladder_optimum(arch: str, flops: np.ndarray) -> np.ndarray:
    """The N that minimises the known law at C = 6 N D: Hoffmann et al.'s closed form
    N* = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta))."""
    _, a, alpha, b, beta = LADDER_LAWS[arch]
    g = (alpha * a / (beta * b)) ** (1 / (alpha + beta))
    return g * (np.asarray(flops, float) / 6) ** (beta / (alpha + beta))


def make_ladder(
    path: str | Path,
    archs: tuple[str, ...] = ARCHS,
    budgets: tuple[float, ...] = LADDER_BUDGETS,
    sizes: int = 5,
    lr_factors: tuple[float, ...] = (1.0,),
    seed: int = 0,
) -> Path:
    """Write a synthetic IsoFLOP ladder in the results schema and return its path.

    For each architecture and budget C: `sizes` model sizes spread LADDER_SPREAD decades either
    side of the law's optimum at C (the layout of Hoffmann et al.'s IsoFLOP profiles), each at
    every learning rate `lr_factors` times the best one for its size, and trained for the
    D = C / (6 N) tokens that spend the budget (rounded to whole steps). Every run is a
    completed search trial, evaluated once at its end, like launch/ladder.py's; its final loss
    is the law's, raised by LR_PENALTY per squared octave off the best learning rate, times
    lognormal noise of sd LADDER_NOISE. Sizes are set as n_params directly; the other
    hyperparameters keep TrainConfig's defaults.
    """
    rng = np.random.default_rng(seed)
    spread = 10 ** np.linspace(-LADDER_SPREAD, LADDER_SPREAD, sizes)
    plan = pd.DataFrame(
        [
            (arch, flops, round(n), factor)
            for arch in archs
            for flops in budgets
            for n in ladder_optimum(arch, flops) * spread
            for factor in lr_factors
        ],
        columns=["arch", "flops", "n_params", "lr_factor"],
    )
    defaults = TrainConfig()
    per_step = defaults.batch_size * defaults.grad_accum * defaults.block_size
    flops_per_token = 6 * plan["n_params"].to_numpy()
    steps = np.maximum(1, np.rint(plan["flops"] / flops_per_token / per_step)).astype(int)
    tokens = steps * per_step
    best_lr = LADDER_LR * (plan["n_params"].to_numpy() / 1e6) ** LADDER_LR_EXPONENT
    octaves = np.log2(plan["lr_factor"].to_numpy())
    loss = ladder_loss(plan["arch"], plan["n_params"], tokens) * (1 + LR_PENALTY * octaves**2)
    loss *= np.exp(rng.normal(0, LADDER_NOISE, len(plan)))

    n = len(plan)
    hp = pd.DataFrame({f.name: [getattr(defaults, f.name)] * n for f in fields(TrainConfig)})
    hp["arch"] = plan["arch"]
    hp["lr"] = best_lr * plan["lr_factor"]
    hp["min_lr"] = hp["lr"] * defaults.min_lr / defaults.lr
    hp["max_steps"] = steps
    hp["warmup_steps"] = np.maximum(1, np.rint(0.05 * steps)).astype(int)
    hp["eval_interval"] = steps
    hp["seed"] = np.arange(n)
    hp = hp.astype({name: "object" for name in MODEL_FIELDS})
    for name in MODEL_FIELDS:  # as in a search: null where the arch has no use for the field
        hp.loc[~hp["arch"].map(lambda a, name=name: name in ARCH_FIELDS[a]), name] = None
    status = np.full(n, "completed", dtype=object)
    df = _evaluations(rng, hp, loss, np.ones(n, int), status, np.zeros(n, int))
    # _evaluations draws sizes from the config and a learning curve towards `loss`: a ladder
    # run's single evaluation is at its own size, tokens and final loss instead.
    tokens_per_s = 4e11 / flops_per_token
    df = df.assign(
        step=steps,
        tokens_seen=tokens,
        train_loss=loss - 0.05,
        val_loss=loss,
        perplexity=np.exp(loss),
        token_accuracy=np.clip(0.95 - 0.13 * loss, 0, 1),
        val_bpb=loss / (np.log(2) * BYTES_PER_TOKEN),
        tokens_per_s=tokens_per_s,
        elapsed_s=tokens / tokens_per_s,
        n_params=plan["n_params"].to_numpy(),
        flops_per_token=flops_per_token,
        train_flops=(flops_per_token * tokens).astype(float),
        phase="search",
        confirms=None,
    )
    df = df.astype({"phase": "string", "confirms": "string"})
    meta = _metadata(1, ("shakespeare",))
    meta.update(sampler="ladder", scheduler={"name": "fifo"}, command="synthetic ladder")
    return _write(df, meta, path)
