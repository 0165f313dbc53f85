"""``python -m lfa_ray.train``: one training run of a profile in a Ray TorchTrainer.

The run lives in ``<storage.path>/<name>/``: the resolved ``config.yaml``, Ray's
checkpoints (``checkpoint_epoch_NNNN/``), ``metrics.csv``, TensorBoard events and,
at the end, ``model.pt`` (the best checkpoint's weights, for inference).

An existing run name is never overwritten silently: ``--resume-from <run dir>``
continues that run from its latest checkpoint, ``--resume-from <checkpoint dir>``
starts a new run from a saved state, ``--reset`` deletes the run and starts again.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lfa_ray.config import Config, default_profile, dump_config, load_config
from lfa_ray.errors import Stopped, UserError, cli_entry
from lfa_ray.lock import RunLock
from lfa_ray.loop import STATE_FILE, load_state
from lfa_ray.storage import Location, locate


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="profile YAML (default: tune_configs/default.yaml)")
    parser.add_argument("--data", help="dataset folder (overrides data.path; default: synthetic cassettes)")
    parser.add_argument("--name", help="run name under storage.path (default: derived from the profile)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a profile key, e.g. --set train.lr=3e-4 (repeatable)")


def resolve_config(args: argparse.Namespace, base: Optional[Location] = None, base_raw: Optional[dict] = None,
                   where: str = "") -> Config:
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if base_raw is not None and not args.config:
        return load_config(None, overrides, raw=base_raw, where=where)
    return load_config(args.config or base, overrides)


def profile_stem(args: argparse.Namespace) -> str:
    path = args.config or default_profile()
    return Path(path).stem if path else "default"


def _checkpoints(run_dir: Location) -> list[Location]:
    return [c for c in run_dir.children() if c.name.startswith("checkpoint_epoch_")]


def is_run_dir(loc: Location) -> bool:
    return (loc / "config.yaml").is_file() and bool(_checkpoints(loc))


SNAPSHOT = "checkpoint_manager_snapshot.json"


def _read_snapshot(run_dir: Location) -> Optional[dict]:
    """Ray's record of a run's checkpoints; None when there is none or it was cut short (Ray
    rewrites it in place, so a machine lost at that moment leaves it empty)."""
    snapshot = run_dir / SNAPSHOT
    try:
        return json.loads(snapshot.read_text()) if snapshot.is_file() else None
    except ValueError:
        return None


def latest_checkpoint(run_dir: Location) -> Optional[Location]:
    """The latest checkpoint Ray registered for a run (the one it restores), if any.

    A folder copied by a run killed before it registered the checkpoint may be
    incomplete, so Ray's own snapshot decides; without a readable one (a folder
    copied by hand, or a snapshot cut short) it is the newest checkpoint whose
    state file loads.
    """
    snapshot = _read_snapshot(run_dir)
    if snapshot is not None:
        latest = snapshot.get("latest_checkpoint_result")
        return run_dir / latest["checkpoint_dir_name"] if latest else None
    for c in reversed(_checkpoints(run_dir)):
        try:
            load_state(c)
            return c
        except Exception:  # noqa: BLE001 - missing or partly copied state.pt: try the one before
            continue
    return None


def restorable(run_dir: Location) -> tuple[Optional[Location], Optional[dict]]:
    """The checkpoint a continued run starts from and its state: the latest Ray registered or, when
    that one does not load (cut short, corrupted, deleted), the newest older one that does, with one
    line saying so. None when the run has no checkpoint; a UserError when none of them loads."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None, None
    older = [c for c in reversed(_checkpoints(run_dir)) if c.name < latest.name]
    problem = None
    for c in [latest, *older]:
        try:
            state = load_state(c)
        except UserError as exc:
            problem = problem or str(exc).split(";")[0]
            continue
        if c is not latest:
            print(f"note: {problem}; continuing from the newest checkpoint that loads, {c.name}")
        return c, state
    raise UserError(f"{run_dir}: none of its checkpoints loads ({problem}); start the run again with --reset "
                    f"(deletes it) or under another --name")


