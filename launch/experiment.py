"""The search runner: check, prepare the data, open the study, then run its trials on Ray Tune.

    settings = SearchSettings(space="kv_transformer", name="demo", storage="/abs/experiments")
    outcome = run_search(settings)            # a new search; run_search(settings, resume=True)

The study is the record of the search (launch/study.py); a run of this function builds everything
else from it: the searcher (launch/searcher.py) continues the study's unfinished trials and samples
the rest, ASHA (launch/scheduler.py) starts from the study's rung records, the recorder
(launch/recorder.py) writes what happens back to the study, and the results file is derived
(launch/export.py). Tune's own saved state goes to a scratch folder and is never read back.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune import Stopper

from launch import status
from launch.export import ResultsWriter, build_table, utc_now
from launch.live import optuna_dashboard, watch_lines
from launch.results import ResultsTable
from launch.settings import ASHA_METRIC, SearchSettings, check_inputs
from launch.study import CONFIRM, SEARCH, SearchStudy, redact, trial_id_of, without_password
from launch.trainable import SETTINGS_KEY, train_trial
from pico.errors import PicoError

REPO = Path(__file__).resolve().parents[1]
# The live table's columns: what distinguishes trials, and how they are doing.
TABLE_PARAMETERS = ["arch", "d_model", "n_layer", "lr", "batch_size", "block_size"]
TABLE_METRICS = {"step": "step", "val_loss": "val_loss", "n_params": "params"}
PACKAGES = ("torch", "ray", "optuna", "pyarrow", "pandas", "numpy", "wandb")
MANIFEST_FORMAT = 1
# Tune's own options, which it reads from the driver's environment (a user's setting wins).
TUNE_ENVIRONMENT = {
    # Tune's classic live table, with the columns above, rather than a config box per trial.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Tune's own records go to a scratch folder that is never read and is removed at exit
    # (docs/design.md): Pico's record of a trial is its folder and the study. So no JSON, CSV
    # and TensorBoard logs of every result, a file write per result each. (Tune's experiment
    # state is still saved as Tune decides, at most a twentieth of the driver's time: its sync
    # is what brings a failed trial's error message to where Tune reads it.)
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


@dataclass
class SearchOutcome:
    """How a run of the search ended: its results, and whether trials are left to resume."""

    table: ResultsTable
    ended: bool  # every trial ended (or a budget stopped the search) and none is left to confirm
    unfinished: int  # trials not yet run to their end (running or never started)
    search_ended: bool  # the search phase is over: the confirmation stage may run


def run_search(
    settings: SearchSettings,
    *,
    resume: bool = False,
    verbosity: int = 1,
    address: str | None = None,
    command: str = "",
    dashboard: bool = True,
    live: bool = False,
) -> SearchOutcome:
    """Run (or resume) the search described by `settings`, then its confirmation stage if it
    asks for one (launch/confirm.py); with `live`, optuna-dashboard shows the study while it
    runs."""
    check_inputs(settings, resume=resume, address=address)
    data = prepare(settings)
    plan = None
    if settings.ladder:  # a ladder's size is its plan's; bad input fails before any output
        from launch.ladder import ladder_configs

        plan = ladder_configs(settings, data.vocab_size)
        settings.num_samples = len(plan)
    if verbosity >= 1:
        print(data_line(settings, data))
    study = open_study(settings, data, resume=resume, command=command)
    table = build_table(study, settings.store())
    budget = ComputeBudget(settings.compute_budget, spent_flops(table))
    started = time.monotonic()
    writer = ResultsWriter(table, settings.results_path)
    try:
        with ExitStack() as stack:
            ray = RayOnDemand(stack, settings, address, verbosity, dashboard, live)
            continuing = study.unfinished(SEARCH)
            to_create = max(0, settings.num_samples - study.asked(SEARCH))
            if (continuing or to_create) and not budget.stop_all():
                ray.start()
                searcher = make_searcher(settings, study, continuing, plan)
                tuner = make_tuner(settings, study, data, writer, searcher, budget, verbosity)
                tuner.fit()
            with writer.lock:
                outcome = conclude(settings, study, table, budget, time.monotonic() - started)
            if outcome.search_ended and not outcome.ended:  # a confirmation stage to run
                ray.start()
                confirmation = make_confirmation(settings, study, table)
                make_tuner(settings, study, data, writer, confirmation, None, verbosity).fit()
                with writer.lock:
                    outcome = conclude(settings, study, table, budget, time.monotonic() - started)
        return outcome
    finally:
        try:
            study.close()  # the writes still queued reach the storage, even on an interrupt
        finally:
            writer.close()


class RayOnDemand:
    """Ray for this run, started (or joined) the first time a phase has trials to run, with the
    watch lines and `--live`; stopped when `stack` closes."""

    def __init__(
        self,
        stack: ExitStack,
        settings: SearchSettings,
        address: str | None,
        verbosity: int,
        dashboard: bool,
        live: bool,
    ):
        self.stack, self.settings, self.address = stack, settings, address
        self.verbosity, self.dashboard, self.live = verbosity, dashboard, live
        self.started = False

    def start(self) -> None:
        """Start Ray unless this run already has."""
        if self.started:
            return
        self.started = True
        url = self.stack.enter_context(connected_ray(self.address, self.verbosity, self.dashboard))
        if self.verbosity >= 1:
            for line in watch_lines(url, bool(self.address), self.settings.study_location):
                print(line)
        if self.live:
            live_url = self.stack.enter_context(optuna_dashboard(self.settings.study_location))
            print(f"live:  optuna-dashboard at {live_url} (until the search ends)")


def open_study(settings: SearchSettings, data: Any, *, resume: bool, command: str) -> SearchStudy:
    """The experiment's study: created with the settings and metadata (and the manifest that
    says where it is), or loaded to resume."""
    from search_spaces import warm_start_points

    if resume:
        study = SearchStudy.load(settings.study_location, settings.name)
        confirm = {"confirm_top": settings.confirm_top, "confirm_seeds": settings.confirm_seeds}
        if any(study.settings.get(key, 0) != value for key, value in confirm.items()):
            study.save_settings({**study.settings, **confirm})  # asked for on this resume
        return study
    if not settings.is_remote:  # SQLite makes its file, not the folders above it
        Path(settings.experiment_path).mkdir(parents=True, exist_ok=True)
    directions = [{"min": "minimize", "max": "maximize"}[mode] for _, mode in settings.metrics]
    points = warm_start_points(settings.space)
    if settings.space != "seed22" and not settings.warm_start:
        points = []
    study = SearchStudy.create(
        settings.study_location,
        settings.name,
        directions,
        settings.to_dict(),
        experiment_metadata(settings, data, command),
        enqueue=points,
    )
    given = settings.optuna_storage
    settings.store().write_manifest(
        {"format": MANIFEST_FORMAT, "study": without_password(given) if given else None}
    )
    return study


def conclude(
    settings: SearchSettings,
    study: SearchStudy,
    table: ResultsTable,
    budget: ComputeBudget,
    elapsed_s: float,
) -> SearchOutcome:
    """Record how the run ended: search trials a spent budget cut short end `stopped` (the
    budgets bound the search phase, not the confirmation stage), and a search with no trial
    left to run, in either phase, is marked ended. The table gets every trial the study holds,
    those that never reported too, so that it is what `build_table` would make of the study."""
    for number in study.unfinished():
        table.trial(trial_id_of(number), study.config(number), study.confirms(number))
    # Tune's clock starts a moment before ours: allow for it.
    timed_out = settings.time_budget_s is not None and elapsed_s >= 0.95 * settings.time_budget_s
    budget_spent = timed_out or budget.stop_all()
    if budget_spent:
        for number in study.unfinished(SEARCH):
            record = table.trial(trial_id_of(number))
            study.finish(number, status.STOPPED, last_step=record.last_step)
            record.status = status.STOPPED
        for number in study.unconfigured():  # never ran, and never will: no results to show
            study.finish(number, status.STOPPED, last_step=None)
    search_left = 0
    if not budget_spent:
        search_left = len(study.unfinished(SEARCH))
        search_left += max(0, settings.num_samples - study.asked(SEARCH))
    confirm_left = 0
    if settings.confirm_top and search_left == 0:
        confirmation = make_confirmation(settings, study, table)
        confirm_left = confirmation.trials_to_run()
    left = search_left + confirm_left
    if left == 0 and study.metadata.get("ended_at") is None:
        study.mark_ended(utc_now())
    table.metadata.update(study.metadata)
    return SearchOutcome(table, ended=left == 0, unfinished=left, search_ended=search_left == 0)


def spent_flops(table: ResultsTable) -> dict[str, float]:
    """Training FLOPs each trial of `table` has used so far."""
    return {
        trial_id: max((row["train_flops"] or 0.0) for row in record.evals.values())
        for trial_id, record in table.trials.items()
        if record.evals
    }


@contextmanager
def connected_ray(address: str | None, verbosity: int, dashboard: bool) -> Iterator[str | None]:
    """Connect to the cluster at `address`, or start Ray on this machine; shut it down after.
    Yields the dashboard's address (None without one).

    An already running Ray in this process (the test suite's) is used as is and left running.
    """
    import ray

    if ray.is_initialized():
        yield None
        return
    local = {} if address else {"include_dashboard": dashboard}
    try:
        context = ray.init(
            address=address,
            logging_level=logging.INFO if verbosity >= 2 else logging.WARNING,
            log_to_driver=verbosity >= 2,
            **local,
        )
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise PicoError(f"cannot start or join Ray at {address or 'this machine'}: {exc}") from None
    try:
        yield context.dashboard_url or None
    finally:
        ray.shutdown()


def prepare(settings: SearchSettings) -> Any:
    """Prepare (or load from the cache) the corpus once, in the driver, before any trial."""
    from pico.data import prepare_data

    return prepare_data(
        settings.corpus,
        settings.tokenizer,
        cache_dir=settings.cache_dir,
        max_docs=settings.max_docs,
    )


def data_line(settings: SearchSettings, data: Any) -> str:
    """What the search trains on, in one line."""
    return (
        f"data: {settings.corpus} / {settings.tokenizer}, {len(data.train):,} train and "
        f"{len(data.val):,} val tokens, vocab {data.vocab_size} ({data.path})"
    )


def make_tuner(
    settings: SearchSettings,
    study: SearchStudy,
    data: Any,
    writer: ResultsWriter,
    searcher: Any,
    budget: ComputeBudget | None,
    verbosity: int,
) -> Any:
    """A Tuner that runs the trials `searcher` hands out: the search phase's (with ASHA and the
    budgets), or the confirmation stage's (without `budget`: each runs to `max_steps`)."""
    from ray import tune

    from launch.scheduler import InOrderScheduler

    configure_tune()
    shared = {
        "experiment": settings.experiment_path,
        "data_dir": str(Path(data.path).resolve()),
        "fail_at_step": settings.fail_at_step,
    }
    trainable = named_trainable(
        settings.name, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
    )
    namer = TrialNamer()
    return tune.Tuner(
        trainable,
        param_space={SETTINGS_KEY: shared},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(settings, study) if budget else InOrderScheduler(),
            num_samples=searcher.trials_to_run(),
            max_concurrent_trials=settings.max_concurrent,
            time_budget_s=settings.time_budget_s if budget else None,
            reuse_actors=True,
            trial_name_creator=namer,
            trial_dirname_creator=namer,
        ),
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=scratch_folder(),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            callbacks=make_callbacks(settings, study, writer),
            stop=budget if budget and settings.compute_budget else None,
            progress_reporter=tune.CLIReporter(
                parameter_columns=TABLE_PARAMETERS,
                metric_columns=TABLE_METRICS,
                max_report_frequency=15,
            ),
            verbose=verbosity,
        ),
    )


