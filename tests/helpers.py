"""Helpers the tests share (fixtures are in conftest.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lfa_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(data: Path, storage: Path, **extra) -> list[str]:
    """--set items for a seconds-long run: 32 px, narrow model, one CPU, no refining model (unless asked)."""
    items = {"data.path": str(data), "data.image_size": 32, "model.features": "[4,8]",
             "train.epochs": 2, "train.batch_size": 4, "train.lr": 1e-3, "train.checkpoint_every": 1,
             "scaling.cpus_per_worker": 1, "storage.path": str(storage), "refine.image_size": "null", **extra}
    return [f"{k}={v}" for k, v in items.items()]


def tiny_model(tmp_path: Path, data_dir: Path, **sets) -> tuple[Path, object]:
    """An untrained 32 px UNET saved as lfa_ray saves one (``tmp_path/model.pt``), its profile's data
    ``data_dir``; and that profile (``Config``) with ``sets`` applied."""
    import torch

    from lfa_ray.checkpoint import state_bytes
    from lfa_ray.model import UNet

    items = {"model.features": "[4,8]", "data.image_size": 32, "data.path": str(data_dir), **sets}
    cfg = load_config(None, [f"{k}={v}" for k, v in items.items()])
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    path.write_bytes(state_bytes({"model": UNet(features=[4, 8]).state_dict(), "config": cfg.to_dict()}))
    return path, cfg


def set_args(items: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` as command-line ``--set`` arguments."""
    return [arg for item in items for arg in ("--set", item)]


def error_line(capsys) -> str:
    """The single ``error: ...`` line a refused command printed, checking there was no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (Ray's workers have their own process groups)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after pid and (comm): state, ppid, pgrp, session
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def tiny_config(data: Path, storage: Path, **extra):
    return load_config(REPO / "tune_configs" / "default.yaml", tiny_overrides(data, storage, **extra))


def train_worker_ids(state: str | None = None) -> set[str]:
    """Ray Train worker actors of the Ray cluster this process joined (``state``: e.g. ALIVE)."""
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker")] + ([("state", "=", state)] if state else [])
    return {a.actor_id for a in list_actors(filters=filters, limit=10_000, raise_on_missing_output=False)}


def train_worker_pids() -> list[int]:
    """The processes of the live Ray Train workers of the Ray cluster this process joined."""
    from ray.util.state import list_actors

    return [a.pid for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                                       limit=10_000, raise_on_missing_output=False)]
