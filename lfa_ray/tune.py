"""``python -m lfa_ray.tune``: Optuna TPE + ASHA over TorchTrainer trials, then the final retrain.

Each trial is a Tune function trainable that builds and fits one TorchTrainer
(Ray 2.60's supported Train-in-Tune pattern) and forwards its per-epoch reports
with ``TuneReportCallback``; it holds no CPU itself, the training workers hold
them all. The experiment lives in ``<storage.path>/<name>/``; ``--resume``
continues an interrupted sweep (and/or its final retrain) from there.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m lfa_ray.tune: the command, run before this copy defines anything,
    from lfa_ray.cli import tune  # so the module's state exists once (as lfa_ray.tune)

    raise SystemExit(tune())

import json
import math
import statistics
import time
from typing import TYPE_CHECKING, Callable, Optional

from ray.tune import Callback, Stopper
from ray.tune.stopper import CombinedStopper

from lfa_ray import runs
from lfa_ray.checkpoint import FINAL, MODEL_FILE
from lfa_ray.config import (
    Config,
    ProfileChoice,
    StorageConfig,
    config_from_dict,
    dump_config,
    flat_keys,
    load_config,
    profile_stem,
    resolve,
)
from lfa_ray.errors import Stopped, UserError
from lfa_ray.evaluate import format_summary, score_test
from lfa_ray.lock import RunLock
from lfa_ray.search import apply_params, reference_point, to_tune, validate_space
from lfa_ray.storage import Location, locate
from lfa_ray.stream import Streamed

if TYPE_CHECKING:
    from lfa_ray.tracking import Tracking

# What a trial's own process holds: no CPU, so that N trials of W workers fit exactly on N*W CPUs
# (with the usual 0.01 CPU, two 1-CPU trials do not fit on 2 CPUs and the second one's worker
# group times out). Tune refuses an empty resource request, so the trial holds a little memory.
TRIAL_RESOURCES = {"CPU": 0, "memory": 100 * 2**20}


def trial_fn(params: dict, *, base: dict, data, exp_dir: Location, gpus_per_worker: float = 0.0, init=None) -> None:
    """One trial: the profile with ``params`` applied, trained by a TorchTrainer inside the trial's folder.

    ``data`` is the sweep's dataset in the object store (:class:`lfa_ray.ray_train.SharedData`);
    ``gpus_per_worker`` what the driver's :func:`lfa_ray.ray_train.check_resources` decided; ``init`` the
    weights of ``train.init_from`` in the object store.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lfa_ray.ray_train import make_trainer

    cfg = apply_params(config_from_dict(base), params)
    trial_name = tune.get_context().get_trial_name()
    # The Train run lives in the trial's folder in persistent storage (not Tune's local staging
    # copy), named deterministically, so a restored trial's TorchTrainer finds its checkpoints
    # there and continues from the latest. Its metrics.csv keeps every epoch it reported.
    run = exp_dir / trial_name / "train"
    if replay(run, exp_dir / trial_name / "result.json"):
        return  # it had finished before the sweep's driver was lost: its results, not a re-run
    trainer = make_trainer(cfg, data=data, storage=exp_dir / trial_name, name="train", run_dir=run.uri,
                           gpus_per_worker=gpus_per_worker, init=init,
                           callbacks=[TuneReportCallback()], trial=True)
    try:
        trainer.fit()
    except Exception as exc:  # the trial's error keeps the cause in one line (trials.csv, summary.md)
        raise TrialFailed(runs.failure_line(exc)) from None
    handed_over()


