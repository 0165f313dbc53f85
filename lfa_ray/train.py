"""``python -m lfa_ray.train``: one training run of a profile in a Ray TorchTrainer.

The run lives in ``<storage.path>/<name>/``: the resolved ``config.yaml``, Ray's
checkpoints (``checkpoint_epoch_NNNN/``), ``metrics.csv``, TensorBoard events and,
at the end, ``model.pt`` (the best checkpoint's weights, for inference). Then, unless
``refine.image_size`` is null, the run's refining model (:mod:`lfa_ray.refine`) is trained into
``refine/``, a training run of its own on crops around the windows of the run's photos.

An existing run name is never overwritten silently: ``--resume-from <run dir>``
continues that run from its latest checkpoint, ``--resume-from <checkpoint dir>``
starts a new run from a saved state, ``--reset`` deletes the run and starts again.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m lfa_ray.train: the command, run before this copy defines anything,
    from lfa_ray.cli import train  # so the module's state exists once (as lfa_ray.train)

    raise SystemExit(train())

import dataclasses
from dataclasses import dataclass
from typing import Optional

from lfa_ray.checkpoint import (
    SNAPSHOT,
    STATE_FILE,
    Start,
    best_checkpoint,
    drop_partial,
    export_model,
    is_run_dir,
    latest_checkpoint,
    load_state,
    ray_restores,
    restorable,
)
from lfa_ray.config import Config, ProfileChoice, dump_config, profile_stem, resolve
from lfa_ray.errors import Stopped, UserError
from lfa_ray.lock import RunLock
from lfa_ray.refine import REFINE_DIR
from lfa_ray.storage import Location, locate


def refuse_existing(run_dir: Location) -> None:
    if run_dir.exists() and run_dir.children():
        raise UserError(f"{run_dir} already exists; continue it with --resume-from {run_dir}, "
                        f"start it again with --reset, or pick another --name")


@dataclass
class Plan:
    cfg: Config
    run_dir: Location
    start: Start
    # the checkpoint the workers load: FROM_CHECKPOINT's, or CONTINUE's when Ray's own record of the
    # run cannot restore it (cut short, naming a damaged or deleted checkpoint); else None
    checkpoint: Optional[Location] = None
    refine_only: bool = False  # the window model is done: train (or continue) only the refining model


def plan(choice: ProfileChoice, name: Optional[str] = None, resume_from: Optional[str] = None,
         reset: bool = False) -> Plan:
    """Work out what to run and check it all before anything is started or written: the profile
    ``choice``, the run ``name`` (default ``train-<profile>``), ``resume_from`` (a run folder to
    continue or a checkpoint folder to start from), ``reset`` (delete the run and start again)."""
    source = locate(resume_from) if resume_from else None
    if source is not None and not source.exists():
        raise UserError(f"--resume-from {source}: not found; pass a run folder or a checkpoint_epoch_* folder")
    if source is not None and reset:
        raise UserError("--resume-from and --reset contradict each other; pass one of them")
    continuing_dir = source if source is not None and is_run_dir(source) else None
    if source is not None and continuing_dir is None and not (source / STATE_FILE).is_file():
        raise UserError(f"--resume-from {source}: neither a run folder (config.yaml + checkpoint_epoch_*) "
                        f"nor a checkpoint folder ({STATE_FILE}); pass one of those")

    state = None
    if continuing_dir is not None:
        cfg = resolve(choice, base=continuing_dir / "config.yaml")  # the run's own settings
        start, state = restorable(continuing_dir)
    elif source is not None:
        state = load_state(source)
        cfg = resolve(choice, base_raw=state["config"], where=f"{source}/{STATE_FILE}")
    else:
        cfg = resolve(choice)
    if (continuing_dir is not None and not name and cfg.refine.image_size is not None
            and (continuing_dir / "model.pt").is_file() and not (continuing_dir / REFINE_DIR / "model.pt").is_file()):
        return Plan(cfg, continuing_dir, Start.CONTINUE, refine_only=True)  # cut short in its refining model
    if state is not None and state["progress"]["epoch"] >= cfg.train.epochs:
        raise UserError(f"--resume-from {source}: already trained {state['progress']['epoch']} epochs and "
                        f"train.epochs is {cfg.train.epochs}; raise it, e.g. --set train.epochs="
                        f"{state['progress']['epoch'] + 10}")
    if continuing_dir is not None and not name:
        run_dir = continuing_dir
    else:
        storage = locate(cfg.storage.path)
        storage.mkdir()  # fails here, before Ray starts, for a missing bucket or a read-only place
        run_dir = storage / (name or f"train-{profile_stem(choice)}")

    if continuing_dir is not None and continuing_dir.uri == run_dir.uri:
        # run() sets Ray's record aside when it cannot restore ``start``; the workers start from it
        return Plan(cfg, run_dir, Start.CONTINUE, None if start is None or ray_restores(run_dir, start) else start)
    if reset:
        return Plan(cfg, run_dir, Start.RESET)
    refuse_existing(run_dir)
    if source is not None:  # a new run from a checkpoint (of another run, or a checkpoint folder)
        return Plan(cfg, run_dir, Start.FROM_CHECKPOINT, start if continuing_dir is not None else source)
    return Plan(cfg, run_dir, Start.NEW)


def run(p: Plan) -> Location:
    """Validate the data, start Ray, take the run's lock, train; returns the run folder."""
    from lfa_ray import ray_train
    from lfa_ray.data import load_for, resolve_root

    data = load_for(p.cfg, resolve_root(p.cfg))
    print(f"data: {data.root} ({data.summary['train']} train, {data.summary['val']} val, {data.summary['test']} test)")
    weights = ray_train.read_init(p.cfg)
    ray_train.init_ray()
    p = dataclasses.replace(p, cfg=ray_train.alone(p.cfg))  # the run has the cluster to itself
    gpus = ray_train.check_resources(p.cfg)
    with RunLock(p.run_dir):
        if p.start in (Start.NEW, Start.FROM_CHECKPOINT):
            refuse_existing(p.run_dir)  # again: another command may have made it since plan()
        if p.refine_only:
            _refine_and_report(p, p.run_dir / "model.pt", gpus)
            return p.run_dir
        return _train(p, data, weights, gpus)