def configure_tune() -> None:
    """Run Tune as Pico runs it: TUNE_ENVIRONMENT, and quiet about the logs turned off there.
    Tune builds a ResultGrid at the end of `fit`, which Pico never reads; it looks for every
    trial's JSON and CSV logs and warns once per trial when they are missing."""
    for key, value in TUNE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def scratch_folder() -> str:
    """Where Tune keeps its own state for this run: never read back, removed at exit."""
    folder = tempfile.mkdtemp(prefix="pico-tune-")
    import atexit

    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


class ComputeBudget(Stopper):
    """A Tune stopper that ends the search once the trials' training FLOPs add up to `flops`.

    `spent` holds each trial's FLOPs before this run (from the results in storage): a continued
    trial reports its count from its checkpoint on, so each trial counts its largest figure once.
    """

    def __init__(self, flops: float | None, spent: dict[str, float] | None = None):
        self.flops = flops
        self.spent = dict(spent or {})

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        key = result["config"][SETTINGS_KEY]["trial_id"]
        self.spent[key] = max(self.spent.get(key, 0.0), float(result.get("train_flops", 0.0)))
        return False

    def stop_all(self) -> bool:
        """True once the budget is spent."""
        return self.flops is not None and sum(self.spent.values()) >= self.flops


def named_trainable(experiment: str, resources: dict[str, float]) -> type:
    """The trainable: Tune's wrapper of `train_trial`, named `pico_<experiment>`, each trial
    given `resources`, whose actors say which trial they run, e.g.
    `pico_demo trial 00003 (kv_transformer)`.

    Ray's dashboard lists an actor by its class, `ImplicitFunc` (Tune's, for any function
    trainable: launch/cluster_dashboard.py looks trial actors up by it), and by its repr, which
    Ray reads once, when the actor starts: the repr of the first trial it runs. Tune reuses an
    actor for later trials (reuse_actors=True), so each of those announces itself in the actor's
    log too, and the driver's log prefixes `(<repr> pid=...)` follow it.
    """
    from ray import tune
    from ray.tune.trainable import wrap_function

    def trial(config: dict[str, Any]) -> None:
        train_trial(config)

    # The resources go on the function (a fresh one: the mark would stay on train_trial), as
    # `tune.with_resources` on the class would subclass it under another class name.
    function_trainable = wrap_function(
        tune.with_resources(trial, resources),
        name=f"pico_{experiment}",  # Tune's name for the trainable, and the class's `_name`
    )

    class ImplicitFunc(function_trainable):
        def __repr__(self) -> str:
            """`pico_<experiment> trial <id> (<arch>)`: the trial this actor runs now."""
            trial_id = getattr(self, "config", {}).get(SETTINGS_KEY, {}).get("trial_id")
            if trial_id is None:  # not yet, or not a Pico trial's config
                return self._name
            return f"{self._name} trial {trial_id} ({self.config.get('arch', '?')})"

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            """Start the next trial on this actor, and say so in the actor's log."""
            if not super().reset_config(new_config):
                return False
            from ray._private.ray_constants import LOG_PREFIX_ACTOR_NAME

            # What Ray's worker prints once, when the actor starts: the actor's log then names
            # the trial its following lines are from, and so do the driver's log prefixes.
            for stream in (sys.stdout, sys.stderr):
                print(f"{LOG_PREFIX_ACTOR_NAME}{self!r}", file=stream, flush=True)
            return True

    ImplicitFunc.__qualname__ = "ImplicitFunc"  # Ray names an actor's class by its qualname
    return ImplicitFunc


