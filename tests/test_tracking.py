"""Experiment tracking (``tracking.*``): refused in one line when it cannot work, and never the reason
training stops. A whole sweep tracked in MLflow and W&B, resumed: tests/test_tune.py (the lost and
then stopped sweep)."""

import socket
import threading
import time

import pytest

from lfa_ray import cli

from helpers import MLflowServer, error_line, set_args, tiny_overrides


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("command", ["tune", "train"])
@pytest.mark.parametrize("sets, unset, fragment", [
    ({"tracking.mlflow_uri": "http://127.0.0.1:{port}"}, (),
     "tracking.mlflow_uri http://127.0.0.1:{port}: no MLflow server answers ("),
    ({"tracking.wandb": "true"}, ("WANDB_MODE", "WANDB_API_KEY"),
     "tracking.wandb is true but W&B has no login here; run `wandb login`"),
    ({}, (), "MLFLOW_TRACKING_URI http://127.0.0.1:{port}: no MLflow server answers (nothing listens there)"),
], ids=["mlflow-unreachable", "wandb-no-login", "mlflow-env-unreachable"])
def test_tracking_that_cannot_work_is_refused_in_one_line_before_ray_starts(small_dir, tmp_path, capsys, monkeypatch,
                                                                           command, sets, unset, fragment):
    port = _closed_port()
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a W&B login
    if not sets:  # the standard variable instead of the key
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    for key in unset:
        monkeypatch.delenv(key, raising=False)
    items = tiny_overrides(small_dir, tmp_path / "results", **{k: v.format(port=port) for k, v in sets.items()})
    started = time.monotonic()
    assert getattr(cli, command)(["--name", "n", *set_args(items)]) == 2
    assert time.monotonic() - started < 30  # seconds, not MLflow's default minutes of retries
    line = error_line(capsys)
    assert line.startswith("error: " + fragment.format(port=port)), line
    assert "data:" not in capsys.readouterr().out  # before the data is read and Ray starts
    assert not (tmp_path / "results" / "n").exists()


@pytest.mark.slow
def test_a_train_run_goes_on_when_its_mlflow_server_is_lost_and_its_run_says_incomplete(ray_cluster, small_dir,
                                                                                        tmp_path, capsys):
    """The server answers at the start (the run is created with the profile's keys), then is lost before
    the first epoch is logged: one note, training goes on to its model; the server back, the run is
    there, not FINISHED, tagged incomplete."""
    server = MLflowServer(tmp_path).start()
    seen = threading.Event()

    def lose_the_server_once_the_run_exists() -> None:
        # created, then its params logged (one request: a profile has under 100 keys); the first
        # epoch comes after the TorchTrainer's start, seconds later
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("train.epochs" in r.data.params for r in server.runs("lost")):
            time.sleep(0.2)
        server.stop()
        seen.set()

    watcher = threading.Thread(target=lose_the_server_once_the_run_exists, daemon=True)
    watcher.start()
    items = tiny_overrides(small_dir, tmp_path / "results", **{"train.epochs": 3, "tracking.mlflow_uri": server.uri,
                                                               "tracking.experiment": "lost"})
    try:
        assert cli.train(["--name", "run", *set_args(items)]) == 0
        assert seen.wait(10)
        out = capsys.readouterr().out
        notes = [line for line in out.splitlines() if line.startswith("note: MLflow at ")]
        assert len(notes) == 1 and "stopped answering" in notes[0] and "the work goes on without it" in notes[0], out
        assert (tmp_path / "results" / "run" / "model.pt").is_file() and "epoch 3/3" in out
        server.start()
        (run,) = server.runs("lost")
        assert run.data.tags["lfa_ray.run"] == str(tmp_path / "results" / "run")
        assert run.data.tags["lfa_ray.kind"] == "train" and run.data.params["train.epochs"] == "3"
        assert run.info.status == "RUNNING" and run.data.tags["lfa_ray.complete"] == "false"
    finally:
        server.stop()


def test_once_the_server_is_lost_one_note_and_every_later_call_does_nothing(tmp_path, capsys):
    """What a sweep's Tune callback and its final run call, against a server gone before the first
    call: nothing raises (a raise in a Tune callback would end the sweep), one note in all."""
    from lfa_ray.storage import locate
    from lfa_ray.tracking import MLflowRuns, MLflowTrials

    runs = MLflowRuns(f"http://127.0.0.1:{_closed_port()}", "gone")
    folder = locate(tmp_path)
    assert runs.open(folder, "sweep", kind="sweep", params={"train.lr": "0.001"}) is None
    runs.epochs(None, [{"epoch": 1, "val_dice": 0.5}])
    runs.scores(None, {"test_dice_mean": 0.5})
    (tmp_path / "model.pt").write_bytes(b"weights")
    runs.artifact("some-run", folder / "model.pt")
    runs.close("some-run", "FINISHED")
    assert runs.find(folder) is None and runs.lost
    trials = MLflowTrials(runs.uri, "gone", folder)
    trials.runs = runs  # the lost client, as after a failure mid-sweep (setup() would make its own)
    trials.on_trial_result(1, [], type("Trial", (), {"trial_id": "t1"})(), {"epoch": 1, "val_dice": 0.5})
    out = capsys.readouterr().out
    assert out.count("note: MLflow at ") == 1 and "stopped answering" in out, out
