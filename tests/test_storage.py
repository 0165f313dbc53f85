"""Storage anywhere and packed datasets, against a real S3 API (moto's server on 127.0.0.1)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lfa_ray import cli, data
from lfa_ray.errors import UserError
from lfa_ray.images import read_photo
from lfa_ray.storage import locate

from helpers import REPO, error_line, set_args, tiny_overrides

BUCKET = "lfa-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 API on loopback with one bucket; the AWS variables point this process and its children at it."""
    import pyarrow.fs as pafs

    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.time() + 30
        while True:
            try:
                pafs.FileSystem.from_uri(f"s3://{BUCKET}?allow_bucket_creation=true")[0].create_dir(BUCKET)
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        yield f"s3://{BUCKET}"
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_locations_read_write_list_and_delete_on_s3(s3):
    root = locate(f"{s3}/loc")
    assert not root.exists()
    (root / "a.txt").write_text("one")
    (root / "sub" / "b.bin").write_bytes(b"\x00\x01")
    assert root.is_dir() and (root / "a.txt").is_file() and (root / "a.txt").read_text() == "one"
    assert [c.name for c in root.children()] == ["a.txt", "sub"] and [f.name for f in root.files()] == ["a.txt"]
    assert (root / "sub" / "b.bin").uri == f"{s3}/loc/sub/b.bin"
    root.rmtree()
    assert not root.exists()


def test_packed_dataset_round_trips_exactly(small_dir, tmp_path, s3, capsys):
    """Same names, same split, same pixels as the folder — locally and from a URI."""
    local = tmp_path / "small.parquet"
    assert cli.data(["pack", str(small_dir), str(local)]) == 0
    assert "packed 24 pairs" in capsys.readouterr().out
    remote = f"{s3}/packed/small.parquet"
    assert cli.data(["pack", str(small_dir), remote]) == 0
    folder = data.load(small_dir, 48)
    for packed in (data.load(local, 48), data.load(remote, 48)):
        assert packed.train.names == folder.train.names and packed.val.names == folder.val.names
        for a, b in ((packed.train, folder.train), (packed.val, folder.val)):
            assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
        assert packed.summary == folder.summary
    # at the original size too: the encoded bytes are stored as they are
    pairs = data.discover(remote).pairs
    first = next(p for p in data.discover(small_dir).pairs if p.name == pairs[0].name)
    assert np.array_equal(read_photo(pairs[0].image).pixels, np.asarray(Image.open(first.image.local).convert("RGB")))
    assert cli.data(["check", remote]) == 0
    assert "24 pairs, all decode" in capsys.readouterr().out


@pytest.mark.parametrize("explicit, n_val, n_test", [("val", 2, 0), ("test", 1, 2)])
def test_packed_dataset_keeps_explicit_validation_and_test_sets(tmp_path, explicit, n_val, n_test):
    src = tmp_path / "explicit"
    for sub, n in (("train", 4 if explicit == "test" else 3), (explicit, 2)):
        for kind in ("images", "masks"):
            (src / sub / kind).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(src / sub / "images" / f"{sub}{i}.png")
            Image.fromarray(np.eye(20, 30, dtype=np.uint8) * 255).save(src / sub / "masks" / f"{sub}{i}.png")
    out = tmp_path / "explicit.parquet"
    assert data.pack(src, out)[explicit] == 2
    splits = data.resolve_splits(out, 0.25, 0)
    assert [p.name for p in getattr(splits, explicit)] == [f"{explicit}0", f"{explicit}1"]
    assert getattr(splits, f"explicit_{explicit}") and len(splits.train) == 3
    assert (len(splits.val), len(splits.test)) == (n_val, n_test)


