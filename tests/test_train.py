"""``python -m lfa_ray.train`` end to end on a real local Ray cluster."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lfa_ray import cli, data
from lfa_ray.checkpoint import latest_checkpoint, load_state
from lfa_ray.config import load_config
from lfa_ray.errors import UserError
from lfa_ray.runlog import read_metrics

from helpers import (
    REPO,
    error_line,
    kill_session,
    set_args,
    tiny_config,
    tiny_overrides,
    train_worker_ids,
    train_worker_pids,
)


def _args(data, storage, *extra, **sets):
    return set_args(tiny_overrides(data, storage, **sets)) + list(extra)


@pytest.mark.slow
def test_train_run_writes_everything_and_refuses_to_overwrite(ray_cluster, small_dir, tmp_path, capsys):
    assert cli.train(_args(small_dir, tmp_path, "--name", "run1")) == 0
    run = tmp_path / "run1"
    assert (run / "config.yaml").is_file()
    assert sorted(p.name for p in run.glob("checkpoint_epoch_*")) == ["checkpoint_epoch_0001", "checkpoint_epoch_0002"]
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    # the worker's own set-up before its first epoch: the same for the attempt's every epoch, seconds
    assert rows[0]["setup_seconds"] == rows[1]["setup_seconds"] and 0 < rows[0]["setup_seconds"] < 60
    state = load_state(run / "checkpoint_epoch_0002")
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "progress", "config"}
    assert state["progress"]["epoch"] == 2 and state["config"]["data"]["image_size"] == 32
    exported = torch.load(run / "model.pt", weights_only=False)
    assert exported["config"]["model"]["features"] == [4, 8]

    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Scalars("val_dice")] == [1, 2]
    assert events.Images("val/overlay")  # prediction overlays of validation images
    out = capsys.readouterr().out
    assert "tensorboard --logdir" in out and "test split:" in out
    # a line per epoch, printed by lfa_ray from the run's metrics (the workers' own lines: --verbose)
    assert [f"epoch {e}/2: val_dice {r['val_dice']:.4f} (best {r['best_val_dice']:.4f})" in out
            for e, r in enumerate(rows, 1)] == [True, True]
    assert "RayTrainWorker" not in out and "train_loss" in out.split("epoch 1/2: ")[1].splitlines()[0]
    # the run had the 2-CPU test cluster to itself: its worker took both CPUs (two torch threads)
    assert "devices: CPU, 2 per training worker" in out
    assert load_config(run / "config.yaml").scaling.cpus_per_worker == 2
    assert json.loads((run / "test" / "summary.json").read_text())["images"] == 2  # 24 photos x test_fraction 0.1

    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert cli.train(_args(small_dir, tmp_path, "--name", "run1")) == 2
    assert "already exists; continue it with --resume-from" in error_line(capsys)
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*")}  # nothing touched

    # continue the same run for two more epochs: Ray restores its latest checkpoint
    assert cli.train(["--resume-from", str(run), "--set", "train.epochs=4"]) == 0
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1.0, 2.0, 3.0, 4.0]
    assert load_state(run / "checkpoint_epoch_0004")["progress"]["epoch"] == 4

    # start a new run from a saved checkpoint
    assert cli.train(["--resume-from", str(run / "checkpoint_epoch_0002"), "--name", "branch",
                       "--set", f"storage.path={tmp_path}", "--set", "train.epochs=3"]) == 0
    assert [r["epoch"] for r in read_metrics(tmp_path / "branch" / "metrics.csv")] == [3.0]

    # --reset starts again from scratch
    assert cli.train(_args(small_dir, tmp_path, "--name", "run1", "--reset", **{"train.epochs": 1})) == 0
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1.0]
    assert not (run / "checkpoint_epoch_0004").exists()


@pytest.mark.slow
def test_a_killed_worker_restarts_from_the_latest_checkpoint(ray_cluster, small_dir, tmp_path):
    """What a reclaimed spot node does to a run: with scaling.max_failures the run goes on and finishes."""
    import threading

    run = tmp_path / "spot"
    killed = []

    def kill_the_worker_after_epoch_2():
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "checkpoint_epoch_0002" / "state.pt").exists():
            time.sleep(0.05)
        for pid in train_worker_pids():  # this test's cluster's only run: its worker
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_the_worker_after_epoch_2)
    killer.start()
    code = cli.train(_args(small_dir, tmp_path, "--name", "spot", **{"train.epochs": 6, "scaling.max_failures": 1}))
    killer.join()
    assert killed and code == 0
    epochs = [int(r["epoch"]) for r in read_metrics(run / "metrics.csv")]
    assert epochs == [1, 2, 3, 4, 5, 6]  # the restarted attempt's rows replace the lost one's
    assert load_state(run / "checkpoint_epoch_0006")["progress"]["epoch"] == 6


@pytest.mark.slow
def test_two_worker_cpu_run(ray_cluster, small_dir, tmp_path, capsys):
    before = train_worker_ids()
    assert cli.train(_args(small_dir, tmp_path, "--name", "ddp", **{"scaling.num_workers": 2})) == 0
    assert len(train_worker_ids() - before) == 2  # the run had two training workers
    rows = read_metrics(tmp_path / "ddp" / "metrics.csv")
    # the run's training photos split over 2 workers (DistributedSampler pads an odd count by one),
    # every one counted once: unsharded, each worker would train on all of them (twice the count)
    d = load_config(tmp_path / "ddp" / "config.yaml").data
    n = len(data.resolve_splits(small_dir, d.val_fraction, d.split_seed, d.test_fraction).train)
    assert n == 17 and [r["train_images"] for r in rows] == [18, 18]
    assert load_state(tmp_path / "ddp" / "checkpoint_epoch_0002")["progress"]["epoch"] == 2


@pytest.fixture(scope="module")
def finished_run(ray_cluster, small_dir, tmp_path_factory) -> Path:
    """One finished 2-epoch run, for tests that read it (or a copy of it) without continuing it."""
    storage = tmp_path_factory.mktemp("runs")
    assert cli.train(_args(small_dir, storage, "--name", "done")) == 0
    return storage / "done"


@pytest.mark.slow
def test_a_damaged_run_continues_from_its_newest_checkpoint_that_loads(ray_cluster, small_dir, tmp_path, capsys):
    """Ray rewrites checkpoint_manager_snapshot.json in place (a machine lost then leaves it empty);
    a disk or a hand can damage or delete the latest state.pt. The start chosen for each damage; then a
    lost record and a garbage state file (rewritten in place) continued end to end."""
    from lfa_ray.checkpoint import restorable
    from lfa_ray.storage import locate

    assert cli.train(_args(small_dir, tmp_path, "--name", "cut")) == 0
    run = tmp_path / "cut"
    latest = run / "checkpoint_epoch_0002" / "state.pt"
    whole = latest.read_bytes()
    for damage in ("latest_truncated", "latest_deleted"):
        if damage == "latest_truncated":
            latest.write_bytes(whole[: len(whole) // 2])
        else:
            latest.parent.rename(tmp_path / "aside")
        capsys.readouterr()
        start, state = restorable(locate(run))
        assert start.name == "checkpoint_epoch_0001" and state["progress"]["epoch"] == 1, damage
        out = capsys.readouterr().out
        assert f"{latest}: not a checkpoint lfa_ray can load" in out, damage
        assert "continuing from the newest checkpoint that loads, checkpoint_epoch_0001" in out, damage
    (tmp_path / "aside").rename(latest.parent)
    latest.write_bytes(whole)

    for epochs, damage in enumerate(["snapshot_cut_short", "latest_garbage"], start=3):
        latest = run / f"checkpoint_epoch_{epochs - 1:04d}" / "state.pt"
        if damage == "snapshot_cut_short":
            (run / "checkpoint_manager_snapshot.json").write_text("")
        else:
            latest.write_bytes(os.urandom(2000))
        capsys.readouterr()
        assert cli.train(["--resume-from", str(run), "--set", f"train.epochs={epochs}"]) == 0, damage
        out = capsys.readouterr().out
        if damage == "latest_garbage":
            assert f"{latest}: not a checkpoint lfa_ray can load" in out
            assert f"continuing from the newest checkpoint that loads, checkpoint_epoch_{epochs - 2:04d}" in out
        assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == list(range(1, epochs + 1)), damage
        assert load_state(run / f"checkpoint_epoch_{epochs:04d}")["progress"]["epoch"] == epochs
        assert load_state(latest.parent)["progress"]["epoch"] == epochs - 1  # written again, whole


@pytest.mark.slow
def test_a_checkpoint_that_does_not_load_is_named(finished_run, tmp_path, capsys):
    shutil.copytree(finished_run, tmp_path / "ok")
    for c in (tmp_path / "ok").glob("checkpoint_epoch_*"):
        (c / "state.pt").write_bytes(b"\x80\x02garbage")
    capsys.readouterr()
    assert cli.train(["--resume-from", str(tmp_path / "ok" / "checkpoint_epoch_0001"), "--name", "b",
                       "--set", f"storage.path={tmp_path}"]) == 2
    assert "checkpoint_epoch_0001/state.pt: not a checkpoint lfa_ray can load" in error_line(capsys)
    assert cli.train(["--resume-from", str(tmp_path / "ok")]) == 2
    assert "none of its checkpoints loads" in error_line(capsys)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_diverging_run_stops_with_the_epoch_and_exports_nothing(finished_run, tmp_path, capsys):
    state = load_state(finished_run / "checkpoint_epoch_0002")
    for weights in ("model", "trained"):  # the average and the weights trained: an exploding step leaves both
        state[weights] = {k: v * float("nan") if v.is_floating_point() else v for k, v in state[weights].items()}
    (tmp_path / "nan").mkdir()
    torch.save(state, tmp_path / "nan" / "state.pt")
    capsys.readouterr()
    assert cli.train(["--resume-from", str(tmp_path / "nan"), "--name", "div", "--set", f"storage.path={tmp_path}",
                       "--set", "train.epochs=4"]) == 2
    line = error_line(capsys)
    assert "training diverged at epoch 3: train_loss is nan" in line and "lower train.lr" in line
    assert not (tmp_path / "div" / "model.pt").exists()
    assert not list((tmp_path / "div").glob("checkpoint_epoch_*"))  # nothing non-finite saved


@pytest.mark.slow
def test_a_joined_cluster_may_grow_so_a_shortfall_is_only_noted(ray_cluster, small_dir, tmp_path, monkeypatch,
                                                                 capsys):
    from lfa_ray.ray_train import check_resources

    cfg = tiny_config(small_dir, tmp_path, **{"scaling.use_gpu": "true"})
    with pytest.raises(UserError, match="the Ray cluster has 0"):
        check_resources(cfg)  # a cluster lfa_ray started: all there is
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # joined (cluster.yaml, ray job submit): it may autoscale
    check_resources(cfg)
    assert "waits for the cluster's autoscaler" in capsys.readouterr().out


@pytest.mark.parametrize("extra, fragment", [
    (["--set", "scaling.num_workers=5"], "needs 5 CPUs but the Ray cluster has 2"),
    (["--set", "scaling.use_gpu=true"], "needs GPUs but the Ray cluster has 0; use --set scaling.use_gpu=auto"),
    (["--set", "train.bogus=1"], "unknown key 'train.bogus'"),
    (["--set", "train.epochs=many"], "train.epochs must be an integer"),
    (["--data", "/definitely/not/here"], "data folder not found"),
    (["--config", "/no/such/profile.yaml"], "profile not found"),
    (["--resume-from", "/no/such/run"], "--resume-from /no/such/run: not found"),
    (["--set", "train.init_from=/no/such/model.pt"], "--checkpoint /no/such/model.pt: no model here"),
])
@pytest.mark.slow
def test_bad_input_exits_2_with_one_line_and_leaves_no_run_folder(ray_cluster, small_dir, tmp_path, capsys,
                                                                  extra, fragment):
    assert cli.train(_args(small_dir, tmp_path, "--name", "bad") + extra) == 2
    assert fragment in error_line(capsys)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("where", ["recorded", "RAY_ADDRESS"])
def test_a_cluster_that_does_not_answer_is_named_within_seconds(small_dir, tmp_path, where):
    """A head that died without `ray stop` leaves its address recorded; Ray alone retries it forever."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    if where == "recorded":
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "ray_current_cluster").write_text(dead)
    else:
        env["RAY_ADDRESS"] = dead
    done = subprocess.run([sys.executable, "-m", "lfa_ray.train", "--name", "x", *_args(small_dir, tmp_path)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert dead in line and ("ray stop --force" in line if where == "recorded" else "unset it" in line)
    assert not (tmp_path / "x").exists()


def test_bad_yaml_profile(tmp_path, capsys):
    profile = tmp_path / "p.yaml"
    profile.write_text("train: {lr: 0.1\n")
    assert cli.train(["--config", str(profile), "--set", f"storage.path={tmp_path}"]) == 2
    assert "p.yaml: not valid YAML" in error_line(capsys)


@pytest.mark.slow
def test_original_layout_folder_from_outside_trains(ray_cluster, tmp_path, capsys):
    """A hand-made folder in the original layout (not written by lfa_ray) trains and gives a loadable checkpoint."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "carvana_like"
    for i in range(10):
        img = rng.integers(0, 255, (45, 70, 3), dtype=np.uint8)
        mask = np.zeros((45, 70), np.uint8)
        mask[10:30, 20 + i:50] = 255
        (root / "train_images").mkdir(parents=True, exist_ok=True)
        (root / "train_masks").mkdir(exist_ok=True)
        Image.fromarray(img).save(root / "train_images" / f"car{i}.jpg")
        Image.fromarray(mask).convert("P").save(root / "train_masks" / f"car{i}_mask.gif")
    assert cli.train(["--data", str(root), "--set", "train.epochs=2", "--set", "data.image_size=64",
                       "--set", "scaling.cpus_per_worker=1", "--set", f"storage.path={tmp_path / 'r'}"]) == 0
    run = tmp_path / "r" / "train-default"
    state = load_state(sorted(run.glob("checkpoint_epoch_*"))[-1])
    from lfa_ray.model import UNet

    model = UNet(features=state["config"]["model"]["features"])
    model.load_state_dict(state["model"])
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.slow
def test_killed_run_resumes_at_the_next_epoch_with_its_optimizer_state(small_dir, tmp_path):
    """A real `python -m lfa_ray.train` is SIGKILLed mid-run, then continued from its folder."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "lfa_ray.train", "--name", "k",
           *_args(small_dir, tmp_path, **{"train.epochs": 40, "data.image_size": 48,
                                          "train.keep_checkpoints": 100})]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    run = tmp_path / "k"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(run.glob("checkpoint_epoch_*/state.pt"))) < 3:
        time.sleep(0.2)
    kill_session(proc.pid)  # the driver and the local Ray cluster it started, like a lost machine
    proc.wait()
    done = sorted(p.parent for p in run.glob("checkpoint_epoch_*/state.pt"))
    assert len(done) >= 3, "the run did not get going"
    last = int(done[-1].name.rsplit("_", 1)[1])  # may not be registered yet when the kill came
    assert last < 40
    restored = latest_checkpoint(run)  # what Ray registered: the run continues from here
    saved = load_state(restored)
    start = saved["progress"]["epoch"]
    # Ray registers a checkpoint after copying it, asynchronously: a kill can land with the newest
    # copies on disk but not yet registered; the run continues from the last registered one.
    assert 1 <= start <= last

    resumed = subprocess.run([sys.executable, "-m", "lfa_ray.train", "--resume-from", str(run),
                              "--set", f"train.epochs={last + 2}"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming after epoch {start}" in resumed.stdout + resumed.stderr
    epochs = [int(r["epoch"]) for r in read_metrics(run / "metrics.csv")]
    assert epochs == list(range(1, last + 3))  # rows of the killed attempt after `start` were replaced
    # The optimizer state the resumed run started from is the one saved at `start`: the next
    # checkpoint's Adam step count is exactly one epoch's steps further on.
    nxt = load_state(run / f"checkpoint_epoch_{start + 1:04d}")
    steps_per_epoch = -(-19 // 4)  # 19 training images, batch 4
    for k, v in saved["optimizer"]["state"].items():
        assert int(nxt["optimizer"]["state"][k]["step"]) == int(v["step"]) + steps_per_epoch


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_training_with_the_resume_command(small_dir, tmp_path, sig, code):
    """Ctrl-C, or SIGTERM (``ray job stop``, a container's stop), stops a run with one line naming
    the command that continues it; no traceback, no native stack dump."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "lfa_ray.train", "--name", "c",
           *_args(small_dir, tmp_path, **{"train.epochs": 40, "data.image_size": 48})]
    # Ctrl-C as a terminal sends it, even where this suite runs with SIGINT ignored (a background
    # job of a shell without job control), which a child would inherit and Python keep.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = tmp_path / "c"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(run.glob("checkpoint_epoch_*/state.pt"))) < 2:
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "Traceback" not in err and "Fatal Python error" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last == f"stopped: training stopped; continue it with: python -m lfa_ray.train --resume-from {run}"
    # the printed command names the run (train.epochs=start: refused before Ray starts, so it is cheap;
    # test_killed_run_resumes_... shows a resume from such a folder trains on exactly)
    start = load_state(latest_checkpoint(run))["progress"]["epoch"]
    resumed = subprocess.run([sys.executable, *last.split(": ", 2)[2].split()[1:], "--set",
                              f"train.epochs={start}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 2 and f"already trained {start} epochs" in resumed.stderr


@pytest.mark.slow
def test_a_dead_worker_without_retries_says_how_to_continue(small_dir, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "lfa_ray.train", "--name", "w",
           *_args(small_dir, tmp_path, **{"train.epochs": 40, "data.image_size": 48})]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    run = tmp_path / "w"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(run.glob("checkpoint_epoch_*/state.pt"))) < 2:
        time.sleep(0.2)
    workers = [p for p in Path("/proc").glob("[0-9]*") if _in_session(p, proc.pid)
               and "RayTrainWorker" in (p / "cmdline").read_bytes().decode(errors="replace")]
    assert workers, "no training worker found"
    os.kill(int(workers[0].name), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    # lfa_ray's own last line (Ray forwards its processes' logs, "(TrainController pid=…) …", as they come)
    last = [line for line in err.strip().splitlines() if not re.match(r"(\x1b\[\d+m)?\(\w+ pid=", line)][-1]
    assert proc.returncode == 2 and "Traceback" not in last
    assert last.startswith("error: training failed: ") and f"--resume-from {run}" in last
    assert "scaling.max_failures > 0 restarts by itself" in last
    kill_session(proc.pid)  # the local cluster the run started


def _in_session(proc_dir: Path, sid: int) -> bool:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid
    except (OSError, ValueError, IndexError):
        return False


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MB filesystem (tmpfs) to fill up; needs root, as CI and this project's machines have."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of ``disk``."""
    filler = disk / f"filler{len(list(disk.glob('filler*')))}"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk_says_so_and_the_run_continues_once_space_is_freed(small_dir, tmp_path, small_disk):
    """Space is freed by deleting other files and, as a user might, the run's own older checkpoints
    (Ray's record still names them)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = small_disk / "f"
    cmd = [sys.executable, "-m", "lfa_ray.train", "--name", "f",
           *_args(small_dir, small_disk, **{"train.epochs": 60, "data.image_size": 48,
                                            "train.early_stopping_patience": 100})]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(run.glob("checkpoint_epoch_*/state.pt"))) < 3:
        time.sleep(0.1)
    filler = _fill(small_disk)
    _, err = proc.communicate(timeout=240)
    kill_session(proc.pid)
    assert proc.returncode == 2, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"error: disk full: no space left writing {run}; free space there, "
                                            f"then continue it with: python -m lfa_ray.train --resume-from {run}")
    registered = latest_checkpoint(run)
    assert all(c.name <= registered.name for c in run.glob("checkpoint_epoch_*"))  # no cut-short copies
    filler.unlink()
    older = [c for c in run.glob("checkpoint_epoch_*") if c.name != registered.name]
    assert older
    for c in older:
        shutil.rmtree(c)
    start = load_state(registered)["progress"]["epoch"]
    resumed = subprocess.run(cmd[:3] + ["--resume-from", str(run), "--set", f"train.epochs={start + 1}"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_state(run / f"checkpoint_epoch_{start + 1:04d}")["progress"]["epoch"] == start + 1


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_another_models_weights(finished_run, small_dir, tmp_path, capsys):
    """Warm start: the weights of a model.pt (here a finished run's), not its optimizer or epoch count."""
    from lfa_ray.checkpoint import state_bytes
    from lfa_ray.config import load_config
    from lfa_ray.model import UNet

    pretrained = torch.load(finished_run / "model.pt", weights_only=False)["model"]
    # lr 1e-9: one epoch leaves the weights where they started, so the checkpoint shows the start
    for name, init in (("warm", str(finished_run / "model.pt")), ("cold", "null")):
        assert cli.train(_args(small_dir, tmp_path, "--name", name, **{"train.epochs": 1, "train.lr": 1e-9,
                                                                          "train.init_from": init})) == 0
    convs = [k for k in pretrained if k.endswith(".weight") and pretrained[k].dim() == 4]
    for name, same in (("warm", True), ("cold", False)):
        state = load_state(tmp_path / name / "checkpoint_epoch_0001")
        assert state["progress"]["epoch"] == 1  # a new run: epochs count from 1
        assert all(torch.allclose(state["model"][k], pretrained[k], atol=1e-6) for k in convs) == same, name

    other = tmp_path / "other.pt"  # another architecture is refused before anything starts
    other.write_bytes(state_bytes({"model": UNet(features=[4, 8, 16]).state_dict(),
                                   "config": load_config(None, ["model.features=[4,8,16]"]).to_dict()}))
    capsys.readouterr()
    assert cli.train(_args(small_dir, tmp_path, "--name", "bad", **{"train.init_from": str(other)})) == 2
    assert "that UNET has model.features [4, 8, 16] but this profile has [4, 8]" in error_line(capsys)
    assert not (tmp_path / "bad").exists()


class _Payload:
    """What a hostile model file carries: unpickling it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_model_and_checkpoint_files_never_run_code(small_dir, tmp_path, capsys):
    """predict and --resume-from read tensors and plain values only: a pickle payload is refused, unrun."""

    marker = tmp_path / "payload-ran"
    evil = {"model": {}, "config": {}, "progress": {"epoch": 1}, "x": _Payload(marker)}
    (tmp_path / "ckpt").mkdir()
    torch.save(evil, tmp_path / "ckpt" / "state.pt")
    torch.save(evil, tmp_path / "model.pt")
    image = next((small_dir / "train_images").iterdir())
    assert cli.predict(["--checkpoint", str(tmp_path / "model.pt"), str(image), "--out", str(tmp_path / "p")]) == 2
    assert "model.pt: not an lfa_ray model (UnpicklingError)" in error_line(capsys)
    assert cli.train(["--resume-from", str(tmp_path / "ckpt"), "--name", "x",
                       "--set", f"storage.path={tmp_path}"]) == 2
    assert "state.pt: not a checkpoint lfa_ray can load (UnpicklingError)" in error_line(capsys)
    assert not marker.exists()
