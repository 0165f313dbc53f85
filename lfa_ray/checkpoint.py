"""Model files, in one place: a run's checkpoints (``state.pt``) and its inference model
(``model.pt``): writing them atomically, reading them as data only (``weights_only``), finding the
checkpoint to continue from and the best one, exporting the inference model, finding a model from
any ``--checkpoint`` form (sweep, run, checkpoint folder, file; local or a URI), ``train.init_from``
and the finite-weights check. No Ray here.

A run folder holds ``config.yaml``, ``checkpoint_epoch_NNNN/state.pt`` (model, optimizer,
scheduler, scaler, progress, config: what :func:`lfa_ray.loop.training_state` saves and
:func:`lfa_ray.loop.restore` loads), Ray's record of them (``checkpoint_manager_snapshot.json``),
``model.pt`` (the best checkpoint's weights, config and epoch) and ``refine/``, the run's refining
model, a run of its own. A sweep's model is its final retrain's, in ``final/``. How a ``train``
command starts is one :class:`Start`.
"""

from __future__ import annotations

import io
import json
from enum import Enum
from pathlib import Path
from typing import Optional

import torch

from lfa_ray.errors import UserError
from lfa_ray.model import UNet
from lfa_ray.storage import Location, locate, on_filesystem

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"  # a run's inference model (export_model)
FINAL = "final"  # a sweep's final retrain: a run inside the sweep's folder
REFINE_DIR = "refine"  # a run's refining model: a training run of its own inside the run folder
SNAPSHOT = "checkpoint_manager_snapshot.json"


class Start(Enum):
    """How a ``train`` command starts."""
    NEW = "new"  # a new run folder
    CONTINUE = "continue"  # the run exists: Ray restores its latest checkpoint (or ``Plan.checkpoint``)
    FROM_CHECKPOINT = "from checkpoint"  # a new run whose workers start from ``Plan.checkpoint``
    RESET = "reset"  # the existing run folder is deleted, then as NEW


def checkpoint_dir_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch:04d}"


