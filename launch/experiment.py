"""The search runner: connect to Ray, prepare the data once, then run or resume a Tune experiment.

    settings = SearchSettings(space="kv_transformer", name="demo", storage="/abs/experiments")
    results = run_search(settings)          # the results Parquet file

The Tuner combines the pieces of this package: the trainable (`launch/trainable.py`), the Optuna
searcher that understands early stopping (`launch/searcher.py`), ASHA on val_loss, and the
callbacks that keep the results file (`launch/export.py`) and wandb (`launch/tracking.py`) current.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from ray.tune import Stopper

from launch.export import ResultsExporter, utc_now
from launch.results import ResultsTable, read_trials
from launch.settings import ASHA_METRIC, SearchSettings, check_inputs
from launch.summary import unfinished
from launch.trainable import TrialSettings, param_space, train_trial, trial_config
from launch.tune_state import repair_saved_state
from pico.errors import PicoError

REPO = Path(__file__).resolve().parents[1]
# The live table's columns: what distinguishes trials, and how they are doing.
TABLE_PARAMETERS = ["arch", "d_model", "n_layer", "lr", "batch_size", "block_size"]
TABLE_METRICS = {"step": "step", "val_loss": "val_loss", "n_params": "params"}
PACKAGES = ("torch", "ray", "optuna", "pyarrow", "pandas", "numpy", "wandb")


def run_search(
    settings: SearchSettings,
    *,
    resume: bool = False,
    verbosity: int = 1,
    address: str | None = None,
    command: str = "",
    dashboard: bool = True,
) -> Path:
    """Run (or resume) the search described by `settings`; return the results file's path."""
    check_inputs(settings, resume=resume, address=address)
    if resume and not settings.is_remote:
        for note in repair_saved_state(settings.local_folder):
            print(f"note: {note}", file=sys.stderr)
    with connected_ray(address, verbosity, dashboard):
        data = prepare(settings, verbosity)
        if not resume:
            settings.save()
        tuner = make_tuner(settings, data, resume=resume, verbosity=verbosity, command=command)
        tuner.fit()
    if search_ended(settings):
        close_study(settings)  # no trial will report again
    return settings.results_path


def search_ended(settings: SearchSettings) -> bool:
    """True unless an interrupt left trials to resume: every requested trial has ended, or a
    budget stopped the search with none left running."""
    budget = settings.time_budget_s is not None or settings.compute_budget is not None
    if budget:
        records = read_trials(settings.results_path) if settings.results_path.exists() else []
        return not any(r.status == "running" for r in records)
    return unfinished(settings) == 0


def close_study(settings: SearchSettings) -> None:
    """Tell Optuna the outcome of every trial it still holds as running, from the results file.

    Tune stops the trials a budget cuts short without telling the searcher, and after a crash
    the searcher may lag behind the trials Tune ran; the results file knows how each ended.
    A trial cut short by a crash that Tune lost track of (`lost`) is PRUNED at its last step,
    like one interrupted; one that never reported (handed out, then lost) is FAIL.
    """
    import optuna
    from optuna.trial import TrialState

    trials = {r.trial_id: r for r in read_trials(settings.results_path)}
    study = optuna.load_study(study_name=settings.name, storage=settings.optuna_url)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = trials.get(trial.user_attrs.get("tune_trial_id"))
        state, values = TrialState.FAIL, None
        if record is not None and record.evals and record.status != "errored":
            last = record.evals[record.last_step]
            if record.status == "completed":
                state, values = TrialState.COMPLETE, [last[m] for m, _ in settings.metrics]
            elif record.status in ("early_stopped", "stopped", "lost"):
                state = TrialState.PRUNED
        study.tell(trial.number, values, state=state)