def _train(p: Plan, data, weights, gpus: float) -> Location:
    import ray

    from lfa_ray import ray_train

    if p.start is Start.RESET:
        p.run_dir.rmtree()
    created = not p.run_dir.exists()
    p.run_dir.mkdir()
    dump_config(p.cfg, p.run_dir / "config.yaml")
    if p.start is Start.CONTINUE and p.checkpoint is not None and (p.run_dir / SNAPSHOT).exists():
        (p.run_dir / SNAPSHOT).unlink()  # not restorable: Ray starts a new record, from p.checkpoint
    trainer = ray_train.make_trainer(p.cfg, data=ray_train.share(data), storage=p.run_dir.parent,
                                     name=p.run_dir.name, gpus_per_worker=gpus, run_dir=p.run_dir.uri,
                                     resume_from=p.checkpoint.uri if p.checkpoint else None,
                                     init=None if weights is None else ray.put(weights))
    try:
        result = ray_train.run_trainer(trainer, ray_train.EpochLines(p.run_dir, p.cfg.train.epochs))
    except BaseException as exc:
        kept = latest_checkpoint(p.run_dir)
        if created and kept is None:
            p.run_dir.rmtree()  # nothing worth keeping; don't block a retry
        if isinstance(exc, KeyboardInterrupt):
            raise Stopped(f"training stopped; continue it with: python -m lfa_ray.train --resume-from {p.run_dir}"
                          if kept is not None else "training stopped before its first checkpoint; nothing was "
                          "kept, run the same command again") from None
        if (cause := ray_train.user_error(exc)) is not None:
            raise UserError(str(cause)) from None
        if ray_train.disk_full(exc):
            drop_partial(p.run_dir, kept)
            raise UserError(f"disk full: no space left writing {p.run_dir}; free space there, then "
                            + (f"continue with --resume-from {p.run_dir}" if kept is not None
                               else "run the same command again")) from None
        if isinstance(exc, Exception) and not isinstance(exc, UserError):
            then = (f"; continue from its latest checkpoint with --resume-from {p.run_dir}"
                    + ("" if p.cfg.scaling.max_failures else " (scaling.max_failures > 0 restarts by itself)")
                    if kept is not None else "")
            raise UserError(f"training failed: {ray_train.failure_line(exc)}{then}") from None
        raise
    best = best_checkpoint(result)
    model = export_model(best, p.run_dir / "model.pt")
    _refine_and_report(p, model, gpus, best)
    return p.run_dir


