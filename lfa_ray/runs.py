"""Training runs: a profile trained by a Ray TorchTrainer into a run folder, its best checkpoint
exported as ``model.pt``, the way ``train``, a sweep's final retrain and every run's refining model
run it, with one set-up path and one failure policy.

Whatever ends a run early, wherever it happens, the command ends with one line and one exit code,
naming the command that continues (``CMD``: ``python -m lfa_ray.train --resume-from RUN`` for
``train``, ``python -m lfa_ray.tune --resume --name NAME`` in a sweep):

- Ctrl-C, SIGTERM: ``stopped: WHAT stopped; continue it with: CMD`` (exit 130, 143);
- divergence, or another error a worker raises for the user: ``error: WHAT failed: MESSAGE; continue it
  with: CMD`` (2; the message names the fix, e.g. ``--set train.grad_clip=1.0``);
- a full disk: ``error: disk full: no space left writing RUN; free space there, then continue it
  with: CMD`` (2; checkpoint copies cut short are removed);
- a dead worker or node, a crash: ``error: WHAT failed: CAUSE; continue it with: CMD`` (2), with a
  hint that ``scaling.max_failures`` restarts by itself.

Where the run's folder was new and no checkpoint was kept, the folder is removed (so it blocks no
retry) and the line ends ``run the same command again (nothing was kept)``. A sweep's trial runs its
own TorchTrainer under Tune (:func:`lfa_ray.tune.trial_fn`); its failure is :func:`failure_line`,
one line in ``trials.csv``, and the sweep goes on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, NoReturn, Optional

from lfa_ray.checkpoint import MODEL_FILE, REFINE_DIR, best_checkpoint, drop_partial, export_model, latest_checkpoint
from lfa_ray.config import Config, dump_config
from lfa_ray.errors import Stopped, UserError
from lfa_ray.storage import Location


def refuse_existing(run_dir: Location, how_to_continue: str) -> None:
    """Refuse to write into a run or sweep folder that exists and is not empty."""
    if run_dir.exists() and run_dir.children():
        raise UserError(f"{run_dir} already exists; {how_to_continue}, or pick another --name")


@dataclass(frozen=True)
class Setup:
    """What every run of a command shares: the dataset (in Ray's object store, or streamed), the GPUs
    each worker holds (0: CPU), the weights of ``train.init_from`` in the object store (or None)."""
    data: object  # lfa_ray.ray_train.SharedData, or lfa_ray.stream.Streamed
    gpus: float
    init: object = None  # ray.ObjectRef


def prepare(cfg: Config, *, alone: bool = False) -> tuple[Config, Setup]:
    """Pair and split the data and read ``train.init_from`` (before Ray starts; a synthetic set not yet
    cached is drawn after, in Ray tasks across the cluster), start or join Ray,
    decide whether the photos stream (``data.stream``) and the devices; decode and check the data
    unless it streams. ``alone``: the run has the cluster to itself (:func:`lfa_ray.ray_train.alone`);
    returns ``cfg`` so adjusted."""
    from lfa_ray import ray_train, stream
    from lfa_ray.data import load_for, resolve_root, splits_for
    from lfa_ray.synth import synthetic_path

    if cfg.data.path is None and not (synthetic_path(cfg.data.synthetic_n, cfg.data.target) / "train_masks").is_dir():
        ray_train.init_ray()  # nothing of the user's to check first: the photos are drawn in Ray tasks
    root = resolve_root(cfg)
    loaded = _load(cfg) if cfg.data.stream is False else None  # decoded and checked before Ray starts
    splits = None if loaded else splits_for(cfg, root, light=True)  # pairs and splits, nothing decoded
    weights = loaded[1] if loaded else ray_train.read_init(cfg)
    counts = loaded[0].summary if loaded else {"train": len(splits.train), "val": len(splits.val),
                                               "test": len(splits.test)}
    print(f"data: {root} ({counts['train']} train, {counts['val']} val, {counts['test']} test)")
    ray_train.init_ray()
    streams, line = stream.choose(cfg.data.stream, counts["train"] + counts["val"], cfg.data.image_size,
                                  stream.smallest_store())
    print(f"data: {line}")
    data = stream.streamed(splits, root, cfg.data.image_size) if streams else (
        loaded[0] if loaded else load_for(cfg, root))
    if alone:
        cfg = ray_train.alone(cfg, streams)
    gpus = ray_train.check_resources(cfg, streams)
    return cfg, _share(data, weights, gpus)


def _load(cfg: Config):
    from lfa_ray import ray_train
    from lfa_ray.data import load_for, resolve_root

    return load_for(cfg, resolve_root(cfg)), ray_train.read_init(cfg)


def _share(data, weights: Optional[dict], gpus: float) -> Setup:
    import ray

    from lfa_ray import ray_train
    from lfa_ray.stream import Streamed

    return Setup(data if isinstance(data, Streamed) else ray_train.share(data), gpus,
                 None if weights is None else ray.put(weights))


def fit(cfg: Config, setup: Setup, run_dir: Location, *, what: str, continue_with: str, fresh: bool = False,
        resume_from: Optional[Location] = None, label: str = "",
        track: Optional[Callable[[list[dict]], None]] = None) -> tuple[Location, Optional[Location]]:
    """Train ``cfg`` into ``run_dir`` (Ray continues its own checkpoints there; ``resume_from``: a
    checkpoint the workers start from instead), printing a line per epoch (``label`` first), and
    export the best checkpoint to ``run_dir/model.pt``. ``what`` names the run and ``continue_with``
    is the command that continues it, in the failure line (:func:`failed`); ``fresh``: this command
    made ``run_dir``; ``track``: given the run's ``metrics.csv`` rows as they grow
    (:meth:`lfa_ray.tracking.Run.epochs`). Returns the model file and the best checkpoint."""
    from lfa_ray import ray_train

    trainer = ray_train.make_trainer(cfg, data=setup.data, storage=run_dir.parent, name=run_dir.name,
                                     gpus_per_worker=setup.gpus, run_dir=run_dir.uri, init=setup.init,
                                     resume_from=resume_from.uri if resume_from is not None else None)
    try:
        result = run_trainer(trainer, EpochLines(run_dir, cfg.train.epochs, label, track))
    except BaseException as exc:  # noqa: BLE001 - one line for the user, whatever it was (failed())
        failed(exc, run_dir, what=what, continue_with=continue_with, fresh=fresh, retries=cfg.scaling.max_failures)
    best = best_checkpoint(result)
    return export_model(best, run_dir / MODEL_FILE), best


def failed(exc: BaseException, run_dir: Location, *, what: str, continue_with: str, fresh: bool,
           retries: int) -> NoReturn:
    """Raise the one line (:class:`Stopped` or :class:`UserError`) for a run of ``run_dir`` that
    ``exc`` ended; see the module's docstring."""
    kept = latest_checkpoint(run_dir) if run_dir.exists() else None
    if fresh and kept is None and run_dir.exists():
        run_dir.rmtree()  # nothing worth keeping; don't block a retry
    then = (f"continue it with: {continue_with}" if kept is not None or not fresh
            else "run the same command again (nothing was kept)")
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (lfa_ray.errors.stop_on_sigterm)
        raise Stopped(f"{what} stopped; {then}") from None
    if disk_full(exc):
        if run_dir.exists():
            drop_partial(run_dir, kept)
        raise UserError(f"disk full: no space left writing {run_dir}; free space there, then {then}") from None
    if isinstance(exc, UserError):  # lfa_ray's own, raised in this process: it names its fix
        raise exc
    if not isinstance(exc, Exception):
        raise exc
    # a worker's UserError (divergence) names its own fix; a dead worker may be retried by Ray itself
    hint = (" (scaling.max_failures > 0 restarts by itself)"
            if worker_error(exc) is None and kept is not None and not retries else "")
    raise UserError(f"{what} failed: {failure_line(exc)}; {then}{hint}") from None


def _worker_failures(exc: BaseException) -> list[BaseException]:
    """What each training worker raised, where ``exc`` is Ray Train's error for a failed run."""
    return list((getattr(exc, "worker_failures", None) or {}).values())


def worker_error(exc: BaseException) -> Optional[UserError]:
    """The UserError a training worker raised (e.g. divergence), if that is why the run failed."""
    return next((e for e in _worker_failures(exc) if isinstance(e, UserError)), None)


def disk_full(exc: BaseException) -> bool:
    """Whether a run failed for want of disk space (ENOSPC, wherever in the workers or Ray it arose)."""
    return any("No space left on device" in t or "[Errno 28]" in t
               for t in (str(exc), *map(str, _worker_failures(exc))))


def failure_line(exc: BaseException) -> str:
    """One line for a failed TorchTrainer run: a worker's own UserError as raised, else the first
    line of what failed (a dead worker, a crash)."""
    if (cause := worker_error(exc)) is not None:
        return str(cause)
    failures = _worker_failures(exc)
    err = failures[0] if failures else exc
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def train_refiner(cfg: Config, run_dir: Location, gpus: float, continue_with: str) -> Optional[Location]:
    """Train the refining model of a run of ``cfg`` into ``run_dir/refine/`` (:mod:`lfa_ray.refine`):
    the run's settings on crops around its photos' windows (:func:`lfa_ray.refine.refiner_config`),
    continuing its own checkpoints where it was cut short. Its ``model.pt``; None where the profile
    trains none (``refine.image_size`` null)."""
    from lfa_ray.data import resolve_root
    from lfa_ray.refine import crops_for, refiner_config

    if cfg.refine.image_size is None:
        return None
    out = run_dir / REFINE_DIR
    if (out / MODEL_FILE).is_file():
        return out / MODEL_FILE
    rcfg = refiner_config(cfg, crops_for(cfg, resolve_root(cfg)))
    data, weights = _load(rcfg)  # the crops, and the refining model of train.init_from's run
    setup = _share(data, weights, gpus)
    print(f"\ntraining the refining model ({rcfg.data.image_size} px, {rcfg.train.epochs} epochs on "
          f"{data.summary['train']} crops around the windows, {data.summary['val']} to validate) into {out}"
          + (f", starting from {rcfg.train.init_from}" if rcfg.train.init_from else ""))
    out.mkdir()
    dump_config(rcfg, out / "config.yaml")
    model, _ = fit(rcfg, setup, out, what="the refining model's training", continue_with=continue_with,
                   label="refining model ")
    return model


class EpochLines:
    """The driver's line per epoch of a run (``final epoch 3/23: val_dice 0.6120 (best 0.6120), ...``),
    read from the run's ``metrics.csv`` as its rank-0 worker writes it; only the epochs this attempt
    trains (rows written after it started). ``track`` is given every row read."""

    def __init__(self, run_dir: Location, epochs: int, label: str = "",
                 track: Optional[Callable[[list[dict]], None]] = None):
        self.metrics, self.epochs, self.label, self.track = run_dir / "metrics.csv", epochs, label, track
        self.since = time.time()
        self.every = 1.0 if run_dir.is_local else 5.0  # object storage: a GET per look
        self.looked = 0.0
        self.printed: set[int] = set()

    def poll(self, force: bool = False) -> None:
        from lfa_ray.runlog import read_metrics

        if not force and time.monotonic() - self.looked < self.every:
            return
        self.looked = time.monotonic()
        try:
            rows = read_metrics(self.metrics)
        except (OSError, ValueError, KeyError):  # not there yet, or caught mid-write: the next look
            return
        if self.track is not None:
            self.track(rows)
        for r in rows:
            e = int(r["epoch"])
            if r.get("time", 0) >= self.since and e not in self.printed:
                self.printed.add(e)
                print(f"{self.label}epoch {e}/{self.epochs}: val_dice {r['val_dice']:.4f} (best "
                      f"{r['best_val_dice']:.4f}), train_loss {r['train_loss']:.4f}, {r['epoch_seconds']:.1f}s, "
                      f"{r['images_per_second']:.0f} img/s", flush=True)


def run_trainer(trainer, lines: Optional[EpochLines] = None):
    """``trainer.fit()``, stoppable with Ctrl-C: it runs in a helper thread (so Ray Train's own
    SIGINT handler, which exits without a word, stays out); on Ctrl-C Ray is shut down, which
    stops the workers at once and keeps every checkpoint, and KeyboardInterrupt is raised.
    ``lines``: print each epoch meanwhile."""
    import ray

    box: dict = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="lfa_ray-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
            if lines is not None:
                lines.poll()
    except KeyboardInterrupt:
        ray.shutdown()
        raise
    if lines is not None:
        lines.poll(force=True)
    if "error" in box:
        raise box["error"]
    return box["result"]
