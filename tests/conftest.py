"""Shared fixtures: small synthetic datasets written once per session, a real local Ray cluster."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# Tests never touch the user's cache.
os.environ.setdefault("LFA_RAY_CACHE", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "lfa_ray"))

from lfa_ray.config import load_config  # noqa: E402
from lfa_ray.synth import write_synthetic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """120 synthetic cassettes in the seed layout (window masks)."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth120", 120, seed=7)


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory) -> Path:
    """24 synthetic cassettes, for runs that only need to go through the motions."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth24", 24, seed=11)


def tiny_overrides(data: Path, storage: Path, **extra) -> list[str]:
    """--set items for a seconds-long run: 32 px, narrow model, one CPU."""
    items = {"data.path": str(data), "data.image_size": 32, "model.features": "[4,8]",
             "train.epochs": 2, "train.batch_size": 4, "train.lr": 1e-3, "train.checkpoint_every": 1,
             "scaling.cpus_per_worker": 1, "storage.path": str(storage), **extra}
    return [f"{k}={v}" for k, v in items.items()]


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


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster with 2 CPUs, shared by the in-process tests."""
    import ray

    from lfa_ray.ray_train import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)


def pytest_sessionfinish(session, exitstatus):
    """A run that collected no tests is a failure, not a pass (pytest's exit code 5)."""
    if exitstatus == 5:
        session.exitstatus = 1