def handed_over(quiet: float = 0.5, limit: float = 120.0) -> None:
    """Return once Tune's side of the trial has taken every epoch the Train run reported.

    Ray 2.60 race: ``TuneReportCallback`` hands each epoch to the trial actor's main thread through
    a Ray queue; that thread moves it onto the session's one-slot result queue, which only it
    empties. When the trial function returns, Ray puts its closing result on that same slot; if
    the last epoch is still in the Ray queue then, the main thread blocks putting it behind the
    closing result and the trial (and the sweep) waits forever. So the function returns only once
    both queues have stayed empty for ``quiet`` seconds (``limit`` at most).
    """
    from lfa_ray.ray_internals import trial_result_queues

    queues = trial_result_queues()
    if queues is None:
        return
    deadline, empty_since = time.monotonic() + limit, None
    while time.monotonic() < deadline:
        if all(q.empty() for q in queues):
            empty_since = empty_since or time.monotonic()
            if time.monotonic() - empty_since >= quiet:
                return
        else:
            empty_since = None
        time.sleep(0.05)


def replay(run: Location, results: Location) -> bool:
    """Report again what a trial's Train run recorded and Tune lost with the sweep's driver (Tune
    saves its state every few seconds): of a run that finished, every epoch Tune's ``results``
    (the trial's result.json) lacks (returns True: nothing is left to train); of an unfinished
    one, those up to the checkpoint it continues from. So the trial's history stays whole."""
    from ray import tune

    from lfa_ray.checkpoint import latest_checkpoint
    from lfa_ray.runlog import read_metrics

    rows = read_metrics(run / "metrics.csv")
    finished = bool(rows) and bool(rows[-1].get("run_finished"))
    if not finished:
        latest = latest_checkpoint(run) if rows else None
        upto = int(latest.name.rsplit("_", 1)[1]) if latest is not None else 0
        rows = [r for r in rows if r["epoch"] <= upto]
    known = [json.loads(line).get("epoch", 0) for line in
             (results.read_text().splitlines() if rows and results.is_file() else []) if line.strip()]
    rows = [r for r in rows if r["epoch"] > max(known, default=0)]
    for row in rows:
        tune.report({**row, "epoch": int(row["epoch"]), "run_finished": int(row.get("run_finished", 0))})
    return finished


class KeepTrialLogs(Callback):
    """A trial that a resumed sweep starts again (its driver was lost while it ran) continues its
    stored result.json and progress.csv. Ray copies them back into the new driver's staging folder
    only for trials with a Tune checkpoint, and lfa_ray's trials keep theirs in Ray Train: without
    this, the files start empty there and, synced, replace the stored ones, losing every epoch
    Tune had recorded before the loss (:func:`replay` reports only those it lacks)."""

    FILES = ("result.json", "progress.csv")

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        from lfa_ray.ray_internals import fetch_stored_trial_files

        fetch_stored_trial_files(trial, self.FILES)


class Unfinished(Callback):
    """Which trials this driver started and Tune did not see end. Tune catches the first Ctrl-C itself:
    it stops, saves the experiment, marks the trials still running TERMINATED without their end
    (``on_trial_complete``/``on_trial_error``), and returns as from a finished sweep, so the results
    cannot tell a stopped last trial from a finished one; this record can. It is the module's
    :data:`STARTED`, not the instance's: a restored Tuner calls the copy it unpickles."""

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        STARTED.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        STARTED.discard(trial.trial_id)

    on_trial_error = on_trial_complete


STARTED: set[str] = set()


def _reached(value: float, target: float, mode: str) -> bool:
    return value >= target if mode == "max" else value <= target


class StopAt(Stopper):
    """``tune.stop_at``: ends the sweep once a trial's metric reaches the target."""

    def __init__(self, metric: str, mode: str, target: float):
        self.metric, self.mode, self.target, self.reached = metric, mode, target, False

    def __call__(self, trial_id: str, result: dict) -> bool:
        value = result.get(self.metric)
        self.reached = self.reached or (value is not None and _reached(value, self.target, self.mode))
        return False

    def stop_all(self) -> bool:
        return self.reached