def _ray_restores(run_dir: Location, start: Location) -> bool:
    """Whether Ray's own record of the run restores ``start`` (it is missing when the folder was
    copied by hand, empty when cut short, and names a broken checkpoint when that one was damaged)."""
    snapshot = _read_snapshot(run_dir) or {}
    latest = snapshot.get("latest_checkpoint_result")
    listed = [r["checkpoint_dir_name"] for r in snapshot.get("checkpoint_results", [])]
    # Ray refuses a record naming checkpoints that are gone (deleted by hand to free space)
    return (latest is not None and latest["checkpoint_dir_name"] == start.name
            and all((run_dir / name / STATE_FILE).is_file() for name in listed))


def _drop_partial(run_dir: Location, kept: Optional[Location]) -> None:
    """Remove checkpoint folders newer than the latest registered one: copies cut short."""
    for c in _checkpoints(run_dir) if run_dir.exists() else []:
        if kept is None or c.name > kept.name:
            c.rmtree()


def refuse_existing(run_dir: Location) -> None:
    if run_dir.exists() and run_dir.children():
        raise UserError(f"{run_dir} already exists; continue it with --resume-from {run_dir}, "
                        f"start it again with --reset, or pick another --name")


@dataclass
class Plan:
    cfg: Config
    run_dir: Location
    resume_from: Optional[Location]  # a checkpoint to start a new run from
    continuing: bool  # the run exists and Ray restores its latest checkpoint (or resume_from, if Ray's
    # record of its checkpoints was cut short)
    reset: bool


def plan(args: argparse.Namespace) -> Plan:
    """Work out what to run and check it all before anything is started or written."""
    source = locate(args.resume_from) if args.resume_from else None
    if source is not None and not source.exists():
        raise UserError(f"--resume-from {source}: not found; pass a run folder or a checkpoint_epoch_* folder")
    if source is not None and args.reset:
        raise UserError("--resume-from and --reset contradict each other; pass one of them")
    continuing_dir = source if source is not None and is_run_dir(source) else None
    if source is not None and continuing_dir is None and not (source / STATE_FILE).is_file():
        raise UserError(f"--resume-from {source}: neither a run folder (config.yaml + checkpoint_epoch_*) "
                        f"nor a checkpoint folder ({STATE_FILE}); pass one of those")

    state = None
    if continuing_dir is not None:
        cfg = resolve_config(args, base=continuing_dir / "config.yaml")  # the run's own settings
        start, state = restorable(continuing_dir)
    elif source is not None:
        state = load_state(source)
        cfg = resolve_config(args, base_raw=state["config"], where=f"{source}/{STATE_FILE}")
    else:
        cfg = resolve_config(args)
    if state is not None and state["progress"]["epoch"] >= cfg.train.epochs:
        raise UserError(f"--resume-from {source}: already trained {state['progress']['epoch']} epochs and "
                        f"train.epochs is {cfg.train.epochs}; raise it, e.g. --set train.epochs="
                        f"{state['progress']['epoch'] + 10}")
    if continuing_dir is not None and not args.name:
        run_dir = continuing_dir
    else:
        storage = locate(cfg.storage.path)
        storage.mkdir()  # fails here, before Ray starts, for a missing bucket or a read-only place
        run_dir = storage / (args.name or f"train-{profile_stem(args)}")

    continuing = continuing_dir is not None and continuing_dir.uri == run_dir.uri
    resume_from = None
    if source is not None and not continuing:
        resume_from = start if continuing_dir is not None else source
    if continuing and start is not None and not _ray_restores(run_dir, start):
        resume_from = start  # run() sets Ray's record aside; the workers start from this checkpoint
    if not continuing and not args.reset:
        refuse_existing(run_dir)
    return Plan(cfg, run_dir, resume_from, continuing, args.reset)