def _refine_and_report(p: Plan, model: Location, gpus: float, best: Optional[Location] = None) -> None:
    """Train the run's refining model, score the run on its test split, print where everything is."""
    from lfa_ray.evaluate import format_summary, score_test
    from lfa_ray.runlog import read_metrics

    refiner = train_refiner(p.cfg, p.run_dir, gpus, f"python -m lfa_ray.train --resume-from {p.run_dir}")
    rows = read_metrics(p.run_dir / "metrics.csv")
    m = rows[-1] if rows else {}
    test = score_test(model, p.cfg, p.run_dir, int(m.get("epoch", 0)), again=True)
    print(f"\nrun {p.run_dir.name}: {int(m.get('epoch', 0))} epochs, best val_dice {m.get('best_val_dice', 0):.4f}")
    if test:
        print(f"  test split:      {format_summary(test)} ({p.run_dir / 'test'})")
    if best is not None:
        print(f"  best checkpoint: {best}")
    print(f"  inference model: {model}" + (f", refined by {refiner}" if refiner else ""))
    print(f"  metrics:         {p.run_dir / 'metrics.csv'}")
    print(f"  tensorboard --logdir {p.run_dir}")


def train_refiner(cfg: Config, run_dir: Location, gpus: float, resume_hint: str) -> Optional[Location]:
    """Train the refining model of a run of ``cfg`` into ``run_dir/refine/`` (:mod:`lfa_ray.refine`):
    the run's settings on crops around its photos' windows (:func:`lfa_ray.refine.refiner_config`),
    continuing its own checkpoints where it was cut short. Its ``model.pt``; None where the profile
    trains none (``refine.image_size`` null)."""
    import ray

    from lfa_ray import ray_train
    from lfa_ray.data import load_for, resolve_root
    from lfa_ray.refine import crops_for, refiner_config

    if cfg.refine.image_size is None:
        return None
    out = run_dir / REFINE_DIR
    if (out / "model.pt").is_file():
        return out / "model.pt"
    rcfg = refiner_config(cfg, crops_for(cfg, resolve_root(cfg)))
    data = load_for(rcfg, rcfg.data.path)
    weights = ray_train.read_init(rcfg)
    print(f"\ntraining the refining model ({rcfg.data.image_size} px, {rcfg.train.epochs} epochs on "
          f"{data.summary['train']} crops around the windows, {data.summary['val']} to validate) into {out}"
          + (f", starting from {rcfg.train.init_from}" if rcfg.train.init_from else ""))
    out.mkdir()
    dump_config(rcfg, out / "config.yaml")
    trainer = ray_train.make_trainer(rcfg, data=ray_train.share(data), storage=run_dir, name=REFINE_DIR,
                                     run_dir=out.uri, gpus_per_worker=gpus,
                                     init=None if weights is None else ray.put(weights))
    try:
        result = ray_train.run_trainer(trainer, ray_train.EpochLines(out, rcfg.train.epochs, "refining model "))
    except KeyboardInterrupt:
        raise Stopped(f"the refining model's training stopped; continue it with: {resume_hint}") from None
    except Exception as exc:  # noqa: BLE001 - one line, whatever the workers raised
        if isinstance(exc, UserError):
            raise
        raise UserError(f"training the refining model failed: {ray_train.failure_line(exc)}; continue it with: "
                        f"{resume_hint}") from None
    return export_model(best_checkpoint(result), out / "model.pt")

