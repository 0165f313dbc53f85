"""Helpers the tests share (fixtures are in conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
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


class MLflowServer:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, artifacts in ``root``), stoppable and
    startable again on the same port and database (a server lost mid-run and back)."""

    def __init__(self, root: Path):
        self.root = root
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> "MLflowServer":
        import urllib.request

        mlflow = Path(sys.executable).parent / "mlflow"
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--default-artifact-root", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "ab"), start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job runner processes
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not answer within 90 s")

    def stop(self) -> None:
        if self.proc is not None:
            kill_session(self.proc.pid)
            self.proc.wait()
            self.proc = None

    def runs(self, experiment: str) -> list:
        """Every run of ``experiment``, read back through MLflow's client."""
        from mlflow import MlflowClient

        client = MlflowClient(self.uri)
        found = client.get_experiment_by_name(experiment)
        return client.search_runs([found.experiment_id], max_results=1000) if found else []


def wandb_records(run_file: Path) -> list:
    """The records of a W&B run file (``run-<id>.wandb``, written offline): LevelDB's log format after
    a 7-byte header, each record a ``wandb_internal_pb2.Record``; a record cut short by a killed
    process ends the list."""
    from wandb.proto import wandb_internal_pb2

    data, block, records, parts = run_file.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B", run_file
    pos = 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if kind == 0 or pos + 7 + length > len(data):
            break
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def wandb_run(folder: Path) -> dict:
    """What the offline W&B runs under ``folder`` recorded, merged by run id: project, group, config,
    history (step -> values) and summary."""
    def items(updates) -> dict:
        return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in updates}

    runs: dict = {}
    for run_file in sorted(folder.rglob("offline-run-*/run-*.wandb")):
        for r in wandb_records(run_file):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run = runs.setdefault(r.run.run_id, {"history": {}, "config": {}, "summary": {}})
                run.update(project=r.run.project, group=r.run.run_group, name=r.run.display_name)
                run["config"].update(items(r.run.config.update))
            elif kind == "history":
                run["history"].setdefault(r.history.step.num, {}).update(items(r.history.item))
            elif kind == "summary":
                run["summary"].update(items(r.summary.update))
            elif kind == "config":
                run["config"].update(items(r.config.update))
    return runs
