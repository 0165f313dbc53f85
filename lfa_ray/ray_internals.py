"""Every part of Ray that lfa_ray uses beyond Ray's public API, in one place.

Each entry says why lfa_ray needs it, the Ray version it was written against and what breaks when
Ray changes it. Ray is pinned exactly (``pyproject.toml``), so laptop, CI and cluster nodes run the
version these were checked on; :func:`missing` checks them against the installed Ray, and
``tests/test_ray_internals.py`` fails naming the one that is gone (run it after changing the pin).
Light on imports: :mod:`lfa_ray.console` calls it in every process of a Ray job, Ray's own included.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Optional

RAY_VERSION = "2.60.0"  # what every entry below was checked on

# -- environment variables Ray reads ------------------------------------------------------------

# Ray Train's controller collects each ray.train.report on its poll interval (2 s by default) and
# the report blocks until then: with short epochs that is most of an epoch. 0.1 s keeps a report at
# a few ms (docs/PERFORMANCE.md). Read by the controller when a run starts; Ray Train copies it from
# the driver's environment (ray.train.v2._internal.constants.ENV_VARS_TO_PROPAGATE). If Ray renames
# or stops propagating it, each report waits ~2 s again: slower, not wrong.
REPORT_POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
REPORT_POLL_S = "0.1"

# Tune's newer console prints its experiment table, a TensorBoard hint (naming a staging folder, not
# the experiment) and trial errors even when silenced; the classic one (this switch, read by
# ray.tune.experimental.output) at verbose 0 prints nothing, and lfa_ray.progress says what happens.
# If it goes, those tables reappear in the console: noisier, not wrong.
CLASSIC_TUNE_CONSOLE = "RAY_AIR_NEW_OUTPUT"

# Train V2's placement-group cleaner finds the dashboard by auto-detection, which fails ("Found
# multiple active Ray instances") when another Ray runs on the machine; the placement groups of
# trials ASHA stops are then never freed and later trials wait forever. lfa_ray's local cluster gets
# a known dashboard port and every process of the job is told it through this variable
# (ray._private.ray_constants.RAY_API_SERVER_ADDRESS_ENVIRONMENT_VARIABLE). If it goes, a sweep
# beside another local Ray can hang again (test_tune.py's sweeps run beside the suite's cluster).
API_SERVER = "RAY_API_SERVER_ADDRESS"

# No node of a cluster on one machine is preempted: Train's preemption watcher (an actor per run, for
# spot nodes of a cloud cluster) would only log Ray's warning about its restart arguments. If the
# switch goes, that warning is back on the console.
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"

# Ray Data logs each dataset execution's start, plan and end at INFO on the console of every process
# that streams a run's photos (lfa_ray.stream): several lines per epoch. Its switch (this variable,
# read by ray.data._internal.logging) names a logging config to use instead of its default;
# lfa_ray's copy of that default (DATA_LOGGING_FILE) keeps the console at WARNING and the full log
# in ray-data.log. The copy names Ray Data's handler and filter classes: if they move, Ray Data
# cannot set up its logging in a streamed run (missing() says so first).
DATA_LOGGING = "RAY_DATA_LOGGING_CONFIG"
DATA_LOGGING_FILE = Path(__file__).with_name("ray_data_logging.yaml")


def fast_reports() -> None:
    """Set :data:`REPORT_POLL` for the runs this process starts (unless the user set it)."""
    os.environ.setdefault(REPORT_POLL, REPORT_POLL_S)


def quiet_data_env() -> dict[str, str]:
    """The job's variables that keep Ray Data's INFO lines off the console (:data:`DATA_LOGGING`)."""
    return {DATA_LOGGING: str(DATA_LOGGING_FILE)}


def local_cluster_env(dashboard_url: str) -> dict[str, str]:
    """Set, for this process, the variables a local cluster's job needs (:data:`API_SERVER`,
    :data:`PREEMPTION_WATCHER`); returns them for the job's other processes (``runtime_env``)."""
    env = {API_SERVER: dashboard_url, PREEMPTION_WATCHER: "0"}
    os.environ.update(env)
    return env


# -- the cluster ``ray start`` recorded -------------------------------------------------------