class Budget(Stopper):
    """``tune.time_budget_s``: the sweep and its final retrain are planned into that many seconds.

    Trials stop (all at once, as Tune's own time budget stops them) once the time left would no
    longer cover what comes after them, as the trials' own timings predict it (:meth:`after`). The
    clock runs while Tune runs the trials (a resumed sweep has what its first run left, as with
    Tune's budget); ``spent_before``: seconds this command spent before (data, Ray's start).
    ``final_epochs`` 0: no final to plan for (a benchmark's plain budget)."""

    def __init__(self, seconds: float, *, final_epochs: int = 0, refine_epochs: float = 0.0, spent_before: float = 0.0):
        self.seconds, self.final_epochs, self.refine_epochs = seconds, final_epochs, refine_epochs
        self.left, self._last = seconds - spent_before, None
        self.first: dict[str, float] = {}  # trial -> seconds from its start to its first report
        self.first_epoch: dict[str, float] = {}  # trial -> its first epoch's own seconds
        self.steady: dict[str, list[float]] = {}  # trial -> seconds between its later reports
        self.kept: Optional[float] = None  # the seconds kept for the final when the trials stopped

    def __call__(self, trial_id: str, result: dict) -> bool:
        # a replayed epoch (a resumed trial's) arrives at once: it took its recorded epoch_seconds
        epoch = result.get("epoch_seconds") or 0.0
        took = max(result.get("time_this_iter_s") or 0.0, epoch)
        # the final retrain runs alone: an epoch of trials sharing the machine counts as its share
        # (somewhat less than alone takes where sharing gains: 1.14x on a GPU, 1.5x on 2 CPUs)
        share = max(1, len(STARTED))
        if trial_id not in self.first:
            self.first[trial_id], self.first_epoch[trial_id] = took, epoch / share
        else:
            self.steady.setdefault(trial_id, []).append(took / share)
        return False

    def after(self) -> float:
        """Seconds the final retrain (and its refining model's) will take, from the trials: the
        slowest trial's start and first epoch (Ray Train's start, CUDA's warm-up) and the median
        later epoch (before any: the first epochs' own seconds), divided among the trials running
        then, for each further epoch; the refining model as ``refine_epochs`` more epochs (its
        crops' pixels relative to the photos') after a start of its own."""
        if not self.final_epochs or not self.first:
            return 0.0
        later = [s for v in self.steady.values() for s in v]
        first = max(self.first.values())
        epoch = statistics.median(later or list(self.first_epoch.values()))
        refine = first - epoch + self.refine_epochs * epoch if self.refine_epochs else 0.0
        return first + (self.final_epochs - 1) * epoch + refine

    def stop_all(self) -> bool:
        now = time.monotonic()
        if self._last is not None:
            self.left -= now - self._last
        self._last = now
        if self.kept is None:  # Tune asks at every step of its loop: once stopped, nothing to plan
            after = self.after()
            if self.left <= after:
                self.kept = max(0.0, self.left)
                BUDGET_SPENT.update(seconds=self.seconds, kept=self.kept, after=after)
        return self.kept is not None

    def __setstate__(self, state: dict) -> None:
        state["_last"] = None  # a restored sweep's clock starts again when Tune does
        self.__dict__.update(state)


# set by the Budget stopper in the driver when the trials stop for the final retrain; the driver's
# record, as the stopper itself is the Tuner's copy (a restored Tuner unpickles its own)
BUDGET_SPENT: dict = {}


def budget(cfg: Config, spent_before: float) -> Optional[Budget]:
    """The profile's ``tune.time_budget_s`` as a :class:`Budget` (None: no budget)."""
    t, r = cfg.tune, cfg.refine
    if t.time_budget_s is None:
        return None
    refine = r.epochs * r.per_photo * (r.image_size / cfg.data.image_size) ** 2 if r.image_size else 0.0
    return Budget(t.time_budget_s, final_epochs=cfg.final.epochs, refine_epochs=refine, spent_before=spent_before)


