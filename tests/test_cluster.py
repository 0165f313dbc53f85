"""The cloud path: cluster.yaml against Ray's own schema, the cloud profile, a real two-node Ray
cluster on loopback that runs a sweep submitted with ``ray job submit``, and ``ray up`` / ``ray exec``
/ ``ray down`` of cluster.yaml's local-provider twin over SSH.

A cloud account cannot exist here, so ``ray up`` is not run against AWS; everything it reads from
cluster.yaml is checked by the autoscaler's validation, the cluster it would start is made real with
two ``ray start`` nodes on this machine, and the launcher itself runs cluster.yaml's file mounts,
rsync rules, setup and start commands on a node reached over SSH.
"""

from __future__ import annotations

import getpass
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
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lfa_ray.config import load_config
from lfa_ray.data import resolve_splits
from lfa_ray.runlog import read_metrics

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


def _free_ports(n: int) -> list[int]:
    """``n`` different free ports: all held open together while the OS picks them (one after
    another, a port just closed may be handed out again)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.e2e
def test_two_node_loopback_cluster_runs_submitted_sweeps_in_memory_and_streamed_on_both_nodes(small_dir, tmp_path):
    """Two nodes of 2 CPUs. In memory: two concurrent trials of one 2-CPU worker, one on each node.
    Streamed (a pack at the training size read by Ray Data; one trial and the final retrain, an
    epoch each): every run's 3 one-CPU workers span both nodes (Ray Train packs them: 2 + 1), the
    fourth CPU is Ray Data's, and the workers' shards make the training split once an epoch."""
    port, dash, client, agent, agent2 = _free_ports(5)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_API_SERVER_ADDRESS", None)
    ray_cli = str(Path(sys.executable).parent / "ray")
    temp = Path("/tmp") / f"lfa2n-{secrets.token_hex(3)}"  # Ray's socket paths must stay short

    def ray(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([ray_cli, *args], env=env, capture_output=True, text=True, timeout=kw.pop("timeout", 180),
                              **kw)

    def submit(name: str, trials: int, epochs: int, **sets) -> Path:
        args = set_args(tiny_overrides(small_dir, tmp_path / "results", **{
            "tune.num_samples": trials, "tune.scheduler.max_t": epochs, "tune.scheduler.grace_period": epochs,
            "final.epochs": epochs, **sets}))
        for _ in range(30):  # the head's job agent needs a few seconds after `ray start`
            job = ray("job", "submit", f"--address=http://127.0.0.1:{dash}", f"--working-dir={REPO}", "--",
                      sys.executable, "-m", "lfa_ray.tune", "--name", name, *args, timeout=600)
            if "No available agent" not in job.stderr:
                break
            time.sleep(1)
        (tmp_path / f"{name}.log").write_text(job.stdout + job.stderr)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
        assert "succeeded" in job.stdout + job.stderr
        exp = tmp_path / "results" / name
        assert len(pd.read_parquet(exp / "trials.parquet")) == trials and (exp / "final" / "model.pt").is_file()
        return exp

    def workers() -> dict[str, str]:
        """Every Train worker the cluster has run: actor id -> node id."""
        listed = ray("list", "actors", f"--address=http://127.0.0.1:{dash}", "--filter",
                     "class_name=RayTrainWorker", "--detail", "--format=json", "--limit=1000")
        assert listed.returncode == 0, listed.stderr
        return {a["actor_id"]: a["node_id"] for a in json.loads(listed.stdout)}

    head = ray("start", "--head", f"--port={port}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
               "--num-cpus=2", f"--temp-dir={temp}", "--include-dashboard=true",
               f"--dashboard-agent-listen-port={agent}")
    try:
        assert head.returncode == 0, head.stdout + head.stderr
        node2 = ray("start", f"--address=127.0.0.1:{port}", "--num-cpus=2", '--resources={"node2": 1}',
                    # its own temp dir: sharing the head's, its runtime-env agent deletes the job's
                    # working_dir package (the driver's cwd) when its own workers are done with it
                    f"--temp-dir={temp}-node2", f"--dashboard-agent-listen-port={agent2}")
        assert node2.returncode == 0, node2.stdout + node2.stderr
        submit("twonode", 2, 2, **{"tune.max_concurrent_trials": 2, "scaling.cpus_per_worker": 2})
        in_memory = workers()
        assert len(set(in_memory.values())) == 2, in_memory  # the two concurrent trials: one on each node

        packed = tmp_path / "at32.parquet"
        assert subprocess.run([sys.executable, "-m", "lfa_ray.data", "pack", str(small_dir), str(packed), "--size",
                               "32"], cwd=REPO, capture_output=True).returncode == 0
        exp = submit("streamed", 1, 1, **{"data.path": packed, "data.stream": "true", "scaling.num_workers": 3})
        assert "data: streamed with Ray Data (data.stream: true;" in (tmp_path / "streamed.log").read_text()
        streamed = {a: n for a, n in workers().items() if a not in in_memory}
        assert len(streamed) == 6 and len(set(streamed.values())) == 2, streamed  # the trial and the final: 3 each
        train = len(resolve_splits(packed, 0.2, 42, 0.1, light=True).train)
        for metrics in [*exp.glob("trial_*/train/metrics.csv"), exp / "final" / "metrics.csv"]:
            assert {r["train_images"] for r in read_metrics(metrics)} == {train // 3 * 3}, metrics
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


# --- `ray up` over SSH -------------------------------------------------------------------------------

# PID 1 of the node: brings up the node's own loopback and reaps the processes Ray leaves to it.
_NODE_INIT = """
import os, subprocess, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
print("up", flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
"""

_SSHD_CONFIG = """\
HostKey {root}/keys/host
AuthorizedKeysFile {root}/keys/user.pub
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
SetEnv HOME={root}/node
"""


def _can_make_a_node() -> str:
    """Why this machine cannot host the SSH node ('' when it can)."""
    missing = [tool for tool in ("unshare", "nsenter", "ip", "ssh", "ssh-keygen", "rsync")
               if shutil.which(tool) is None] + [f for f in ("/usr/sbin/sshd",) if not os.path.exists(f)]
    if missing:
        return f"needs {', '.join(missing)} (.ci/run installs openssh-server and rsync)"
    if os.geteuid() != 0:
        return "needs root (Linux namespaces and sshd)"
    return ""


@contextmanager
def _ssh_node(root: Path):
    """A machine of its own for the cluster launcher: own process table and network (Linux PID, mount
    and network namespaces), so cluster.yaml's ``ray stop`` and fixed ports touch nothing outside it;
    an SSH server (``sshd -i`` through ssh's ProxyCommand: no port to pick), HOME at ``root/node``,
    and on PATH a venv that sees this venv's packages (as a node image has Ray and torch) where the
    setup command's ``pip install -e ~/lfa_ray`` installs the synced copy without touching this venv.
    Yields (private key, ProxyCommand, a function listing the node's processes). Leaving kills the
    node's PID 1: the kernel ends every process in it, and only those."""
    import psutil

    keys, home, venv = root / "keys", root / "node", root / "venv"
    keys.mkdir(parents=True)
    home.mkdir()
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (root / "sshd_config").write_text(_SSHD_CONFIG.format(root=root))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True)
    import sysconfig

    site = Path(next(venv.glob("lib/python*/site-packages")))
    (site / "host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for tool, main in (("ray", "ray.scripts.scripts"), ("pip", "pip._internal.cli.main")):
        script = f"#!{venv}/bin/python\nimport sys\nfrom {main} import main\nsys.exit(main())\n"
        (venv / "bin" / tool).write_text(script)
        (venv / "bin" / tool).chmod(0o755)
    # The node has no network: pip installs from what it has (PIP_NO_BUILD_ISOLATION=0 is pip's
    # spelling of --no-build-isolation), Ray finds no route out and takes 127.0.0.1 as the node's IP.
    (home / ".profile").write_text(f"export PATH={venv}/bin:$PATH RAY_TMPDIR={root}/tmp PIP_NO_INDEX=1 "
                                   "PIP_NO_BUILD_ISOLATION=0\n")
    (home / ".bashrc").write_text("")
    init = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--net", "--kill-child",
                             sys.executable, "-c", _NODE_INIT], stdout=subprocess.PIPE, text=True)
    try:
        assert init.stdout.readline().strip() == "up"
        pid1 = psutil.Process(init.pid).children()[0].pid
        namespace = os.readlink(f"/proc/{pid1}/ns/pid")

        def processes() -> list[str]:
            names = []
            for proc in psutil.process_iter(["name"]):
                try:
                    if proc.pid != pid1 and os.readlink(f"/proc/{proc.pid}/ns/pid") == namespace:
                        names.append(proc.info["name"])
                except (OSError, psutil.Error):
                    pass
            return names

        sshd = f"nsenter --target {pid1} --pid --mount --net /usr/sbin/sshd -i -f {root}/sshd_config"
        yield keys / "user", sshd, processes
    finally:
        init.kill()
        init.wait(timeout=30)


def _local_twin(cluster: dict, name: str, key: Path, proxy: str) -> dict:
    """cluster.yaml for Ray's local provider with one node at 127.0.0.1: what is AWS or Docker goes
    (provider, node types, image; auth is the node's SSH login), everything else stays."""
    aws_only = ("provider", "auth", "docker", "available_node_types", "head_node_type", "max_workers")
    return {**{k: v for k, v in cluster.items() if k not in aws_only}, "cluster_name": name, "max_workers": 0,
            "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
            "auth": {"ssh_user": getpass.getuser(), "ssh_private_key": str(key), "ssh_proxy_command": proxy}}


@pytest.mark.e2e
@pytest.mark.skipif(bool(_can_make_a_node()), reason=_can_make_a_node())
def test_ray_up_exec_down_runs_a_sweep_on_the_local_twin_of_cluster_yaml():
    import hashlib

    root = Path("/tmp") / f"lfaup-{secrets.token_hex(3)}"  # Ray's socket paths must stay short
    name = root.name
    cluster = _cluster_yaml()
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "HOME": str(root / "local"),
           "RAY_TMPDIR": str(root / "local-tmp"), "TMPDIR": str(root / "local-tmp")}
    log = []

    def ray(*args: str, timeout: int = 300) -> str:
        run = subprocess.run([ray_cli, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        log.append(f"$ ray {' '.join(args)}\n{run.stdout}{run.stderr}")
        assert run.returncode == 0, "\n".join(log)[-6000:]
        return run.stdout + run.stderr

    try:
        with _ssh_node(root) as (key, proxy, node_processes):
            twin = _local_twin(cluster, name, key, proxy)
            for same in ("file_mounts", "rsync_exclude", "setup_commands", "head_start_ray_commands",
                         "worker_start_ray_commands"):
                assert twin[same] == cluster[same]
            (root / "local-tmp").mkdir(parents=True)
            (root / "twin.yaml").write_text(yaml.safe_dump(twin))
            ray("get-auth-token", "--generate")  # docs/cloud.md's first step: ~/.ray/auth_token, mounted on the node
            ray("up", "-y", "--no-config-cache", str(root / "twin.yaml"), timeout=600)

            node = root / "node"
            synced = {p.relative_to(node / "lfa_ray").parts[0] for p in (node / "lfa_ray").rglob("*")}
            assert {"pyproject.toml", "lfa_ray", "tune_configs", "README.md"} <= synced
            assert not synced & {".git", ".venv", "results", ".gpu", ".pytest_cache"}, synced
            assert not list((node / "lfa_ray").rglob("__pycache__"))
            tokens = [(d / ".ray" / "auth_token").read_text() for d in (root / "local", node)]
            assert tokens[0] == tokens[1]

            sets = " ".join(set_args([
                "data.synthetic_n=24", "data.image_size=32", "model.features=[4,8]", "train.batch_size=4",
                "train.epochs=2", "scaling.cpus_per_worker=1", "storage.path=~/runs", "tune.num_samples=2",
                "tune.max_concurrent_trials=2", "tune.scheduler.max_t=2", "tune.scheduler.grace_period=2",
                "final.epochs=1"]))
            out = ray("exec", str(root / "twin.yaml"),
                      f"cd ~/lfa_ray && RAY_AUTH_MODE=token python -m lfa_ray.tune --name up {sets}", timeout=600)
            assert "joined the Ray cluster at 127.0.0.1:6379" in out, out[-4000:]
            exp = node / "runs" / "up"
            assert len(pd.read_parquet(exp / "trials.parquet")) == 2 and (exp / "final" / "model.pt").is_file()
            # the node ran its own copy, installed by the setup command into the node's venv
            assert "lfa_ray/lfa_ray/__init__.py" in ray("exec", str(root / "twin.yaml"),
                                                        "python -c 'import lfa_ray; print(lfa_ray.__file__)'")
            assert {"raylet", "gcs_server"} <= set(node_processes())
            ray("down", "-y", str(root / "twin.yaml"))
            assert not {"raylet", "gcs_server"} & set(node_processes())
    finally:
        control = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
        shutil.rmtree(Path("/tmp") / f"ray_ssh_{control}" / hashlib.sha256(name.encode()).hexdigest()[:10],
                      ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