def recorded_address() -> Optional[str]:
    """The address of the cluster ``ray start`` recorded on this machine (e.g. the head of
    cluster.yaml, for commands run there), as ``ray.init(address="auto")`` finds it; None if none.
    ``ray._common.utils.get_ray_address_file`` is that file's path. lfa_ray reads it itself to say
    which cluster it joins and to refuse one that does not answer, instead of Ray's endless retry.
    If it goes, commands on a ``ray start`` head start a local cluster instead (use RAY_ADDRESS)."""
    from ray._common.utils import get_ray_address_file

    try:
        return Path(get_ray_address_file(None)).read_text().strip() or None
    except OSError:
        return None


# -- a trial's hand-over of results (Tune's function trainable with Train inside) ----------------

def trial_result_queues() -> Optional[tuple]:
    """The two queues a trial's results pass through on their way to Tune: the Ray queue that
    ``TuneReportCallback`` fills and the session's one-slot result queue (``ray.train._internal.
    session``'s session, its ``_inter_actor_queue`` and ``result_queue``); None outside a trial.
    :func:`lfa_ray.tune.handed_over` waits for both to empty (a Ray 2.60 race, explained there). If
    they are renamed it returns at once, and the race can hang a sweep at a trial's end again."""
    from ray.train._internal.session import get_session

    session = get_session()
    handoff = getattr(session, "_inter_actor_queue", None) if session else None
    return None if handoff is None else (handoff, session.result_queue)


# -- Tune's Trial objects (callbacks get them) --------------------------------------------------

def fetch_stored_trial_files(trial, names: tuple[str, ...]) -> None:
    """Copy a trial's ``names`` from storage into its staging folder where they are missing there
    (``Trial.init_local_path``, ``Trial.local_path``, ``Trial.storage.trial_fs_path`` and
    ``storage_filesystem``). :class:`lfa_ray.tune.KeepTrialLogs` needs it: Ray copies them back only for
    trials with a Tune checkpoint. If it goes, a trial restarted by a resumed sweep loses the epochs
    Tune recorded before the loss."""
    import pyarrow.fs

    trial.init_local_path()
    for name in names:
        local = Path(trial.local_path, name)
        if not local.exists():
            try:
                pyarrow.fs.copy_files(f"{trial.storage.trial_fs_path}/{name}", local.as_posix(),
                                      source_filesystem=trial.storage.storage_filesystem)
            except OSError:  # a trial's first start: nothing stored yet
                pass


def trial_error_file(trial) -> str:
    """Where Tune has just pickled a failed trial's error (``Trial.pickled_error_file``), read by
    :class:`lfa_ray.progress.Progress` for its one-line cause. If it goes, the line says "see its
    error.txt" instead of the cause."""
    return trial.pickled_error_file


# -- Ray's W&B integration -----------------------------------------------------------------------

def end_wandb_runs(callback) -> None:
    """Tell each W&B logging actor of Ray's ``WandbLoggerCallback`` that is still waiting for results
    to end its run (its ``_trial_queues``, ``_trial_logging_futures``, ``_signal_logging_actor_stop``).
    A sweep stopped with Ctrl-C or SIGTERM ends its running trials without ``log_trial_end``, and the
    callback's ``on_experiment_end`` then waits up to 30 minutes for those actors; with this first it
    returns once they have written their files. If it goes, a stopped tracked sweep hangs that long."""
    for trial in list(callback._trial_queues):
        if trial in callback._trial_logging_futures:
            callback._signal_logging_actor_stop(trial)


# -- Ray's loggers -------------------------------------------------------------------------------

# A default Ray states at every start, not a problem: lfa_ray keeps token auth on.
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
# Ray Train logs a worker's traceback here; lfa_ray filters those it says in one line elsewhere.
TRAIN_UTIL_LOGGER = "ray.train.v2._internal.util"
# The placement group cleaner's note when a trial that ASHA stopped is freed.
PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
# Train's line per report ("Reporting training result N") comes from a logger named after its file.
REPORT_LOGGER_FILE = ("train", "v2", "_internal", "execution", "context.py")


def report_logger() -> str:
    import ray

    return os.path.join(os.path.dirname(ray.__file__), *REPORT_LOGGER_FILE)


