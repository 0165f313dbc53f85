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

from lfa_ray import runs, tracking
from lfa_ray.checkpoint import (
    MODEL_FILE,
    REFINE_DIR,
    SNAPSHOT,
    STATE_FILE,
    Start,
    is_run_dir,
    load_state,
    ray_restores,
    restorable,
)
from lfa_ray.config import Config, ProfileChoice, dump_config, profile_stem, resolve
from lfa_ray.errors import UserError
from lfa_ray.lock import RunLock
from lfa_ray.storage import Location, locate


def refuse_existing(run_dir: Location) -> None:
    runs.refuse_existing(run_dir, f"continue it with --resume-from {run_dir}, start it again with --reset")


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
            and (continuing_dir / MODEL_FILE).is_file() and not (continuing_dir / REFINE_DIR / MODEL_FILE).is_file()):
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
    tracking.check(p.cfg)  # before Ray starts
    cfg, setup = runs.prepare(p.cfg, alone=True)  # the run has the cluster to itself
    p = dataclasses.replace(p, cfg=cfg)
    with RunLock(p.run_dir):
        if p.start in (Start.NEW, Start.FROM_CHECKPOINT):
            refuse_existing(p.run_dir)  # again: another command may have made it since plan()
        if p.refine_only:
            with tracking.Tracking(p.cfg, p.run_dir).run(p.run_dir, p.cfg, kind="train", resume=True) as tracked:
                _refine_and_report(p, p.run_dir / MODEL_FILE, setup.gpus, tracked)
            return p.run_dir
        return _train(p, setup)


def continue_command(run_dir: Location) -> str:
    return f"python -m lfa_ray.train --resume-from {run_dir}"


def _train(p: Plan, setup: runs.Setup) -> Location:
    if p.start is Start.RESET:
        p.run_dir.rmtree()
    created = not p.run_dir.exists()
    p.run_dir.mkdir()
    dump_config(p.cfg, p.run_dir / "config.yaml")
    if p.start is Start.CONTINUE and p.checkpoint is not None and (p.run_dir / SNAPSHOT).exists():
        (p.run_dir / SNAPSHOT).unlink()  # not restorable: Ray starts a new record, from p.checkpoint
    with tracking.Tracking(p.cfg, p.run_dir).run(p.run_dir, p.cfg, kind="train",
                                                 resume=p.start is Start.CONTINUE) as tracked:
        model, best = runs.fit(p.cfg, setup, p.run_dir, what="training", continue_with=continue_command(p.run_dir),
                               fresh=created, resume_from=p.checkpoint, track=tracked.epochs)
        _refine_and_report(p, model, setup.gpus, tracked, best)
    return p.run_dir


def _refine_and_report(p: Plan, model: Location, gpus: float, tracked: tracking.Run,
                       best: Optional[Location] = None) -> None:
    """Train the run's refining model, score the run on its test split, print where everything is."""
    from lfa_ray.evaluate import format_summary, score_test
    from lfa_ray.runlog import read_metrics

    refiner = runs.train_refiner(p.cfg, p.run_dir, gpus, continue_command(p.run_dir))
    rows = read_metrics(p.run_dir / "metrics.csv")
    m = rows[-1] if rows else {}
    test = score_test(model, p.cfg, p.run_dir, int(m.get("epoch", 0)), again=True)
    tracked.finish(p.run_dir, model, test)
    print(f"\nrun {p.run_dir.name}: {int(m.get('epoch', 0))} epochs, best val_dice {m.get('best_val_dice', 0):.4f}")
    if test:
        print(f"  test split:      {format_summary(test)} ({p.run_dir / 'test'})")
    if best is not None:
        print(f"  best checkpoint: {best}")
    print(f"  inference model: {model}" + (f", refined by {refiner}" if refiner else ""))
    print(f"  metrics:         {p.run_dir / 'metrics.csv'}")
    print(f"  tensorboard --logdir {p.run_dir}")