class TrialNamer:
    """Trial names and folder names a person recognises: `<arch>_<trial id>`, the id being the
    one in the results file and the study."""

    def __call__(self, trial: Any) -> str:
        return f"{trial.config['arch']}_{trial.config[SETTINGS_KEY]['trial_id']}"


def make_searcher(
    settings: SearchSettings,
    study: SearchStudy,
    continuing: list[int],
    plan: list[dict[str, Any]] | None = None,
) -> Any:
    """The searcher over the space: the study's unfinished trials, then its sampler's; or,
    given a ladder's `plan`, the plan's runs."""
    from launch.searcher import LadderSearcher, StudySearcher, make_sampler
    from search_spaces import get_space

    if plan is not None:
        return LadderSearcher(study, plan, continuing=continuing, metric=ASHA_METRIC)
    space = get_space(settings.space)
    fixed = settings.fixed_fields()
    # A sampler's random state is not kept in the study: a resumed search seeded as the first
    # run was would draw the first run's configs again. Seeding with the trials asked so far
    # gives a new, still reproducible, sequence after each interruption.
    asked = study.asked()
    seed = (
        settings.seed
        if asked == 0
        else int(np.random.SeedSequence([settings.seed, asked]).generate_state(1)[0])
    )
    study.use_sampler(make_sampler(settings.sampler, seed, len(settings.metrics)))
    return StudySearcher(
        study,
        lambda trial: {**fixed, **space(trial)},
        num_samples=settings.num_samples,
        continuing=continuing,
        metric=ASHA_METRIC,
        ask_ahead=settings.sampler == "random",  # it learns nothing from results
    )