def why_ended_early(cfg: Config, table) -> str | None:
    """Why a sweep ended before all its trials ran: the time budget or the stop_at target (None: neither)."""
    t = cfg.tune
    best = table[f"best_{t.metric}"].dropna()
    if t.stop_at is not None and any(_reached(v, t.stop_at, t.mode) for v in best):
        return f"{t.metric} {t.stop_at:g} reached (tune.stop_at)"
    if BUDGET_SPENT:
        return (f"time budget of {BUDGET_SPENT['seconds']:g} s: the trials stopped with {BUDGET_SPENT['kept']:.0f} s "
                f"left, the final retrain's {BUDGET_SPENT['after']:.0f} s as the trials timed it (tune.time_budget_s)")
    return None


class TrialFailed(Exception):
    """A trial's training failed; the message is the cause in one line."""


def trial_name(trial) -> str:
    """``trial_003_<id>``: the searcher's creation order (the tag's counter) first, so folders sort by it."""
    return f"trial_{int(trial.experiment_tag.split('_', 1)[0]):03d}_{trial.trial_id}"


def trial_config(cfg: Config) -> Config:
    """The profile as each trial runs it: up to ``max_t`` epochs; only the best and latest checkpoint kept."""
    raw = cfg.to_dict()
    raw["train"]["epochs"] = cfg.tune.scheduler.max_t
    raw["train"]["keep_checkpoints"] = 1
    return config_from_dict(raw)


