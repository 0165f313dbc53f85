"""The cloud path: cluster.yaml against Ray's own schema, the cloud profile, and a real two-node
Ray cluster on loopback that runs a sweep submitted with ``ray job submit``.

A cloud account cannot exist here, so ``ray up`` itself is not run against AWS; everything it reads
from cluster.yaml is checked by the autoscaler's validation, and the cluster it would start is
made real with two ``ray start`` nodes on this machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lfa_ray.config import load_config

from helpers import REPO, set_args, tiny_overrides


def _cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[\[=<>]", d)[0]: d.split("==")[1] for d in deps if "==" in d}


def test_cluster_yaml_passes_rays_own_validation():
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_cluster_yaml()))
    broken = _cluster_yaml()
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "two"
    with pytest.raises(ValidationError):  # the check is real
        validate_config(prepare_config(broken))


def test_cluster_versions_match_pyproject():
    cluster, pins = _cluster_yaml(), _pins()
    import ray
    import torch

    assert pins["ray"] == ray.__version__ and torch.__version__.startswith(pins["torch"])
    image = cluster["docker"]["image"]
    assert image == f"rayproject/ray:{pins['ray']}-py311-gpu", image
    # The nodes install this very package (mounted from the project root), so every pin is pyproject's.
    mount = next(remote for remote, local in cluster["file_mounts"].items() if local == ".")
    assert cluster["setup_commands"] == [f"pip install -e {mount}"]
    assert all(re.fullmatch(r"[\w\-.\[\],]+==[\w.+]+", d) for d in
               tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    no_secrets = (REPO / "cluster.yaml").read_text()
    assert not re.search(r"(?i)aws_(secret_)?access_key|AKIA[0-9A-Z]{16}", no_secrets)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync (.ci/run installs it)")
def test_ray_up_copies_the_project_without_venv_results_or_git(tmp_path):
    """The rsync command `ray up` runs for file_mounts (Ray's own argument builder), run locally on a
    checkout as it looks after use."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    project = tmp_path / "project"
    keep = ["pyproject.toml", "lfa_ray/tune.py", "tune_configs/cloud.yaml", "README.md"]
    junk = [".git/HEAD", ".venv/lib/torch.so", "results/tune-x/trial_001/state.pt", "lfa_ray/__pycache__/x.pyc",
            "lfa_ray.egg-info/PKG-INFO", ".pytest_cache/v", ".gpu/site.tar.xz"]
    for name in keep + junk:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(name)
    cluster = _cluster_yaml()
    rules = SSHCommandRunner._create_rsync_filter_args(None, {k: cluster.get(k) for k in
                                                              ("rsync_exclude", "rsync_filter")})
    subprocess.run(["rsync", "-a", *rules, f"{project}/", str(tmp_path / "node")], check=True)
    copied = {p.relative_to(tmp_path / "node").as_posix() for p in (tmp_path / "node").rglob("*") if p.is_file()}
    assert copied == set(keep)


def test_cloud_profile_fits_the_cluster():
    cfg = load_config(REPO / "tune_configs" / "cloud.yaml")
    cluster = _cluster_yaml()
    assert cfg.storage.path.startswith("s3://") and cfg.data.path.startswith("s3://")
    assert cfg.data.path.endswith(".parquet")  # a packed dataset
    gpu_workers = cluster["available_node_types"]["gpu_worker"]["max_workers"]
    assert cfg.scaling.use_gpu and cfg.tune.max_concurrent_trials == gpu_workers
    assert cfg.scaling.cpus_per_worker < 4  # g5.xlarge: 4 vCPUs, one left to Ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_node_loopback_cluster_runs_a_submitted_sweep_on_both_nodes(small_dir, tmp_path):
    port, dash, client = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_API_SERVER_ADDRESS", None)
    ray_cli = str(Path(sys.executable).parent / "ray")
    temp = Path("/tmp") / f"lfa2n-{secrets.token_hex(3)}"  # Ray's socket paths must stay short

    def ray(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([ray_cli, *args], env=env, capture_output=True, text=True, timeout=kw.pop("timeout", 180),
                              **kw)

    head = ray("start", "--head", f"--port={port}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
               "--num-cpus=1", f"--temp-dir={temp}", "--include-dashboard=true",
               f"--dashboard-agent-listen-port={_free_port()}")
    try:
        assert head.returncode == 0, head.stdout + head.stderr
        node2 = ray("start", f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"node2": 1}',
                    # its own temp dir: sharing the head's, its runtime-env agent deletes the job's
                    # working_dir package (the driver's cwd) when its own workers are done with it
                    f"--temp-dir={temp}-node2", f"--dashboard-agent-listen-port={_free_port()}")
        assert node2.returncode == 0, node2.stdout + node2.stderr
        storage = tmp_path / "results"
        sets = set_args(tiny_overrides(small_dir, storage, **{
            "tune.num_samples": 2, "tune.max_concurrent_trials": 2, "tune.scheduler.max_t": 2,
            "tune.scheduler.grace_period": 2, "final.epochs": 2}))
        for _ in range(30):  # the head's job agent needs a few seconds after `ray start`
            job = ray("job", "submit", f"--address=http://127.0.0.1:{dash}", f"--working-dir={REPO}", "--",
                      sys.executable, "-m", "lfa_ray.tune", "--name", "twonode", *sets, timeout=600)
            if "No available agent" not in job.stderr:
                break
            time.sleep(1)
        (tmp_path / "job.log").write_text(job.stdout + job.stderr)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
        assert "succeeded" in job.stdout + job.stderr
        exp = storage / "twonode"
        assert len(pd.read_parquet(exp / "trials.parquet")) == 2 and (exp / "final" / "model.pt").is_file()

        workers = ray("list", "actors", f"--address=http://127.0.0.1:{dash}", "--filter", "class_name=RayTrainWorker",
                      "--detail", "--format=json", "--limit=100")
        assert workers.returncode == 0, workers.stderr
        nodes = {a["node_id"] for a in json.loads(workers.stdout)}
        assert len(nodes) == 2, nodes  # the two concurrent trials' workers: one on each node
    finally:
        left = _stop_cluster(temp)  # matches {temp}-node2 too
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(f"{temp}-node2", ignore_errors=True)
    assert not left, left


def _stop_cluster(temp: Path) -> list[int]:
    """Stop both nodes: every process whose command line names ``temp`` (GCS, raylets, dashboard,
    monitors) and their children (workers, agents), and no other Ray on this machine."""
    import psutil

    procs = set()
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(temp) in " ".join(p.info["cmdline"] or []):
                procs.update([p, *p.children(recursive=True)])
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    return [p.pid for p in psutil.wait_procs(alive, timeout=5)[1]]