def make_confirmation(settings: SearchSettings, study: SearchStudy, table: ResultsTable) -> Any:
    """The confirmation stage's searcher: its unfinished trials, then the rest of its plan."""
    from launch.confirm import confirmation_plan, confirmation_seeds
    from launch.searcher import ConfirmationSearcher

    seeds = confirmation_seeds(settings.seed, settings.confirm_seeds)
    plan = confirmation_plan(table, settings.confirm_top, seeds, study.confirmations())
    return ConfirmationSearcher(
        study, plan, continuing=study.unfinished(CONFIRM), metric=ASHA_METRIC
    )


def make_scheduler(settings: SearchSettings, study: SearchStudy) -> Any:
    """ASHA on val_loss by optimizer step, its records in the study; or FIFO (every trial runs
    to max_steps)."""
    from launch.scheduler import InOrderScheduler, StudyASHA

    if settings.scheduler == "fifo":
        return InOrderScheduler()
    return StudyASHA(
        study,
        metric=ASHA_METRIC,
        time_attr="step",
        max_t=settings.max_steps,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )


def make_callbacks(settings: SearchSettings, study: SearchStudy, writer: ResultsWriter) -> list:
    """The recorder, and the wandb tracker when asked for."""
    from launch.recorder import Recorder

    callbacks: list[Any] = [
        Recorder(
            study,
            writer,
            metrics=[m for m, _ in settings.metrics],
            milestones=settings.asha_milestones(),
        )
    ]
    if settings.wandb != "off":
        from launch.tracking import WandbTracker

        # wandb's files go in a local experiment folder, else beside this process.
        folder = "." if settings.is_remote else settings.experiment_path
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
        "optuna_storage": redact(settings.study_location),
        "started_at": utc_now(),
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