def default_concurrency(cfg: Config, gpus_per_worker: float = 0.0, streams: bool = False) -> int:
    """Trials that fit side by side in the cluster, so no trial waits forever for another's workers:
    its CPUs / (workers x CPUs per worker) and, on GPUs, its GPUs / (workers x GPUs per worker)
    (four trials share one GPU at 0.25). ``streams``: one CPU is left to Ray Data's tasks."""
    import ray

    total = ray.cluster_resources()
    s = cfg.scaling
    fits = int((total.get("CPU", 0) - streams) // (s.num_workers * s.cpus_per_worker))
    if gpus_per_worker:
        # the small epsilon keeps 1 / 0.1 at 10 trials, not 9.999...
        fits = min(fits, int(total.get("GPU", 0) / (s.num_workers * gpus_per_worker) + 1e-9))
    return max(1, fits)


def make_tuner(cfg: Config, exp_dir: Location, data, *, gpus_per_worker: float = 0.0, init=None, restore: bool = False,
               restart_errored: bool = False, search: str = "tpe", early_stopping: bool = True,
               time_budget_s: float | None = None, trial: Callable = trial_fn, callbacks: tuple = (),
               spent_before: float = 0.0):
    """The sweep's Tuner (or the restored one). ``search="random"``, ``early_stopping=False`` and
    ``time_budget_s`` (instead of ``tune.time_budget_s``) exist for the benchmarks that compare
    TPE + ASHA with plain random search;
    ``trial`` (called as :func:`trial_fn` is) for the one that measures Ray's own cost per trial.
    ``data``: the loaded dataset in the object store (:class:`lfa_ray.ray_train.SharedData`);
    ``gpus_per_worker``: from :func:`lfa_ray.ray_train.check_resources` (0: CPU workers);
    ``spent_before``: seconds the command spent before the sweep, out of ``tune.time_budget_s``;
    ``callbacks``: more Tune callbacks (:meth:`lfa_ray.tracking.Tracking.tune_callbacks`). A restored
    Tuner runs with the callbacks its sweep started with (Tune keeps them with the sweep)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from lfa_ray.console import verbose
    from lfa_ray.progress import Progress

    trainable = tune.with_resources(
        tune.with_parameters(trial, base=trial_config(cfg).to_dict(), data=data,
                             exp_dir=exp_dir, gpus_per_worker=gpus_per_worker, init=init), TRIAL_RESOURCES)
    storage = exp_dir.ray_storage()
    if restore:
        return tune.Tuner.restore(exp_dir.path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=restart_errored, storage_filesystem=storage["storage_filesystem"])
    t = cfg.tune
    if not verbose():
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory"
    first = reference_point(cfg)
    points = [first] if first else None
    concurrency = t.max_concurrent_trials or default_concurrency(cfg, gpus_per_worker, isinstance(data, Streamed))
    # Trials hold no CPU, so this limit is what keeps Tune from starting more trials than fit:
    # Tune applies max_concurrent_trials to a Searcher, a BasicVariantGenerator takes its own.
    searcher = (OptunaSearch(points_to_evaluate=points, sampler=optuna.samplers.TPESampler(seed=cfg.train.seed))
                if search == "tpe" else
                BasicVariantGenerator(points_to_evaluate=points, random_state=cfg.train.seed,
                                      max_concurrent=concurrency))
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=t.scheduler.max_t, grace_period=t.scheduler.grace_period,
                               reduction_factor=t.scheduler.reduction_factor)
                 if early_stopping else FIFOScheduler())
    plan = Budget(time_budget_s) if time_budget_s is not None else budget(cfg, spent_before)
    stoppers = [s for s in (plan, StopAt(t.metric, t.mode, t.stop_at) if t.stop_at is not None else None) if s]
    return tune.Tuner(
        trainable,
        param_space=to_tune(t.search_space),
        tune_config=tune.TuneConfig(
            metric=t.metric, mode=t.mode, search_alg=searcher, scheduler=scheduler, num_samples=t.num_samples,
            max_concurrent_trials=concurrency if search == "tpe" else None,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        # The console is Progress's lines; Tune's status tables (and its TensorBoard hint, which names
        # a staging folder, not the experiment) only with --verbose.
        run_config=tune.RunConfig(name=exp_dir.name, **exp_dir.parent.ray_storage(),
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  callbacks=[Progress(t.num_samples, t.metric, t.mode, t.scheduler.max_t,
                                                      plan and plan.seconds),
                                             KeepTrialLogs(), Unfinished(), *callbacks],
                                  stop=CombinedStopper(*stoppers) if stoppers else None,
                                  verbose=None if verbose() else 0),
    )


def is_experiment(loc: Location) -> bool:
    from ray import tune

    return ((loc / "config.yaml").is_file()
            and tune.Tuner.can_restore(loc.path, storage_filesystem=loc.ray_storage()["storage_filesystem"]))


def plan(choice: ProfileChoice, name: Optional[str] = None, resume: bool = False,
         restart_errored: bool = False) -> tuple[Config, Location]:
    """Resolve and check everything before Ray starts or anything is written: the profile ``choice``,
    the experiment ``name`` (default ``tune-<profile>``), ``resume`` (continue sweep ``name``),
    ``restart_errored`` (with ``resume``: rerun errored trials)."""
    if resume:
        if not name:
            raise UserError("--resume needs --name NAME of the sweep to continue (a folder under storage.path)")
        exp_dir = locate(resolve(choice).storage.path) / name
        if not exp_dir.exists():
            raise UserError(f"{exp_dir}: no such sweep; check --name (and storage.path)")
        if not is_experiment(exp_dir):
            raise UserError(f"{exp_dir} is not a tune experiment (no config.yaml and Tune state); "
                            f"resume a run of lfa_ray.train with: python -m lfa_ray.train --resume-from {exp_dir}")
        cfg = load_config(exp_dir / "config.yaml")
        refuse_changes(choice, cfg, exp_dir)
        return cfg, exp_dir
    if restart_errored:
        raise UserError("--restart-errored applies to --resume; add --resume --name NAME")
    cfg = resolve(choice)
    validate_space(cfg)
    if cfg.train.init_from and "model.features" in cfg.tune.search_space:
        raise UserError("train.init_from fixes the architecture; drop model.features from tune.search_space "
                        "or drop train.init_from")
    storage = locate(cfg.storage.path)
    storage.mkdir()  # fails here, before Ray starts, for a missing bucket or a read-only place
    exp_dir = storage / (name or f"tune-{profile_stem(choice)}")
    refuse_existing(exp_dir)
    return cfg, exp_dir


def final_config(cfg: Config, best_params: dict) -> Config:
    """The profile with the best trial's params and the final retrain's epochs."""
    best = apply_params(cfg, best_params)
    raw = best.to_dict()
    raw["train"]["epochs"] = cfg.final.epochs
    return config_from_dict(raw)


def run(cfg: Config, exp_dir: Location, *, resume: bool, restart_errored: bool = False) -> Location:
    from lfa_ray import tracking  # the driver's: a trial's process imports this module, not MLflow or W&B

    began = time.monotonic()  # tune.time_budget_s counts from here
    tracking.check(cfg)  # before Ray starts
    cfg, setup = runs.prepare(cfg)  # the dataset decoded once for the whole sweep
    with RunLock(exp_dir):
        if not resume:
            refuse_existing(exp_dir)  # again: another command may have made it since plan()
        return _sweep(cfg, exp_dir, setup, resume=resume, restart_errored=restart_errored, began=began)


def refuse_changes(choice: ProfileChoice, cfg: Config, exp_dir: Location) -> None:
    """``--resume`` repeats the sweep's own command happily (its --set and --data values; --config is
    not read again) and refuses a changed value, naming the key: a sweep continues with its config."""
    if choice.config:
        print(f"note: --resume continues with the sweep's own {exp_dir / 'config.yaml'}; --config is not read")
    if not (choice.overrides or choice.data):
        return
    given = resolve(ProfileChoice(None, choice.data, choice.overrides), base_raw=cfg.to_dict(), where="--set")
    now, then = flat_keys(given.to_dict()), flat_keys(cfg.to_dict())
    changed = [k for k in then if now[k] != then[k] and k != "storage.path"]
    if changed:
        key = changed[0]
        more = f" (and {len(changed) - 1} more key{'s' if len(changed) > 2 else ''})" if len(changed) > 1 else ""
        raise UserError(f"--resume: {key} is {now[key]!r} in this command but {then[key]!r} in "
                        f"{exp_dir / 'config.yaml'}{more}; a sweep continues with its own config: drop the "
                        f"change, or start a new sweep with another --name")


def resume_command(cfg: Config, exp_dir: Location) -> str:
    where = "" if cfg.storage.path == StorageConfig.path else f" --set storage.path={cfg.storage.path}"
    return f"python -m lfa_ray.tune --resume --name {exp_dir.name}{where}"


def refuse_existing(exp_dir: Location) -> None:
    runs.refuse_existing(exp_dir, f"continue it with --resume --name {exp_dir.name}")


def _sweep(cfg: Config, exp_dir: Location, setup: runs.Setup, *, resume: bool, restart_errored: bool,
           began: float) -> Location:
    created = not exp_dir.exists()
    if not resume:
        exp_dir.mkdir()
        dump_config(cfg, exp_dir / "config.yaml")
    from lfa_ray.tracking import Tracking

    track = Tracking(cfg, exp_dir)
    with track.sweep(resume) as parent:
        return _tune(cfg, exp_dir, setup, track, parent, created=created, resume=resume,
                     restart_errored=restart_errored, began=began)


def _tune(cfg: Config, exp_dir: Location, setup: runs.Setup, track: Tracking, parent: Optional[str], *,
          created: bool, resume: bool, restart_errored: bool, began: float) -> Location:
    from lfa_ray import ray_train, report

    try:
        tuner = make_tuner(cfg, exp_dir, setup.data, gpus_per_worker=setup.gpus, init=setup.init, restore=resume,
                           restart_errored=restart_errored, callbacks=track.tune_callbacks(),
                           spent_before=time.monotonic() - began)
        STARTED.clear()
        BUDGET_SPENT.clear()
        grid = tuner.fit()
    except BaseException:
        if created and not any(c.name.startswith("trial_") for c in exp_dir.children()):
            exp_dir.rmtree()  # nothing ran: don't block a corrected retry
        raise
    table, curves = report.collect(grid, cfg)
    ended_early = why_ended_early(cfg, table)
    if ended_early is None and (STARTED or grid.num_terminated + grid.num_errors < cfg.tune.num_samples):  # Ctrl-C
        raise Stopped(f"sweep stopped before all {cfg.tune.num_samples} trials finished; continue it with: "
                      f"{resume_command(cfg, exp_dir)}")
    if ended_early:
        print(f"sweep ended after {len(table)} of {cfg.tune.num_samples} trials: {ended_early}")
    if table.empty or table["best_" + cfg.tune.metric].isna().all():
        if BUDGET_SPENT:
            raise UserError(f"tune.time_budget_s {cfg.tune.time_budget_s:g} s ended before any trial reported "
                            f"{cfg.tune.metric}; raise it (the data and Ray's start count too)")
        raise UserError(f"no trial reported {cfg.tune.metric}; see the trial errors above, fix and "
                        f"retry with {resume_command(cfg, exp_dir)} --restart-errored")
    best_row = report.best_row(table, cfg)
    best_params = {k: report.param_value(best_row, k, spec) for k, spec in cfg.tune.search_space.items()}
    # it runs alone: all of a local cluster's CPUs (but one, where Ray Data streams the photos)
    final_cfg = ray_train.alone(final_config(cfg, best_params), isinstance(setup.data, Streamed))
    dump_config(final_cfg, exp_dir / "best_config.yaml")
    report.write_trials(table, exp_dir)
    _final(cfg, final_cfg, exp_dir, setup, table, curves, best_row, best_params, ended_early, track, parent)
    return exp_dir


def _final(cfg: Config, final_cfg: Config, exp_dir: Location, setup: runs.Setup, table, curves, best_row,
           best_params: dict, ended_early: Optional[str], track: Tracking, parent: Optional[str]) -> None:
    """The best config retrained (unless done already), its refining model, its test score, the
    summary; the sweep's closing lines."""
    from lfa_ray import report
    from lfa_ray.tracking import test_scores

    final_dir, again = exp_dir / FINAL, resume_command(cfg, exp_dir)
    model = final_dir / MODEL_FILE
    with track.run(final_dir, final_cfg, kind="final", parent=parent) as tracked:
        if not model.exists():
            print(f"\nretraining the best config for {final_cfg.train.epochs} epochs into {final_dir} "
                  f"({final_cfg.scaling.cpus_per_worker} CPUs per worker)")
            final_dir.mkdir()
            dump_config(final_cfg, final_dir / "config.yaml")
            model, _ = runs.fit(final_cfg, setup, final_dir, what="the final retrain", continue_with=again,
                                label="final ", track=tracked.epochs)
        refiner = runs.train_refiner(final_cfg, final_dir, setup.gpus, again)
        final_metrics = report.final_metrics(final_dir)
        test = score_test(model, final_cfg, final_dir, int(final_metrics.get("epoch", 0)))
        mattered = report.importances(table, cfg)
        report.write_summary(exp_dir, cfg, table, curves, best_params, final_metrics, model, test, ended_early,
                             mattered)
        tracked.finish(final_dir, model, test, exp_dir / "summary.md")
    track.close_sweep(parent, {f"best_trial_{cfg.tune.metric}": best_row["best_" + cfg.tune.metric],
                               "final_best_val_dice": final_metrics.get("best_val_dice", math.nan),
                               **test_scores(test)},
                      exp_dir / "summary.md", exp_dir / "trials.csv")
    print(f"\nsweep {exp_dir.name}: {len(table)} trials, {int(table['stopped_early'].sum())} stopped early"
          + (f" (by ASHA, or as the sweep ended: {ended_early})" if ended_early else " by ASHA"))
    print("  best config:  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in best_params.items()))
    print(f"  best trial {cfg.tune.metric}: {best_row['best_' + cfg.tune.metric]:.4f}")
    print(f"  what mattered: {report.importance_line(mattered, cfg.tune.metric)}")
    print(f"  final model:  {model} (best val_dice {final_metrics.get('best_val_dice', math.nan):.4f})"
          + (f",\n                refined by {refiner}" if refiner else ""))
    if test:
        print(f"  test split:   {format_summary(test)}, never used to choose")
    print(f"  summary:      {exp_dir / 'summary.md'}")
    print(f"  tensorboard --logdir {exp_dir}")

