"""One run folder, one owner: the run lock, with real processes (and a real S3 API in test_storage)."""

import os
import signal
import subprocess
import sys

import pytest

from lfa_ray import cli
from lfa_ray.errors import UserError
from lfa_ray.lock import RunLock
from lfa_ray.storage import locate

from helpers import REPO, error_line, set_args, tiny_overrides

HOLD = "import sys, time; from lfa_ray.lock import RunLock; from lfa_ray.storage import locate\n" \
       "with RunLock(locate(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)"


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_refuses_a_second_owner_and_a_killed_owner_frees_it(tmp_path):
    run = locate(tmp_path / "run")
    holder = _holder(run.local)
    try:
        with pytest.raises(UserError, match=rf"run is in use by process {holder.pid} on .*; wait for it"):
            RunLock(run).__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the lock file stays behind
        holder.wait()
    assert (tmp_path / ".run.lock").exists()
    with RunLock(run):  # the kernel released the dead owner's lock: taken over
        with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
            RunLock(run).__enter__()
    assert not (tmp_path / ".run.lock").exists()  # released on exit


@pytest.mark.slow
def test_train_and_tune_refuse_a_name_in_use(ray_cluster, small_dir, tmp_path, capsys):
    items = set_args(tiny_overrides(small_dir, tmp_path))
    holder = _holder(tmp_path / "busy")
    try:
        assert cli.train(["--name", "busy", *items]) == 2
        assert f"busy is in use by process {holder.pid}" in error_line(capsys)
        assert cli.tune(["--name", "busy", *items]) == 2
        assert f"busy is in use by process {holder.pid}" in error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "busy").exists()
