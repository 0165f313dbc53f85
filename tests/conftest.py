"""Shared fixtures: small synthetic datasets written once per session, a real local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the user's cache, nor track to the user's MLflow server (tests that track start their own).
os.environ.setdefault("LFA_RAY_CACHE", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "lfa_ray"))
os.environ.pop("MLFLOW_TRACKING_URI", None)

from lfa_ray.synth import write_synthetic  # noqa: E402


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """120 synthetic cassettes in the original layout (window masks), of the classic family (close-ups
    of wide windows): small models learn them within a few epochs."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth120", 120, seed=7, family="classic")


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory) -> Path:
    """24 synthetic cassettes, for runs that only need to go through the motions."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth24", 24, seed=11, family="classic")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster with 2 CPUs, shared by the in-process tests."""
    import ray

    from lfa_ray.ray_train import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)


def pytest_collection_modifyitems(items):
    """An e2e test (a whole sweep or cluster) is slow too: ``-m "not slow"`` is the fast tier."""
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session, exitstatus):
    """A run that collected no tests is a failure, not a pass (pytest's exit code 5)."""
    if exitstatus == 5:
        session.exitstatus = 1