def quiet_driver() -> None:
    """Ray's start-up note about token auth off the console (:data:`AUTH_LOGGER`; if the logger is
    renamed, the note is back: noisier, not wrong, as for every logger here), and Tune's classic
    console (:data:`CLASSIC_TUNE_CONSOLE`), and Ray's deprecation warnings about its own calls (as in
    :func:`quiet_worker`). Trial errors are still logged in full."""
    logging.getLogger(AUTH_LOGGER).setLevel(logging.ERROR)
    os.environ[CLASSIC_TUNE_CONSOLE] = "0"
    _quiet_ray_deprecations()


def _quiet_ray_deprecations() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")


# Ray Data 2.60 lists a pack's files in a task with a helper thread; when the dataset's execution is
# shut down mid-listing (a trial ASHA stops, a run that ends) that thread raises InterruptedError
# from ray.data._internal.util, and Python prints its traceback on the console. Benign: the
# execution was being stopped anyway. If Ray moves the code, the tracebacks are back: noisier, not wrong.
DATA_INTERRUPT_MODULE = "ray.data._internal.dynamic_work_queue"


def _quiet_data_interrupts() -> None:
    import threading

    original = threading.excepthook
    if getattr(original, "lfa_ray_quiet", False):
        return

    def hook(args) -> None:
        frames = []
        tb = args.exc_traceback
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_filename)
            tb = tb.tb_next
        ours = os.path.join("ray", "data", "_internal", "")
        if args.exc_type is InterruptedError and frames and all(ours in f or "threading" in f for f in frames):
            return
        original(args)

    hook.lfa_ray_quiet = True
    threading.excepthook = hook


def quiet_worker(keep, verbose: bool) -> None:
    """In a process of the job: ``keep`` filters Ray Train's worker tracebacks
    (:data:`TRAIN_UTIL_LOGGER`); unless ``verbose``, Train's line per report, the placement group
    cleaner's notes, Ray's deprecation warnings about its own calls (Ray Train 2.60 hands Ray Data
    an option Ray Data deprecates, in every streamed run) and Ray Data's interrupted listing threads
    (:data:`DATA_INTERRUPT_MODULE`) are off."""
    logging.getLogger(TRAIN_UTIL_LOGGER).addFilter(keep)
    if not verbose:
        _quiet_ray_deprecations()
        _quiet_data_interrupts()
        logging.getLogger(report_logger()).setLevel(logging.WARNING)
        logging.getLogger(PG_CLEANER_LOGGER).setLevel(logging.ERROR)


# Each trial's actors are new Python processes, so a sweep starts dozens of them on purpose; the
# raylet then warns ("N PYTHON worker processes have been started on node ..., which is 4x the
# maximum expected startup concurrency") in the middle of the sweep's lines. It reaches the driver
# as an error message that ray._private.worker.listen_error_messages prints through the module's
# print_to_stdstream. If either is renamed, the warning is back: noisier, not wrong.
WORKER_START_WARNING = "PYTHON worker processes have been started"


def quiet_worker_start_warning() -> None:
    """Drop the raylet's :data:`WORKER_START_WARNING` from what the driver prints (every other
    message of Ray's passes)."""
    from ray._private import worker

    original = worker.print_to_stdstream
    if getattr(original, "lfa_ray_quiet", False):
        return

    def printer(data: dict, ignore_prefix: bool):
        if data.get("pid") == "raylet" and any(WORKER_START_WARNING in line for line in data.get("lines", ())):
            return None
        return original(data, ignore_prefix)

    printer.lfa_ray_quiet = True
    worker.print_to_stdstream = printer


# -- the check ---------------------------------------------------------------------------------

def _source(module: str) -> str:
    import importlib.util  # noqa: F811 - light imports: only when checking

    spec = importlib.util.find_spec(module)
    return Path(spec.origin).read_text() if spec and spec.origin else ""