def run(p: Plan) -> Location:
    """Validate the data, start Ray, take the run's lock, train; returns the run folder."""
    from lfa_ray import ray_train
    from lfa_ray.data import load_for, resolve_root

    data = load_for(p.cfg, resolve_root(p.cfg))
    print(f"data: {data.root} ({data.summary['train']} train, {data.summary['val']} val, {data.summary['test']} test)")
    weights = ray_train.read_init(p.cfg)
    ray_train.init_ray()
    gpus = ray_train.check_resources(p.cfg)
    with RunLock(p.run_dir):
        if not (p.continuing or p.reset):
            refuse_existing(p.run_dir)  # again: another command may have made it since plan()
        return _train(p, data, weights, gpus)


def _train(p: Plan, data, weights, gpus: float) -> Location:
    import ray

    from lfa_ray import ray_train
    from lfa_ray.evaluate import format_summary, score_test

    if p.reset:
        p.run_dir.rmtree()
    created = not p.run_dir.exists()
    p.run_dir.mkdir()
    dump_config(p.cfg, p.run_dir / "config.yaml")
    if p.continuing and p.resume_from is not None and (p.run_dir / SNAPSHOT).exists():
        (p.run_dir / SNAPSHOT).unlink()  # not restorable: Ray starts a new record, from resume_from
    trainer = ray_train.make_trainer(p.cfg, data=ray_train.share(data), storage=p.run_dir.parent,
                                     name=p.run_dir.name, gpus_per_worker=gpus, run_dir=p.run_dir.uri,
                                     resume_from=p.resume_from.uri if p.resume_from else None,
                                     init=None if weights is None else ray.put(weights))
    try:
        result = ray_train.run_trainer(trainer)
    except BaseException as exc:
        kept = latest_checkpoint(p.run_dir)
        if created and kept is None:
            p.run_dir.rmtree()  # nothing worth keeping; don't block a retry
        if isinstance(exc, KeyboardInterrupt):
            raise Stopped(f"training stopped; continue it with: python -m lfa_ray.train --resume-from {p.run_dir}"
                          if kept is not None else "training stopped before its first checkpoint; nothing was "
                          "kept, run the same command again") from None
        if ray_train.user_error(exc) is not None:
            raise UserError(str(ray_train.user_error(exc))) from None
        if ray_train.disk_full(exc):
            _drop_partial(p.run_dir, kept)
            raise UserError(f"disk full: no space left writing {p.run_dir}; free space there, then "
                            + (f"continue with --resume-from {p.run_dir}" if kept is not None
                               else "run the same command again")) from None
        if isinstance(exc, Exception) and not isinstance(exc, UserError):
            then = (f"; continue from its latest checkpoint with --resume-from {p.run_dir}"
                    + ("" if p.cfg.scaling.max_failures else " (scaling.max_failures > 0 restarts by itself)")
                    if kept is not None else "")
            raise UserError(f"training failed: {ray_train.failure_line(exc)}{then}") from None
        raise
    best = ray_train.best_checkpoint(result)
    model = ray_train.export_model(best, p.run_dir / "model.pt")
    m = result.metrics or {}
    test = score_test(model, p.cfg, p.run_dir, int(m.get("epoch", 0)), again=True)
    print(f"\nrun {p.run_dir.name}: {int(m.get('epoch', 0))} epochs, best val_dice {m.get('best_val_dice', 0):.4f}")
    if test:
        print(f"  test split:      {format_summary(test)} ({p.run_dir / 'test'})")
    print(f"  best checkpoint: {best}")
    print(f"  inference model: {model}")
    print(f"  metrics:         {p.run_dir / 'metrics.csv'}")
    print(f"  tensorboard --logdir {p.run_dir}")
    return p.run_dir


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lfa-train", description="Train the LFA UNET with Ray Train.")
    add_common_args(parser)
    parser.add_argument("--resume-from", metavar="PATH",
                        help="a run folder to continue, or a checkpoint_epoch_* folder to start from")
    parser.add_argument("--reset", action="store_true", help="delete an existing run of this name and start fresh")
    args = parser.parse_args(argv)
    run(plan(args))


if __name__ == "__main__":
    raise SystemExit(main())