@contextmanager
def connected_ray(address: str | None, verbosity: int, dashboard: bool) -> Iterator[None]:
    """Connect to the cluster at `address`, or start Ray on this machine; shut it down after.

    An already running Ray in this process (the test suite's) is used as is and left running.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    local = {} if address else {"include_dashboard": dashboard}
    try:
        ray.init(
            address=address,
            logging_level=logging.INFO if verbosity >= 2 else logging.WARNING,
            log_to_driver=verbosity >= 2,
            **local,
        )
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise PicoError(f"cannot start or join Ray at {address or 'this machine'}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


def prepare(settings: SearchSettings, verbosity: int = 1) -> Any:
    """Prepare (or load from the cache) the corpus once, in the driver, before any trial."""
    from pico.data import prepare_data

    data = prepare_data(
        settings.corpus,
        settings.tokenizer,
        cache_dir=settings.cache_dir,
        max_docs=settings.max_docs,
    )
    if verbosity >= 1:
        print(
            f"data: {settings.corpus} / {settings.tokenizer}, {len(data.train):,} train and "
            f"{len(data.val):,} val tokens, vocab {data.vocab_size} ({data.path})"
        )
    return data


def make_tuner(
    settings: SearchSettings, data: Any, *, resume: bool, verbosity: int, command: str
) -> Any:
    """A Tuner for a new experiment, or the interrupted one restored from its storage."""
    from ray import tune

    # A checkpoint at every evaluation forces a state snapshot each time (num_to_keep=1): by
    # design here, and cheap for small models, so Tune need not warn about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's classic live table, with the columns below, rather than a config box per trial.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    trial_settings = TrialSettings(
        str(Path(data.path).resolve()), settings.max_docs, settings.fail_at_step
    )
    space = param_space(settings.fixed_fields(), trial_settings)
    trainable = tune.with_resources(
        named_trainable(settings.name),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
    )
    if resume:
        # The searcher (with its Optuna study), scheduler and callbacks come back from the
        # experiment's state; unfinished trials continue from their last checkpoints.
        return tune.Tuner.restore(
            settings.experiment_path, trainable, resume_unfinished=True, param_space=space
        )
    namer = TrialNamer()
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(settings),
            scheduler=make_scheduler(settings),
            num_samples=settings.num_samples,
            max_concurrent_trials=settings.max_concurrent,
            time_budget_s=settings.time_budget_s,
            reuse_actors=True,
            trial_name_creator=namer,
            trial_dirname_creator=namer,
        ),
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=settings.storage,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=make_callbacks(settings, data, command),
            stop=ComputeBudget(settings.compute_budget) if settings.compute_budget else None,
            progress_reporter=tune.CLIReporter(
                parameter_columns=TABLE_PARAMETERS,
                metric_columns=TABLE_METRICS,
                max_report_frequency=15,
            ),
            verbose=verbosity,
        ),
    )


class ComputeBudget(Stopper):
    """A Tune stopper that ends the search once the trials' training FLOPs add up to `flops`
    (counted from the start of this run of the driver: a resumed search starts a new count)."""

    def __init__(self, flops: float):
        self.flops = flops
        self.spent: dict[str, float] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.spent[trial_id] = float(result.get("train_flops", 0.0))
        return False

    def stop_all(self) -> bool:
        """True once the budget is spent."""
        return sum(self.spent.values()) >= self.flops


def named_trainable(experiment: str):
    """The trainable under a name that shows the experiment (in Ray's dashboard and logs)."""

    def trial(config: dict[str, Any]) -> None:
        train_trial(config)

    trial.__name__ = trial.__qualname__ = f"pico_{experiment}"
    return trial


class TrialNamer:
    """Trial names and folder names a person recognises: `<arch>_<trial id>`."""

    def __call__(self, trial: Any) -> str:
        return f"{trial_config(trial.config).arch}_{trial.trial_id}"


def make_searcher(settings: SearchSettings) -> Any:
    """The Optuna searcher over the space, writing its study to the Optuna storage."""
    import optuna

    from launch.searcher import PicoOptunaSearch, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from search_spaces import get_space, warm_start_points

    metrics = settings.metrics
    single = len(metrics) == 1
    points = warm_start_points(settings.space)
    if settings.space != "seed22" and not settings.warm_start:
        points = []
    try:
        storage = optuna.storages.RDBStorage(settings.optuna_url)
    except Exception as exc:  # SQLAlchemy raises many kinds for a bad URL or database
        raise PicoError(f"cannot open the Optuna storage {settings.optuna_url}: {exc}") from None
    return PicoOptunaSearch(
        get_space(settings.space),
        metric=metrics[0][0] if single else [m for m, _ in metrics],
        mode=metrics[0][1] if single else [mode for _, mode in metrics],
        max_steps=settings.max_steps,
        points_to_evaluate=points or None,
        sampler=make_sampler(settings.sampler, settings.seed, len(metrics)),
        study_name=settings.name,
        storage=storage,
    )


def make_scheduler(settings: SearchSettings) -> Any:
    """ASHA on val_loss, by optimizer step; or FIFO (every trial runs to max_steps)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="step",
        metric=ASHA_METRIC,
        mode="min",
        max_t=settings.max_steps,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )


def make_callbacks(settings: SearchSettings, data: Any, command: str) -> list[Any]:
    """The results exporter, and the wandb tracker when asked for."""
    table = ResultsTable(
        settings.results_path, settings.name, experiment_metadata(settings, data, command)
    )
    budgets = (settings.time_budget_s, settings.compute_budget)
    exporter = ResultsExporter(
        table, settings.max_steps, settings.asha_milestones(), budgets=budgets
    )
    callbacks: list[Any] = [exporter]
    if settings.wandb != "off":
        from launch.tracking import WandbTracker

        folder = str(settings.local_folder)
        callbacks.append(WandbTracker(settings.wandb, settings.name, folder=folder))
    return callbacks


def experiment_metadata(settings: SearchSettings, data: Any, command: str) -> dict[str, Any]:
    """The `pico` metadata of the results file (docs/results.md)."""
    scheduler = {"name": settings.scheduler, "time_attr": "step", "max_t": settings.max_steps}
    if settings.scheduler == "asha":
        scheduler.update(
            metric=ASHA_METRIC,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
            milestones=settings.asha_milestones(),
        )
    directions = {"min": "minimize", "max": "maximize"}
    return {
        "space": settings.space,
        "sampler": settings.sampler,
        "scheduler": scheduler,
        "objectives": [{"name": m, "direction": directions[mode]} for m, mode in settings.metrics],
        "corpus": settings.corpus,
        "tokenizer": settings.tokenizer,
        "corpus_fingerprint": data.manifest.get("corpus_fingerprint"),
        "data_fingerprint": data.fingerprint,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": command,
        "num_samples": settings.num_samples,
        "optuna_storage": settings.optuna_url,
        "started_at": utc_now(),
        "ended_at": None,
    }


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the results."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The repository's HEAD commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
