"""What defines a search, checked before any work starts, and where its files go.

An experiment lives in `<storage>/<name>/` (launch/storage.py): its manifest, the trial folders,
`results.parquet` (unless `output` names another file) and, unless `optuna_storage` names a
database, the Optuna study `study.journal`, which holds these settings (launch/study.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.storage import MANIFEST, RESULTS, ExperimentStore, is_uri
from launch.study import default_location
from pico.config import TrainConfig
from pico.errors import PicoError
from pico.files import check_output, unwritable_reason

CONNECT_TIMEOUT_S = 5.0
# Objective name -> (reported metric, Tune mode).
OBJECTIVES = {
    "val_loss": ("val_loss", "min"),
    "val_bpb": ("val_bpb", "min"),
    "perplexity": ("perplexity", "min"),
    "token_accuracy": ("token_accuracy", "max"),
    "n_params": ("n_params", "min"),
    "flops": ("flops_per_token", "min"),
    "decode_latency_ms": ("decode_latency_ms", "min"),
}
SCHEDULERS = ("asha", "fifo")
SAMPLERS = ("tpe", "random", "cmaes", "nsga2", "gp")
WANDB_MODES = ("off", "offline", "online")
ASHA_METRIC = "val_loss"


@dataclass
class SearchSettings:
    """Everything that defines a search; saved with the experiment so `--resume` needs only
    its name."""

    space: str = "all"
    name: str = "search"
    storage: str = "experiments"  # a folder (made absolute) or a URI (s3://, gs://, ...)
    output: str | None = None  # results file; default <storage>/<name>/results.parquet
    num_samples: int = 16
    # 200 steps keep the default run (16 trials, then 9 confirmation trials) within 10 minutes
    # on 2 cores: at 400 it took 13 min 40 s on an idle 2-core machine (docs/search.md).
    max_steps: int = 200
    eval_interval: int = 50
    eval_tokens: int = 4096
    scheduler: str = "asha"
    grace_period: int = 50
    reduction_factor: float = 2.0
    sampler: str = "tpe"
    objectives: list[str] = field(default_factory=lambda: ["val_loss"])
    warm_start: bool = False
    seed: int = 0
    corpus: str = TrainConfig.corpus
    tokenizer: str = TrainConfig.tokenizer
    max_docs: int | None = None
    cache_dir: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 2
    max_failures: int = 2
    time_budget_s: float | None = None
    compute_budget: float | None = None  # training FLOPs over all trials; then the search stops
    # The confirmation stage (launch/confirm.py): rerun the best `confirm_top` search trials of
    # each architecture with `confirm_seeds` fresh seeds once the search phase has ended. On by
    # default: a search should end with an answer that one lucky seed cannot make.
    confirm_top: int = 1
    confirm_seeds: int = 3
    # An IsoFLOP ladder instead of a sampled search (launch/ladder.py): every width trained to
    # each of these training-FLOP budgets, at each learning rate (None: per architecture).
    ladder: list[float] | None = None
    ladder_widths: list[int] = field(default_factory=lambda: [32, 48, 64, 96, 128])
    ladder_lrs: list[float] | None = None
    optuna_storage: str | None = None  # a database URL or a journal file [the experiment's]
    wandb: str = "off"
    fail_at_step: int | None = None  # tests only: every trial fails once after this step

    # ------------------------------------------------------------------ derived paths

    @property
    def is_remote(self) -> bool:
        """True when the experiment is stored under a URI rather than a local folder."""
        return is_uri(self.storage)

    @property
    def experiment_path(self) -> str:
        """The experiment's folder: a local path or a URI."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    def store(self) -> ExperimentStore:
        """Reads and writes the experiment's folder."""
        return ExperimentStore(self.experiment_path)

    @property
    def results_path(self) -> str:
        """The results Parquet file: a local path or a URI."""
        return self.output or f"{self.experiment_path}/{RESULTS}"

    @property
    def study_location(self) -> str | None:
        """Where the Optuna study is: the given database URL, or the journal file in a local
        experiment folder (None for remote storage without one: `check_storage` refuses that).
        """
        if self.optuna_storage:
            return self.optuna_storage
        if self.is_remote:
            return None
        return default_location(self.experiment_path)

    @property
    def metrics(self) -> list[tuple[str, str]]:
        """(metric, mode) of each objective, in order."""
        return [OBJECTIVES[name] for name in self.objectives]

    def asha_milestones(self) -> list[float]:
        """The steps at which ASHA compares trials (none without ASHA)."""
        from launch.scheduler import asha_milestones

        if self.scheduler != "asha":
            return []
        return asha_milestones(self.grace_period, self.max_steps, self.reduction_factor)

    def fixed_fields(self) -> dict[str, Any]:
        """TrainConfig fields that every trial shares (the space samples the others)."""
        return {
            "corpus": self.corpus,
            "tokenizer": self.tokenizer,
            "max_docs": self.max_docs,
            "max_steps": self.max_steps,
            "eval_interval": self.eval_interval,
            "eval_tokens": self.eval_tokens,
            "seed": self.seed,
            "device": "cuda" if self.gpus_per_trial > 0 else "cpu",
            "num_threads": max(1, int(self.cpus_per_trial)),
        }

    def to_dict(self) -> dict[str, Any]:
        """The settings as stored in the study: a database URL without its password."""
        from launch.study import without_password

        values = dataclasses.asdict(self)
        if self.optuna_storage:
            values["optuna_storage"] = without_password(self.optuna_storage)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchSettings:
        """Settings read back from a study (fields a later version dropped are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def validate(settings: SearchSettings) -> None:
    """Raise PicoError (one line) for any setting that cannot work."""
    from search_spaces import get_space

    get_space(settings.space)
    _choice("sampler", settings.sampler, SAMPLERS)
    _choice("scheduler", settings.scheduler, SCHEDULERS)
    _choice("wandb mode", settings.wandb, WANDB_MODES)
    for name in settings.objectives:
        _choice("objective", name, tuple(OBJECTIVES))
    if len(set(settings.objectives)) != len(settings.objectives) or not settings.objectives:
        raise PicoError("--objectives must name each objective once, e.g. val_loss,n_params")
    for name in ("num_samples", "max_steps", "eval_interval", "eval_tokens", "grace_period"):
        _positive(name, getattr(settings, name))
    for name in ("max_concurrent", "cpus_per_trial"):
        _positive(name, getattr(settings, name))
    if settings.time_budget_s is not None:
        _positive("time_budget", settings.time_budget_s)
    if settings.compute_budget is not None:
        _positive("compute_budget", settings.compute_budget)
    if settings.confirm_top < 0 or settings.confirm_seeds < 0:
        raise PicoError("--confirm-top and --confirm-seeds must be >= 0")
    if (settings.confirm_top > 0) != (settings.confirm_seeds > 0):
        raise PicoError(
            "--confirm-top and --confirm-seeds go together: e.g. --confirm-top 1 "
            "--confirm-seeds 3 (or both 0: no confirmation)"
        )
    if settings.confirm_seeds == 1:
        raise PicoError("--confirm-seeds must be at least 2: one seed gives no spread")
    if settings.gpus_per_trial < 0 or settings.max_failures < 0:
        raise PicoError("--gpus-per-trial and --max-failures must be >= 0")
    if settings.reduction_factor <= 1:
        raise PicoError(f"--reduction-factor must be > 1, got {settings.reduction_factor}")
    if settings.scheduler == "asha" and settings.grace_period > settings.max_steps:
        raise PicoError(
            f"--grace-period ({settings.grace_period}) must not exceed --max-steps "
            f"({settings.max_steps})"
        )
    if settings.sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise PicoError("the cmaes sampler needs the cmaes package: pip install cmaes")
    if len(settings.objectives) > 1 and settings.sampler in ("cmaes", "gp"):
        raise PicoError(f"the {settings.sampler} sampler optimises one objective; use tpe or nsga2")
    if settings.ladder is not None:
        _check_ladder(settings)
    if not settings.name or "/" in settings.name or settings.name.startswith("."):
        raise PicoError(f"--name must be a plain folder name, got {settings.name!r}")
    TrainConfig(**settings.fixed_fields()).validate()


def _check_ladder(settings: SearchSettings) -> None:
    """A ladder's settings: its budgets, widths and learning rates, and nothing that would stop
    its runs before they converge."""
    if settings.space == "seed22":
        raise PicoError("--ladder trains sizes of one config per architecture: use another --space")
    lists = {"ladder": settings.ladder, "ladder-widths": settings.ladder_widths}
    lists["ladder-lrs"] = settings.ladder_lrs or [1]
    for flag, values in lists.items():
        if not values or not all(isinstance(v, int | float) and v > 0 for v in values):
            raise PicoError(f"--{flag} must be a comma-separated list of positive numbers")
    if len(set(settings.ladder_widths)) < 3:
        raise PicoError("--ladder-widths needs >= 3 distinct widths for a fit, e.g. 32,64,128")
    if settings.scheduler != "fifo" or settings.compute_budget is not None:
        raise PicoError(
            "a ladder's runs must all converge: drop --scheduler asha and --compute-budget"
        )
    if settings.warm_start:
        raise PicoError("--warm-start enqueues sampled configs; a ladder runs only its own")
    from launch.ladder import ladder_bases
    from pico.ladder import at_width

    for base, _ in ladder_bases(settings):  # every width a valid config, before any work
        for width in settings.ladder_widths:
            try:
                at_width(base, width)
            except PicoError as exc:
                raise PicoError(f"--ladder-widths {width} ({base.arch}): {exc}") from None


def _choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PicoError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise PicoError(f"--{name.replace('_', '-')} must be positive, got {value}")


def check_writable(folder: Path, what: str) -> None:
    """PicoError unless files can be created in `folder`, made later if missing. Creates
    nothing: a search refused by a later check leaves no folder behind."""
    reason = unwritable_reason(folder)
    if reason:
        raise PicoError(f"cannot write the {what} in {folder}: {reason}")


def check_storage(settings: SearchSettings, resume: bool) -> None:
    """Fail before any work if the experiment cannot be written, would overwrite another, or
    would keep its study on a disk that can vanish."""
    if settings.study_location is None:
        raise PicoError(
            f"with --storage {settings.storage} the study needs a database every machine can "
            "reach: pass --optuna-storage postgresql://USER@HOST/DB (the password in PGPASSWORD "
            "or ~/.pgpass)"
        )
    try:
        store = settings.store()
        exists = store.exists(MANIFEST)
    except (OSError, ValueError) as exc:  # pyarrow: unknown scheme, no credentials, ...
        raise PicoError(f"cannot use storage {settings.storage}: {exc}") from None
    if resume and not exists:
        raise PicoError(
            f"nothing to resume: no experiment {settings.name!r} in {settings.storage} "
            f"(expected {store.uri(MANIFEST)})"
        )
    if not resume and exists:
        raise PicoError(
            f"experiment {settings.name!r} already exists in {settings.storage}: pass --resume "
            "to continue it, or choose another --name"
        )
    if not resume and settings.output and Path(settings.output).exists():
        raise PicoError(f"{settings.output} already exists: choose another --output")
    if not settings.is_remote:
        check_writable(Path(settings.storage), "experiment")
        check_output(Path(settings.experiment_path), "--storage/--name", folder=True)
    if settings.output or not settings.is_remote:
        check_writable(Path(settings.results_path).parent, "results file")
        check_output(Path(settings.results_path), "--output")


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast (PicoError) when nothing listens at a `host:port` or `ray://host:port` address,
    rather than letting Ray retry for a minute."""
    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise PicoError(f"--address must be host:port, ray://host:port or auto, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise PicoError(f"cannot reach a Ray cluster at {address}: {exc}") from None


def check_resources(settings: SearchSettings, address: str | None) -> None:
    """On this machine, a trial asking for more than it has would wait forever: refuse it."""
    if address:
        return
    cpus = os.cpu_count() or 1
    if settings.cpus_per_trial > cpus:
        raise PicoError(
            f"--cpus-per-trial {settings.cpus_per_trial:g} exceeds this machine's {cpus}"
        )
    if settings.gpus_per_trial > 0:
        import torch

        if not torch.cuda.is_available():
            raise PicoError("--gpus-per-trial needs a GPU, and this machine has none")


def check_inputs(settings: SearchSettings, *, resume: bool, address: str | None) -> None:
    """Every check that can fail before any work starts (one PicoError line each)."""
    validate(settings)
    check_resources(settings, address)
    if address:
        check_reachable(address)
    check_storage(settings, resume)