def test_bad_pack_and_packed_input(small_dir, tmp_path, capsys):
    out = tmp_path / "p.parquet"
    out.write_bytes(b"keep me")
    assert cli.data(["pack", str(small_dir), str(out)]) == 2
    assert "already exists" in error_line(capsys) and out.read_bytes() == b"keep me"
    assert cli.data(["pack", str(small_dir), str(tmp_path / "p.zip")]) == 2
    assert "must end in .parquet" in error_line(capsys)
    with pytest.raises(UserError, match="not a readable Parquet file"):
        data.discover(out)
    with pytest.raises(UserError, match="packed dataset not found"):
        data.discover(tmp_path / "missing.parquet")
    pd.DataFrame({"name": ["a"]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(UserError, match="not a packed lfa_ray dataset"):
        data.discover(tmp_path / "other.parquet")


@pytest.mark.e2e
def test_sweep_on_s3_resumes_from_the_bucket_and_predicts(small_dir, tmp_path, s3):
    """Results, checkpoints and TensorBoard logs in the bucket, none locally; SIGINT, --resume, predict.
    The photos are streamed from a pack in the bucket by Ray Data (data.stream), nothing of it copied
    locally: each trial, the resumed one and the final retrain build their stream, and a trial that
    searches data.image_size streams at its own size."""
    packed = f"{s3}/data/small48.parquet"
    data.pack(small_dir, packed, size=48)
    storage = f"{s3}/results"
    exp = locate(f"{storage}/s3sweep")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    work = tmp_path / "work"  # the commands' working directory: nothing may land here
    work.mkdir()
    base = [sys.executable, "-m", "lfa_ray.tune", "--config", str(REPO / "tune_configs" / "default.yaml"),
            "--name", "s3sweep"]
    sets = set_args(tiny_overrides(packed, storage, **{
        "data.stream": "true", "tune.num_samples": 2, "tune.max_concurrent_trials": 1, "final.epochs": 3,
        "tune.search_space": "{data.image_size: {choice: [48]}, train.lr: {loguniform: [1.0e-3, 3.0e-3]}}"}))
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(base + sets, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and not any(c.name.startswith("trial_002_") for c in exp.children()):
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)  # while the last trial runs
    assert proc.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-3000:]
    first = next(c for c in exp.children() if c.name.startswith("trial_001_"))
    first_results = (first / "result.json").read_text()
    assert first_results and not (exp / "final").exists()

    resumed = subprocess.run(base + ["--resume", "--set", f"storage.path={storage}"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    console = resumed.stdout + resumed.stderr
    assert resumed.stdout.count("data: streamed with Ray Data (data.stream: true;") == 1
    assert "Traceback" not in console and "SplitCoordinator" not in console
    table = pd.read_parquet(io.BytesIO((exp / "trials.parquet").read_bytes()))
    assert len(table) == 2 and (table["error"].fillna("") == "").all(), table
    assert set(table["data.image_size"]) == {48}  # the profile's is 32: each trial streamed at its own size
    final = torch.load(io.BytesIO((exp / "final" / "model.pt").read_bytes()), weights_only=False)
    assert final["config"]["data"]["image_size"] == 48
    trials = [c for c in exp.children() if c.name.startswith("trial_")]
    assert len(trials) == 2 and (first / "result.json").read_text() == first_results  # not re-run
    for t in trials:
        names = [c.name for c in t.children()]
        assert any(n.startswith("events.out.tfevents") for n in names), names  # Tune's TensorBoard logs
        assert any((c / "state.pt").is_file() for c in (t / "train").children()
                   if c.name.startswith("checkpoint_epoch_"))
    for name in ("config.yaml", "best_config.yaml", "trials.parquet", "trials.csv", "summary.md",
                 "trials_val_dice.png", "final/model.pt", "final/metrics.csv", "final/test/summary.json"):
        assert (exp / name).is_file(), name
    # TensorBoard reads the logs straight from the bucket (its S3 support: boto3, AWS_ENDPOINT_URL)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in (exp / "final", trials[0]):
        tags = EventAccumulator(run.uri, size_guidance={"scalars": 0}).Reload().Tags()["scalars"]
        assert any(t.endswith("val_dice") for t in tags), (run, tags)
    assert f"final model:  {storage}/s3sweep/final/model.pt" in resumed.stdout
    assert sorted(p.name for p in work.iterdir()) == []  # nothing in local results

    # predict and lfa_ray.train --resume-from read from the bucket
    images = tmp_path / "photos"
    images.mkdir()
    for p in sorted((small_dir / "train_images").iterdir())[:3]:
        (images / p.name).write_bytes(p.read_bytes())
    pred = subprocess.run([sys.executable, "-m", "lfa_ray.predict", "--checkpoint", exp.uri, str(images),
                           "--out", str(tmp_path / "pred")], cwd=work, env=env, capture_output=True, text=True)
    assert pred.returncode == 0, pred.stderr[-3000:]
    for p in images.iterdir():
        assert Image.open(tmp_path / "pred" / f"{p.stem}_mask.png").size == Image.open(p).size
    cont = subprocess.run([sys.executable, "-m", "lfa_ray.train", "--resume-from", f"{exp.uri}/final",
                           "--name", "more", "--set", "train.epochs=4"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert cont.returncode == 0, cont.stdout[-3000:] + cont.stderr[-3000:]
    assert (locate(storage) / "more" / "checkpoint_epoch_0004" / "state.pt").is_file()
    assert (locate(storage) / "more" / "model.pt").is_file()
    assert sorted(p.name for p in work.iterdir()) == []


def test_packed_dataset_trains_the_same_as_its_folder(small_dir, tmp_path):
    from lfa_ray import loop

    from helpers import tiny_config

    packed = tmp_path / "small.parquet"
    data.pack(small_dir, packed)
    runs = []
    for source in (small_dir, packed):
        cfg = tiny_config(source, tmp_path, **{"train.epochs": 2})
        torch.manual_seed(0)
        tr, va = data.build_datasets(cfg, data.load_for(cfg, data.resolve_root(cfg)))
        parts = loop.build(cfg, torch.device("cpu"))
        tl, vl = loop.make_loaders(tr, va, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
        results = []
        loop.fit(cfg, parts, tl, vl, torch.device("cpu"), on_epoch=results.append)
        runs.append([(r.metrics["train_loss"], r.metrics["val_dice"]) for r in results])
    assert runs[0] == runs[1] and len(runs[0]) == 2


def test_bad_storage_and_data_uris_are_refused_before_ray_starts(s3, small_dir, tmp_path, capsys):

    cases = [
        (cli.tune, ["--set", "storage.path=s3://no-such-bucket/results"],
         "s3://no-such-bucket/results: cannot be created"),
        (cli.train, ["--set", "storage.path=s3://no-such-bucket/results"], "check that the bucket exists"),
        (cli.tune, ["--set", "storage.path=nosuchscheme://x"], "not a usable location"),
        (cli.train, ["--data", f"{s3}/missing.parquet", "--set", f"storage.path={s3}/r"], "packed dataset not found"),
        (cli.train, ["--data", f"{s3}/missing", "--set", f"storage.path={s3}/r"], "data folder not found"),
        (cli.tune, ["--resume", "--name", "nope", "--set", f"storage.path={s3}/r"], "no such sweep"),
    ]
    for main, args, fragment in cases:
        assert main(["--name", "bad", *args]) == 2, args
        assert fragment in error_line(capsys), args
    assert not (locate(f"{s3}/r") / "bad").exists()


def test_run_lock_on_s3_is_exclusive_and_a_stale_one_is_taken_over(s3, capsys):
    """A conditional PUT creates the lock object; a heartbeat older than STALE_S means its owner died."""
    import json

    import boto3

    from lfa_ray import lock
    from lfa_ray.lock import RunLock

    run = locate(f"{s3}/locked/run")
    key = "locked/.run.lock"
    client = boto3.client("s3")
    with RunLock(run):
        owner = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        assert owner["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"run is in use by process {os.getpid()}"):
            RunLock(run).__enter__()
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix=key)  # released

    dead = {"host": "elsewhere", "pid": 1, "started": 0, "heartbeat": time.time() - lock.STALE_S - 1}
    client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(dead))
    with RunLock(run):
        assert "took over the stale run lock of process 1 on elsewhere" in capsys.readouterr().out
        assert json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())["pid"] == os.getpid()


def test_a_remote_runs_log_staging_of_a_process_that_is_gone_is_removed(s3, tmp_path, monkeypatch):
    import tempfile

    from lfa_ray import runlog

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f"{runlog.STAGING_PREFIX}{gone.pid}-x1"  # a killed trial's: never closed
    ours = tmp_path / f"{runlog.STAGING_PREFIX}{os.getpid()}-x2"  # a live process's
    for d in (stale, ours):
        d.mkdir()
        (d / "events.out.tfevents.1").write_bytes(b"x")
    log = runlog.RunLog(f"{s3}/runs/r1")
    assert not stale.exists() and ours.exists()
    assert log.staging.name.startswith(f"{runlog.STAGING_PREFIX}{os.getpid()}-")
    log.log({k: 0.5 for k in runlog.COLUMNS} | {"epoch": 1})
    log.close()
    assert not log.staging.exists() and locate(f"{s3}/runs/r1/metrics.csv").is_file()
    runlog.write_events(f"{s3}/runs/r1", 2, {"test_dice": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == [ours.name]  # write_events left nothing behind