def missing() -> list[str]:
    """What of the above the installed Ray lacks, one line each naming the entry and what breaks;
    [] when everything is there."""
    import importlib
    import importlib.util

    import ray

    problems = []

    def need(ok, entry: str, what: str) -> None:
        try:
            fine = bool(ok())
        except Exception:  # noqa: BLE001 - an import or attribute gone: that is the finding
            fine = False
        if not fine:
            problems.append(f"lfa_ray.ray_internals.{entry}: {what} is not in the installed Ray {ray.__version__} "
                            f"(written against {RAY_VERSION}); see that entry for what breaks and adapt it")

    def constants():
        return importlib.import_module("ray.train.v2._internal.constants")

    need(lambda: constants().HEALTH_CHECK_INTERVAL_S_ENV_VAR == REPORT_POLL
         and REPORT_POLL in constants().ENV_VARS_TO_PROPAGATE, "REPORT_POLL",
         f"{REPORT_POLL}, propagated to Train's controller")
    need(lambda: f'"{CLASSIC_TUNE_CONSOLE}"' in _source("ray.tune.experimental.output"), "CLASSIC_TUNE_CONSOLE",
         f"{CLASSIC_TUNE_CONSOLE}, read by ray.tune.experimental.output")
    need(lambda: importlib.import_module("ray._private.ray_constants").RAY_API_SERVER_ADDRESS_ENVIRONMENT_VARIABLE
         == API_SERVER, "API_SERVER", API_SERVER)
    need(lambda: constants().ENABLE_PREEMPTION_WATCHER_ENV_VAR == PREEMPTION_WATCHER, "PREEMPTION_WATCHER",
         PREEMPTION_WATCHER)
    need(lambda: callable(importlib.import_module("ray._common.utils").get_ray_address_file), "recorded_address",
         "ray._common.utils.get_ray_address_file")
    need(lambda: callable(importlib.import_module("ray.train._internal.session").get_session)
         and all(f"self.{a}" in _source("ray.train._internal.session") for a in ("_inter_actor_queue", "result_queue")),
         "trial_result_queues", "ray.train._internal.session's get_session, _inter_actor_queue and result_queue")

    def trial_parts():
        from ray.train._internal.storage import StorageContext
        from ray.tune.experiment import Trial

        return (all(hasattr(Trial, a) for a in ("init_local_path", "local_path", "pickled_error_file"))
                and "self.storage = " in _source("ray.tune.experiment.trial")
                and hasattr(StorageContext, "trial_fs_path")
                and "self.storage_filesystem" in _source("ray.train._internal.storage"))

    def wandb_parts():
        from ray.air.integrations.wandb import WandbLoggerCallback

        source = _source("ray.air.integrations.wandb")
        return (callable(WandbLoggerCallback._signal_logging_actor_stop)
                and all(f"self.{a}" in source for a in ("_trial_queues", "_trial_logging_futures")))

    need(wandb_parts, "end_wandb_runs",
         "WandbLoggerCallback._signal_logging_actor_stop, _trial_queues and _trial_logging_futures")
    need(trial_parts, "fetch_stored_trial_files",
         "Trial.init_local_path/local_path/pickled_error_file and StorageContext.trial_fs_path/storage_filesystem")
    for entry, name in (("AUTH_LOGGER", AUTH_LOGGER), ("TRAIN_UTIL_LOGGER", TRAIN_UTIL_LOGGER),
                        ("PG_CLEANER_LOGGER", PG_CLEANER_LOGGER)):
        need(lambda name=name: importlib.util.find_spec(name) is not None, entry, f"the module {name}")
    need(lambda: Path(report_logger()).is_file(), "REPORT_LOGGER_FILE", "ray/" + "/".join(REPORT_LOGGER_FILE))
    need(lambda: callable(importlib.import_module("ray._private.worker").print_to_stdstream)
         and '"pid": "raylet"' in _source("ray._private.worker"), "quiet_worker_start_warning",
         "ray._private.worker.print_to_stdstream, printing the raylet's messages")

    def data_logging():
        import yaml

        config = yaml.safe_load(DATA_LOGGING_FILE.read_text())
        classes = [h["class"] for h in config["handlers"].values()] + [
            f["()"] for f in config["filters"].values() if not f["()"].startswith("lfa_ray.")]
        return (f'"{DATA_LOGGING}"' in _source("ray.data._internal.logging")
                and all(hasattr(importlib.import_module(c.rpartition(".")[0]), c.rpartition(".")[2]) for c in classes))

    need(lambda: "raise InterruptedError" in _source("ray.data._internal.util")
         and "work_queue.put(SENTINEL)" in _source(DATA_INTERRUPT_MODULE), "DATA_INTERRUPT_MODULE",
         f"{DATA_INTERRUPT_MODULE}'s listing thread, interrupted through ray.data._internal.util")
    need(data_logging, "DATA_LOGGING", f"{DATA_LOGGING}, read by ray.data._internal.logging, with the handler and "
         f"filter classes {DATA_LOGGING_FILE.name} names")
    return problems