def state_bytes(obj: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_state(state: dict, directory) -> Location:
    """Write ``state`` to ``directory/state.pt`` atomically (a local folder or a URI)."""
    return (locate(directory) / STATE_FILE).write_bytes(state_bytes(state))


def load_state(directory, device: torch.device | str = "cpu") -> dict:
    """``directory/state.pt`` (a local folder or a URI), read as data only (``weights_only``): a
    file that would run code when unpickled, or any other unreadable one, is refused with its name."""
    file = locate(directory) / STATE_FILE
    try:
        return torch.load(io.BytesIO(file.read_bytes()), map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types (struct.error for junk bytes)
        raise UserError(f"{file}: not a checkpoint lfa_ray can load ({type(exc).__name__}); lfa_ray reads only "
                        f"the tensors and plain values it writes, never code") from None


def checkpoints(run_dir: Location) -> list[Location]:
    return [c for c in run_dir.children() if c.name.startswith("checkpoint_epoch_")]


def is_run_dir(loc: Location) -> bool:
    return (loc / "config.yaml").is_file() and bool(checkpoints(loc))


def read_snapshot(run_dir: Location) -> Optional[dict]:
    """Ray's record of a run's checkpoints; None when there is none or it was cut short (Ray
    rewrites it in place, so a machine lost at that moment leaves it empty).

    Read as the file it is: Ray's public reader (``ray.train.Result.from_path``) refuses a record
    that names a checkpoint gone missing, which is exactly the record lfa_ray must read to say which
    checkpoint was lost and to continue from the one before it."""
    snapshot = run_dir / SNAPSHOT
    try:
        return json.loads(snapshot.read_text()) if snapshot.is_file() else None
    except ValueError:
        return None


def latest_checkpoint(run_dir: Location | str) -> Optional[Location]:
    """The latest checkpoint Ray registered for a run (the one it restores), if any.

    A folder copied by a run killed before it registered the checkpoint may be
    incomplete, so Ray's own record decides; without a readable one (a folder
    copied by hand, or a record cut short) it is the newest checkpoint whose
    state file loads.
    """
    run_dir = locate(run_dir)
    snapshot = read_snapshot(run_dir)
    if snapshot is not None:
        latest = snapshot.get("latest_checkpoint_result")
        return run_dir / latest["checkpoint_dir_name"] if latest else None
    return _newest_loadable(run_dir)[0]


def _newest_loadable(run_dir: Location) -> tuple[Optional[Location], Optional[dict]]:
    """The newest checkpoint whose state file loads, and its state (None, None: none does)."""
    for c in reversed(checkpoints(run_dir)):
        try:
            return c, load_state(c)
        except Exception:  # noqa: BLE001 - missing or partly copied state.pt: try the one before
            continue
    return None, None


def restorable(run_dir: Location) -> tuple[Optional[Location], Optional[dict]]:
    """The checkpoint a continued run starts from and its state: the latest Ray registered or, when
    that one does not load (cut short, corrupted, deleted), the newest older one that does, with one
    line saying so. None when the run has no checkpoint; a UserError when none of them loads."""
    if read_snapshot(run_dir) is None:  # no record of Ray's: the newest that loads, loaded once
        return _newest_loadable(run_dir)
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None, None
    older = [c for c in reversed(checkpoints(run_dir)) if c.name < latest.name]
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


def ray_restores(run_dir: Location, start: Location) -> bool:
    """Whether Ray's own record of the run restores ``start`` (it is missing when the folder was
    copied by hand, empty when cut short, and names a broken checkpoint when that one was damaged)."""
    snapshot = read_snapshot(run_dir) or {}
    latest = snapshot.get("latest_checkpoint_result")
    listed = [r["checkpoint_dir_name"] for r in snapshot.get("checkpoint_results", [])]
    # Ray refuses a record naming checkpoints that are gone (deleted by hand to free space)
    return (latest is not None and latest["checkpoint_dir_name"] == start.name
            and all((run_dir / name / STATE_FILE).is_file() for name in listed))


def drop_partial(run_dir: Location, kept: Optional[Location]) -> None:
    """Remove checkpoint folders newer than the latest registered one: copies cut short."""
    for c in checkpoints(run_dir) if run_dir.exists() else []:
        if kept is None or c.name > kept.name:
            c.rmtree()


def best_checkpoint(result) -> Optional[Location]:
    """Where the best (val_dice) checkpoint of a finished TorchTrainer run is."""
    if result.best_checkpoints:
        best, _ = max(result.best_checkpoints, key=lambda cm: cm[1].get("val_dice", float("-inf")))
    else:
        best = result.checkpoint
    return on_filesystem(best.filesystem, best.path) if best else None


def export_model(checkpoint: Location, out: Location) -> Location:
    """Write the inference model (weights, config, metrics epoch) from a checkpoint to ``out`` atomically."""
    state = load_state(checkpoint)
    bad = nonfinite(state["model"])
    if bad:
        raise UserError(f"{checkpoint}: weights {bad} are not finite (the run diverged); no model exported")
    return out.write_bytes(state_bytes({"model": state["model"], "config": state["config"],
                                        "progress": state["progress"], "checkpoint": checkpoint.uri}))


# -- inference models (model.pt) ------------------------------------------------------------------

def nonfinite(weights: dict) -> Optional[str]:
    """The name of the first floating-point tensor in ``weights`` holding a NaN or inf, or None."""
    return next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)


def find_model(path: str | Path | Location) -> Location:
    """The weights file behind any of the accepted ``--checkpoint`` forms."""
    path = locate(path)
    for candidate in (path / FINAL / MODEL_FILE, path / MODEL_FILE, path / STATE_FILE, path):
        if candidate.is_file():
            return candidate
    raise UserError(f"--checkpoint {path}: no model here; pass a sweep or run folder (with model.pt), "
                    f"a model.pt file or a checkpoint_epoch_* folder")


def load_model(path: str | Path | Location, device: torch.device) -> tuple[UNet, int, dict]:
    """The UNET, its training image size and the profile it was trained with (``Config.to_dict()``)."""
    file = find_model(path)
    try:
        # weights_only: tensors and plain values; a file that would run code when unpickled is refused
        state = torch.load(io.BytesIO(file.read_bytes()), map_location=device, weights_only=True)
        cfg = state["config"]
        model = UNet(features=cfg["model"]["features"])
        model.load_state_dict(state["model"])
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types (struct.error for junk bytes)
        raise UserError(f"{file}: not an lfa_ray model ({type(exc).__name__}); pass a model.pt or checkpoint "
                        f"written by lfa_ray (only tensors and plain values are read, never code)") from None
    bad = nonfinite(state["model"])
    if bad:
        raise UserError(f"{file}: weights {bad} are not finite (saved by a run that diverged); pick another model")
    return model.to(device).eval(), int(cfg["data"]["image_size"]), cfg


def init_weights(path: str, features: list[int]) -> dict:
    """``train.init_from``: the weights of the model at ``path`` (any ``--checkpoint`` form, local or a
    URI) for a UNET of ``features``; another architecture is refused."""
    file = find_model(path)
    model, _, trained = load_model(file, torch.device("cpu"))
    if list(trained["model"]["features"]) != list(features):
        raise UserError(f"train.init_from {file}: that UNET has model.features {trained['model']['features']} but "
                        f"this profile has {list(features)}; set model.features to match or drop train.init_from")
    return model.state_dict()


def own_refiner(model: Location) -> Optional[Location]:
    """The refining model trained beside a window model file (``RUN/refine/model.pt`` for
    ``RUN/model.pt``), if there is one."""
    candidate = model.parent / REFINE_DIR / MODEL_FILE
    return candidate if candidate.is_file() else None
