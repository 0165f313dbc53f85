"""``python -m lfa_ray.tune`` and ``lfa_ray.predict`` on a real local Ray cluster with real Optuna."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lfa_ray import cli, predict
from lfa_ray import evaluate as evaluation
from lfa_ray.checkpoint import latest_checkpoint
from lfa_ray.config import load_config
from lfa_ray.data import discover
from lfa_ray.images import read_mask
from lfa_ray.runlog import read_metrics
from lfa_ray.search import REFERENCE_POINT

from helpers import REPO, MLflowServer, error_line, kill_session, set_args, tiny_overrides, wandb_run

# bce+dice: Dice separates trials within 2 epochs at this size, so ASHA has something to cut.
SWEEP = {"data.image_size": 48, "model.features": "[8,16,32]", "train.loss": "bce+dice", "tune.num_samples": 5,
         "tune.scheduler.max_t": 6, "tune.scheduler.grace_period": 2, "tune.scheduler.reduction_factor": 2,
         "tune.search_space": "{train.lr: {loguniform: [1.0e-4, 3.0e-3]}, train.batch_size: {choice: [4, 8]},"
                              " train.aug_strength: {uniform: [0.0, 1.0]}}",
         "final.epochs": 14}


def _args(data, storage, *extra, **sets):
    return set_args(tiny_overrides(data, storage, **{**SWEEP, **sets})) + list(extra)


def _scalar_runs(root: Path, tag: str) -> set[str]:
    """Folders under root (relative paths: TensorBoard's run names) whose events hold scalar ``tag``."""
    found = set()
    for events in root.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0}).Reload()
        if tag in acc.Tags()["scalars"]:
            found.add(events.parent.relative_to(root).as_posix())
    return found


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    both = pred.sum() + truth.sum()
    return 1.0 if both == 0 else 2 * float((pred & truth).sum()) / both


@pytest.mark.e2e
def test_sweep_asha_final_tensorboard_and_predict(ray_cluster, synth_dir, small_dir, tmp_path, capsys):
    # One trial at a time: ASHA's cut depends on the order results reach a rung, and with
    # concurrent trials that order (and so whether any trial is stopped) varies from run to run.
    # The final retrain trains its refining model too (briefly).
    two_stage = {"tune.max_concurrent_trials": 1, "refine.image_size": 32, "refine.epochs": 2, "refine.per_photo": 1}
    assert cli.tune(["--name", "sw", *_args(synth_dir, tmp_path, **two_stage)]) == 0
    exp = tmp_path / "sw"
    out = capsys.readouterr().out
    assert "best config:" in out and f"tensorboard --logdir {exp}" in out
    assert f"refined by {exp / 'final' / 'refine' / 'model.pt'}" in out
    # the final retrain's epochs and its refining model's, as lfa_ray prints them (not Ray's worker lines)
    assert "final epoch 14/14: val_dice " in out and "refining model epoch 2/2: val_dice " in out
    assert "RayTrainWorker" not in out
    assert [r["epoch"] for r in read_metrics(exp / "final" / "refine" / "metrics.csv")] == [1.0, 2.0]

    table = pd.read_parquet(exp / "trials.parquet")
    assert len(table) == 5 and table["trial_id"].is_unique
    assert (table["status"] == "TERMINATED").all()
    first = table.sort_values("trial_id").iloc[0]  # trial ids start with the searcher's order
    searched = load_config(exp / "config.yaml").tune.search_space
    assert {k: first[k] for k in searched} == {k: REFERENCE_POINT[k] for k in searched}  # the original's went first
    assert table["stopped_early"].any(), table  # ASHA cut at least one trial short
    assert (table.loc[table.stopped_early, "epochs"] < 6).all()
    assert len({round(v, 12) for v in table["train.lr"]}) == 5  # the searcher proposed distinct points
    assert len(pd.read_csv(exp / "trials.csv")) == 5

    best = load_config(exp / "best_config.yaml")
    assert best.train.epochs == 14
    assert best.scaling.cpus_per_worker == ray_cluster.cluster_resources()["CPU"] > 1  # the final retrain runs alone
    best_trial = table.loc[table["best_val_dice"].idxmax()]
    assert best.train.lr == pytest.approx(best_trial["train.lr"])
    final_rows = pd.read_csv(exp / "final" / "metrics.csv")
    # 96 varied photos at 48 px are a hard set: the final model learnt the window, not all of it
    assert final_rows["val_dice"].max() > 0.35, final_rows
    assert (exp / "final" / "model.pt").is_file()
    summary = (exp / "summary.md").read_text()
    assert "trials_val_dice.png" in summary and (exp / "trials_val_dice.png").stat().st_size > 0
    assert (exp / "params_vs_metric.png").stat().st_size > 0
    assert "What mattered: train." in summary and "fANOVA over 5 trials" in summary  # (test_report: which one)
    assert "  what mattered: train." in out
    # the final model scored once on the held-out test split (data.test_fraction), beside val
    test = json.loads((exp / "final" / "test" / "summary.json").read_text())
    assert test["images"] == len(pd.read_csv(exp / "final" / "test" / "per_image.csv")) > 0
    assert f"Test split ({test['images']} photos" in summary
    # that score is the two stages'; the refining model here had 2 epochs (tests/test_refine.py shows
    # one that learnt), so whether the window model learnt is checked on its own
    alone = evaluation.run(str(exp), out=str(tmp_path / "ev"), refine="none")
    assert alone["images"] == test["images"] and alone["dice_mean"] > 0.45, alone
    assert [e.step for e in EventAccumulator(str(exp / "final")).Reload().Scalars("test_dice")] == [len(final_rows)]

    # TensorBoard: every trial's run and the final run write the same tag, so one chart overlays them;
    # the final run has val and test overlays and an HParams entry, as every trial does (Tune's logger).
    runs = _scalar_runs(exp, "val_dice")
    assert {f"trial_{t}/train" for t in table["trial_id"]} | {"final"} <= runs, runs
    final_events = EventAccumulator(str(exp / "final"), size_guidance={"images": 0}).Reload()
    assert final_events.Images("val/overlay") and final_events.Images("test/worst")
    assert final_events.PluginTagToContent("hparams")
    for trial_id in table["trial_id"]:
        assert EventAccumulator(str(exp / f"trial_{trial_id}")).Reload().PluginTagToContent("hparams")

    # predict with the sweep folder on synthetic photos it never saw
    pairs = discover(small_dir).pairs
    written = predict.run(str(exp), str(small_dir / "train_images"), str(tmp_path / "pred"), refine="none")
    assert len(written) == len(pairs)
    scores = []
    for pair in pairs:
        mask = np.asarray(Image.open(tmp_path / "pred" / f"{pair.name}_mask.png")) > 0
        truth = read_mask(pair.mask).astype(bool)
        assert mask.shape == truth.shape  # the image's own size, not the training size
        scores.append(_dice(mask, truth))
    assert np.mean(scores) > 0.3, scores
    assert (tmp_path / "pred" / f"{pairs[0].name}_overlay.png").is_file()

    # A final retrain that did not finish exporting: --resume redoes only the final step, from its
    # own checkpoints; no trial runs again.
    trial_logs = {p: p.read_text() for p in exp.glob("trial_*/result.json")}
    final_ckpts = sorted(p.name for p in (exp / "final").glob("checkpoint_epoch_*"))
    (exp / "final" / "model.pt").unlink()
    # --resume refuses a changed key, naming it, and accepts the sweep's own command (up-arrow, add --resume)
    changed = {**two_stage, "tune.num_samples": 6}
    assert cli.tune(["--resume", "--name", "sw", *_args(synth_dir, tmp_path, **changed)]) == 2
    assert "--resume: tune.num_samples is 6 in this command but 5 in" in error_line(capsys)
    refiner = (exp / "final" / "refine" / "model.pt").read_bytes()
    # the final retrain fails as train fails: one line, naming the command that continues it
    state = latest_checkpoint(exp / "final") / "state.pt"
    good = Path(state.path).read_bytes()
    Path(state.path).write_bytes(b"not a checkpoint")
    assert cli.tune(["--name", "sw", *_args(synth_dir, tmp_path, **two_stage), "--resume"]) == 2
    # (Ray forwards its controller's log of the worker's error, prefixed "(TrainController pid=…)")
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: the final retrain failed: {state}: not a checkpoint lfa_ray can load"), line
    assert line.endswith(f"; continue it with: python -m lfa_ray.tune --resume --name sw "
                         f"--set storage.path={tmp_path}"), line
    Path(state.path).write_bytes(good)
    assert cli.tune(["--name", "sw", *_args(synth_dir, tmp_path, **two_stage), "--resume"]) == 0
    assert (exp / "final" / "model.pt").is_file()
    assert (exp / "final" / "refine" / "model.pt").read_bytes() == refiner  # done already: not trained again
    assert {p: p.read_text() for p in exp.glob("trial_*/result.json")} == trial_logs
    assert sorted(p.name for p in (exp / "final").glob("checkpoint_epoch_*")) == final_ckpts
    assert len(pd.read_csv(exp / "final" / "metrics.csv")) == len(final_rows)


def _wait_for(found, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := found():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


@pytest.mark.e2e
def test_a_sweep_lost_and_then_stopped_resumes_without_rerunning_or_forgetting_finished_trials(small_dir, tmp_path):
    """Two interruptions of one sweep. The driver is killed (a lost machine) just after trial 001 finished:
    Tune saves its state every few seconds and records results after Train reports them, so its record
    may lag; Train's own record of the trial brings its results back, whole, and it is not re-run
    (KeepTrialLogs). The resumed sweep is then stopped with SIGTERM (``ray job stop``, a container's
    stop) while trial 002, its last, runs: as Ctrl-C would (Tune marks the trial TERMINATED, as if it
    had finished), exiting 143, without a native stack dump; it names the command that continues it,
    and that command finishes the sweep with a readable console. The sweep is also tracked, in a
    real MLflow server and in W&B offline: three starts of one sweep are one parent run, a child per
    trial and one for the final retrain, each epoch logged once. (A streamed sweep stopped and
    resumed: tests/test_storage.py, from a bucket.)"""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    base = [sys.executable, "-m", "lfa_ray.tune", "--name", "int"]
    (tmp_path / "mlflow").mkdir()
    server = MLflowServer(tmp_path / "mlflow").start()
    extra = {"tracking.mlflow_uri": server.uri, "tracking.experiment": "lfa-int", "tracking.wandb": "true"}
    sets = _args(small_dir, tmp_path, **extra, **{"tune.num_samples": 2, "tune.max_concurrent_trials": 1,
                                          "tune.scheduler.max_t": 3, "tune.scheduler.grace_period": 1,
                                          "final.epochs": 1})
    exp = tmp_path / "int"
    proc = subprocess.Popen(base + sets, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)

    def first_finished():
        for metrics in exp.glob("trial_001_*/train/metrics.csv"):
            rows = read_metrics(metrics)
            if rows and rows[-1]["run_finished"]:
                return rows
        return None

    finished = _wait_for(first_finished, "trial 001 finishing")
    kill_session(proc.pid)  # the driver and its local Ray cluster, like a lost machine, while Tune may lag
    proc.wait()

    command = base + ["--resume", "--set", f"storage.path={tmp_path}"]
    log = open(tmp_path / "second.log", "w")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_for(lambda: re.search(r"trial_002_\w+ started: ", (tmp_path / "second.log").read_text()),
              "trial 002 starting in the resumed sweep")
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    kill_session(proc.pid)
    second = (tmp_path / "second.log").read_text()
    # no traceback of the driver's and no native dump (a trial's worker cut short mid-report may print its
    # own, prefixed "(RayTrainWorker pid=...)", as with Ctrl-C)
    driver_traceback = any(line.startswith("Traceback") for line in second.splitlines())
    assert code == 143 and not driver_traceback and "Fatal Python error" not in second, second[-4000:]
    last = next(line for line in second.splitlines() if line.startswith("stopped: "))
    assert last.startswith("stopped: sweep stopped before all 2 trials finished; continue it with: ")
    printed = last.split("continue it with: ")[1]
    assert printed == f"python -m lfa_ray.tune --resume --name int --set storage.path={tmp_path}"
    first = next(exp.glob("trial_001_*"))
    first_results = (first / "result.json").read_text()
    assert [json.loads(line)["epoch"] for line in first_results.splitlines()] == [int(r["epoch"]) for r in finished]
    assert not (exp / "final").exists() and "retraining the best config" not in second

    resumed = subprocess.run([sys.executable, *printed.split()[1:]], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # the console: a line per trial event with the trial's name and a progress line, not Ray's chatter
    console = resumed.stdout + resumed.stderr
    assert "data: streamed with Ray Data" not in console
    newest = sorted(p.name for p in exp.glob("trial_002_*"))[0]
    assert f"{newest} started: aug_strength=" in console and f"{newest} epoch 1/3: val_dice " in console
    assert "[2/2 trials done | best val_dice " in console
    for noise in ("Reporting training result", "PreemptionWatcher", "To visualize your results with TensorBoard",
                  "Trial status:", "A new study created"):
        assert noise not in console, noise
    trials = sorted(p.name for p in exp.glob("trial_*"))
    assert len(trials) == 2 and len({t.split("_")[1] for t in trials}) == 2
    # trial 001: whole, not re-run, not blanked, its score in the table
    assert (first / "result.json").read_text() == first_results
    assert read_metrics(first / "train" / "metrics.csv") == finished
    table = pd.read_parquet(exp / "trials.parquet").set_index("trial_id")
    assert len(table) == 2
    row = table.loc[first.name.removeprefix("trial_")]
    assert row["status"] == "TERMINATED" and row["best_val_dice"] == max(r["val_dice"] for r in finished)
    assert (exp / "final" / "model.pt").is_file()
    _check_tracked(server, exp, table, finished)
    server.stop()


def _check_tracked(server, exp: Path, table: pd.DataFrame, finished: list[dict]) -> None:
    """The sweep of the test above in MLflow (read back through its client) and in W&B's offline files."""
    from mlflow import MlflowClient

    client = MlflowClient(server.uri)
    runs = server.runs("lfa-int")
    kinds = sorted(r.data.tags["lfa_ray.kind"] for r in runs)
    assert kinds == ["final", "sweep", "trial", "trial"], kinds  # not one more per start of the sweep
    by_folder = {r.data.tags["lfa_ray.run"]: r for r in runs}
    sweep, final = by_folder[str(exp)], by_folder[str(exp / "final")]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["lfa_ray.complete"] == "true", r.data.tags
        assert r is sweep or r.data.tags["mlflow.parentRunId"] == sweep.info.run_id
    test = json.loads((exp / "final" / "test" / "summary.json").read_text())
    assert final.data.metrics["test_dice_mean"] == pytest.approx(test["dice_mean"])
    assert sweep.data.metrics["test_dice_mean"] == pytest.approx(test["dice_mean"])
    assert final.data.params["final.epochs"] == "1" and sweep.data.params["tune.num_samples"] == "2"
    # the model exported from the sweep joins the final's run
    assert cli.export(["--checkpoint", str(exp), "--format", "onnx", "--out", str(exp.parent / "phone")]) == 0
    assert {"model.pt", "summary.md", "phone.onnx"} <= {a.path for a in client.list_artifacts(final.info.run_id)}
    assert {"summary.md", "trials.csv"} <= {a.path for a in client.list_artifacts(sweep.info.run_id)}

    def history(run, key="val_dice") -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    final_rows = read_metrics(exp / "final" / "metrics.csv")
    assert history(final) == [(r["epoch"], pytest.approx(r["val_dice"])) for r in final_rows]
    for trial_dir in exp.glob("trial_*"):
        run = by_folder[str(trial_dir)]
        steps = [step for step, _ in history(run)]
        assert len(steps) == len(set(steps)) and steps[0] == 1, steps  # each epoch once, however many starts
        row = table.loc[trial_dir.name.removeprefix("trial_")]
        assert float(run.data.params["train.lr"]) == pytest.approx(row["train.lr"])
        assert run.data.tags["stopped_early"] == str(bool(row["stopped_early"]))
    first = by_folder[str(next(exp.glob("trial_001_*")))]
    assert history(first) == [(r["epoch"], pytest.approx(r["val_dice"])) for r in finished]

    wandb = wandb_run(exp / "wandb")
    trial_ids = {p.name.rsplit("_", 1)[1] for p in exp.glob("trial_*")}
    assert trial_ids < set(wandb), sorted(wandb)
    assert all(run["project"] == "lfa-int" and run["group"] == "int" for run in wandb.values())
    (w_final,) = [run for run in wandb.values() if run["name"] == "int/final"]
    assert w_final["summary"]["test_dice_mean"] == pytest.approx(test["dice_mean"])
    assert {step: row["val_dice"] for step, row in w_final["history"].items()} == {
        r["epoch"]: pytest.approx(r["val_dice"]) for r in final_rows}


@pytest.mark.slow
def test_a_restarted_trial_continues_its_stored_logs(ray_cluster, tmp_path):
    """A resumed sweep's driver stages each trial's logs in a new folder: KeepTrialLogs brings the
    stored result.json and progress.csv there before Tune appends to them (a first start: none)."""
    from ray.train._internal.storage import StorageContext
    from ray.tune import register_trainable
    from ray.tune.experiment import Trial

    from lfa_ray.tune import KeepTrialLogs

    register_trainable("lfa_ray_logs_test", lambda config: None)
    trials = {}
    for name in ("trial_001_a", "trial_002_b"):
        storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name=name)
        trials[name] = Trial("lfa_ray_logs_test", config={}, storage=storage, trial_id=name[-1])
        trials[name].init_local_path()  # names the trial's folders, as Tune has when a trial starts
    stored = Path(trials["trial_001_a"].path)
    stored.mkdir(parents=True)
    (stored / "result.json").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    (stored / "progress.csv").write_text("epoch\n1\n2\n")
    for trial in trials.values():
        KeepTrialLogs().on_trial_start(0, list(trials.values()), trial)
    staged = Path(trials["trial_001_a"].local_path)
    assert staged != stored
    assert (staged / "result.json").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    assert (staged / "progress.csv").read_text() == "epoch\n1\n2\n"
    assert not any(Path(trials["trial_002_b"].local_path).iterdir())  # a trial's first start


@pytest.mark.slow
def test_stop_at_ends_the_sweep_and_the_best_so_far_is_retrained(ray_cluster, small_dir, tmp_path, capsys):
    sets = _args(small_dir, tmp_path, **{"tune.num_samples": 4, "tune.max_concurrent_trials": 1,
                                         "tune.stop_at": 0.0, "final.epochs": 1})
    assert cli.tune(["--name", "stop", *sets]) == 0
    exp = tmp_path / "stop"
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == 1  # one at a time: a val_dice >= 0 ends it at the first report
    assert "sweep ended after 1 of 4 trials: val_dice 0 reached (tune.stop_at)" in capsys.readouterr().out
    assert "val_dice 0 reached (tune.stop_at)" in (exp / "summary.md").read_text()
    assert (exp / "final" / "model.pt").is_file()


@pytest.mark.slow
def test_an_errored_trials_cause_is_one_readable_line(ray_cluster):
    """Ray hands a trial's error back wrapped, its text starting with a colour-coded ray:: header."""
    import ray

    from lfa_ray.report import error_line
    from lfa_ray.tune import TrialFailed

    @ray.remote
    def trial():
        raise TrialFailed("training diverged at epoch 3: train_loss is nan (learning rate 0.5)")

    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(trial.remote())
    assert "\x1b[" in str(info.value) or "ray::" in str(info.value)
    assert error_line(info.value) == "training diverged at epoch 3: train_loss is nan (learning rate 0.5)"


def test_a_trial_stopped_before_its_first_result_is_a_row_without_scores(tmp_path):
    """Ctrl-C between a trial's creation and its first report leaves a Result with no metrics (and so
    no config): the table still has its row, unscored, beside the trial that ran."""
    from ray.tune import Result

    from lfa_ray.config import load_config
    from lfa_ray.report import collect

    cfg = load_config(REPO / "tune_configs" / "default.yaml")
    params = {k: 0.5 if k != "train.batch_size" else 4 for k in cfg.tune.search_space}
    curve = pd.DataFrame({"epoch": [1, 2], "val_dice": [0.3, 0.6], "val_loss": [0.9, 0.5], "train_loss": [1.0, 0.7],
                          "run_finished": [0, 1], "time_total_s": [3.0, 6.0]})
    ran = Result(metrics={"config": params, "val_dice": 0.6}, checkpoint=None, error=None,
                 path=str(tmp_path / "trial_001_aa"), metrics_dataframe=curve)
    unstarted = Result(metrics={}, checkpoint=None, error=None, path=str(tmp_path / "trial_002_bb"))
    table, curves = collect([unstarted, ran], cfg)
    assert list(table["trial_id"]) == ["001_aa", "002_bb"]
    assert table.loc[0, "best_val_dice"] == 0.6 and table.loc[0, "epochs"] == 2
    assert np.isnan(table.loc[1, "best_val_dice"]) and table.loc[1, "epochs"] == 0
    assert table.loc[1, "train.lr"] is None or np.isnan(table.loc[1, "train.lr"])
    assert len(curves) == 2


def test_what_mattered_is_the_parameter_the_score_follows(tmp_path, monkeypatch):
    """fANOVA over a sweep's trials names the searched key its best val_dice follows, first and with
    most of the variance; summary.md, the TensorBoard text tab and the plot over the top two say so."""
    from lfa_ray.config import load_config
    from lfa_ray.report import importance_line, importances, write_summary
    from lfa_ray.storage import locate

    cfg = load_config(None, ["tune.search_space={train.lr: {loguniform: [1.0e-5, 1.0e-2]}, "
                             "train.batch_size: {choice: [4, 8, 16]}, model.features: {choice: [[8, 16], [16, 32]]}, "
                             "train.aug_strength: {uniform: [0.0, 1.0]}}"])
    rng = np.random.default_rng(0)
    n = 30
    lr = 10 ** rng.uniform(-5, -2, n)
    table = pd.DataFrame({"trial_id": [f"{i:03d}_x" for i in range(n)], "train.lr": lr,
                          "train.batch_size": rng.choice([4, 8, 16], n),
                          "model.features": [[8, 16] if i % 2 else [16, 32] for i in range(n)],
                          "train.aug_strength": rng.uniform(0, 1, n),
                          # the score follows lr alone: best near 1e-3.5, falling off either side
                          "best_val_dice": 0.9 - 0.2 * np.abs(np.log10(lr) + 3.5) + rng.normal(0, 0.005, n),
                          "last_val_dice": 0.5, "epochs": 4, "stopped_early": False, "status": "TERMINATED"})
    shares, used, _ = found = importances(table, cfg)
    assert used == n and set(shares) == set(cfg.tune.search_space)
    assert next(iter(shares)) == "train.lr" and shares["train.lr"] > 0.5, shares  # the others are noise
    assert importances(table.head(1), cfg).shares == {}  # one trial says nothing, and says so
    assert importance_line(importances(table.head(1), cfg), "val_dice") == (
        "not worked out: too few trials reported val_dice")
    alike = table.assign(best_val_dice=0.0042)  # trials that all learnt nothing (the GPU suite's smoke sweep)
    assert importances(alike, cfg).why == "every trial scored the same val_dice"
    with monkeypatch.context() as m:  # an environment without scikit-learn (the GPU box's bundle): a line, no crash
        m.setitem(sys.modules, "sklearn", None)
        assert importances(table, cfg).why.startswith("scikit-learn is not installed")

    exp = locate(tmp_path / "sw")
    exp.mkdir()
    curves = pd.DataFrame({"trial_id": table["trial_id"], "epoch": 1, "val_dice": table["best_val_dice"],
                           "val_loss": 0.5})
    write_summary(exp, cfg, table, curves,
                  {"train.lr": 3e-4}, {"val_dice": 0.8, "epoch": 4}, exp / "final" / "model.pt",
                  mattered=found)
    summary = (exp / "summary.md").read_text()
    assert f"What mattered: train.lr {shares['train.lr']:.2f}, " in summary and f"over {n} trials" in summary
    assert "![top_params.png](top_params.png)" in summary and (tmp_path / "sw" / "top_params.png").stat().st_size
    events = EventAccumulator(str(tmp_path / "sw"), size_guidance={"tensors": 0}).Reload()
    [text] = events.Tensors("what_mattered/text_summary")
    assert b"What mattered: train.lr" in text.tensor_proto.string_val[0]


@pytest.mark.parametrize("space, fragment", [
    ("{train.lr: {normal: [0, 1]}}", "unknown distribution 'normal'"),
    ("{train.lr: {uniform: [0.1, 0.01]}}", "low must be below high"),
    ("{train.lr: {loguniform: [0, 0.01]}}", "loguniform bounds must be above 0"),
    ("{train.learning_rate: {uniform: [0.1, 0.2]}}", "train.learning_rate: unknown profile key"),
    ("{train.batch_size: {choice: []}}", "choice needs a non-empty list"),
    ("{train.batch_size: {choice: [0, 8]}}", "value 0 is not valid for train.batch_size"),
    ("{}", "tune.search_space is empty"),
    ("{train.aug_strength: {uniform: [0, .inf]}}", "uniform bounds must be finite numbers, got [0, inf]"),
])
def test_invalid_search_space_is_refused_before_ray_starts(tmp_path, small_dir, capsys, space, fragment):
    assert cli.tune(["--name", "bad", *_args(small_dir, tmp_path, **{"tune.search_space": space})]) == 2
    assert fragment in error_line(capsys)
    assert not (tmp_path / "bad").exists()


def test_other_bad_tune_input(tmp_path, small_dir, capsys):
    assert cli.tune(["--name", "bad", *_args(small_dir, tmp_path, **{"tune.num_samples": 0})]) == 2
    assert "tune.num_samples must be at least 1" in error_line(capsys)
    assert cli.tune(["--resume", "--name", "nope", "--set", f"storage.path={tmp_path}"]) == 2
    assert "no such sweep" in error_line(capsys)
    run = tmp_path / "a_train_run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    assert cli.tune(["--resume", "--name", "a_train_run", "--set", f"storage.path={tmp_path}"]) == 2
    assert "is not a tune experiment" in error_line(capsys)
    before = sorted(p.name for p in run.iterdir())
    assert cli.tune(["--name", "a_train_run", *_args(small_dir, tmp_path)]) == 2
    assert "already exists; continue it with --resume" in error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == before
    assert cli.tune(["--restart-errored", "--name", "x"]) == 2
    assert "--restart-errored applies to --resume" in error_line(capsys)


def test_predict_bad_input(tmp_path, capsys):
    assert cli.predict(["--checkpoint", str(tmp_path / "none"), str(tmp_path)]) == 2
    assert "no model here" in error_line(capsys)
    (tmp_path / "model.pt").write_bytes(b"junk")
    assert cli.predict(["--checkpoint", str(tmp_path), str(tmp_path / "missing.jpg")]) == 2
    assert "not an lfa_ray model" in error_line(capsys)


def test_the_progress_line_never_promises_beyond_the_time_budget(capsys):
    from types import SimpleNamespace

    from lfa_ray.progress import Progress

    trials = [SimpleNamespace(trial_id=str(i), status="TERMINATED" if i < 2 else "RUNNING") for i in range(4)]
    for budget, expected in ((None, "for the trials"), (3600.0, "for the trials"), (5.0, "(time budget)")):
        progress = Progress(100, "val_dice", "max", 8, budget)
        progress.started -= 2.0  # two trials done in two seconds: 98 left take ~98 s
        progress._progress(trials, trials[1])
        line = capsys.readouterr().out
        assert line.startswith("[2/100 trials done") and expected in line, line
        if budget == 5.0:
            assert "ETA ~3s (time budget)" in line or "ETA ~2s (time budget)" in line, line


def test_the_time_budget_keeps_what_the_trials_say_the_final_retrain_needs():
    from lfa_ray import tune
    from lfa_ray.tune import Budget

    running = set(tune.STARTED)  # the trials running (none here; an earlier test's stopped sweep may have left some)
    tune.STARTED.clear()
    try:
        _plan_the_final(tune, Budget)
    finally:
        tune.STARTED.clear()
        tune.STARTED.update(running)


def _plan_the_final(tune, Budget) -> None:
    plan = Budget(100.0, final_epochs=11, refine_epochs=4.0)
    assert plan.after() == 0.0  # nothing measured yet: a plain time limit
    plan("a", {"time_this_iter_s": 12.0, "epoch_seconds": 3.0})
    assert plan.after() == 12.0 + 10 * 3.0 + (12.0 - 3.0 + 4 * 3.0)  # no later epoch yet: the first's own
    plan("b", {"time_this_iter_s": 9.0, "epoch_seconds": 3.0})
    for trial in ("a", "b"):
        for took in (2.0, 2.0, 4.0):
            plan(trial, {"time_this_iter_s": took, "epoch_seconds": 1.5})
    plan("c", {"time_this_iter_s": 0.01, "epoch_seconds": 2.0})  # replayed at once: its recorded seconds
    # the slowest start and first epoch, 10 later epochs at the median 2 s; the refining model: a start
    # of its own and 4 epochs' worth
    assert plan.after() == 12.0 + 10 * 2.0 + (12.0 - 2.0 + 4 * 2.0)
    plan.left = 51.0
    assert not plan.stop_all()
    plan.left = 49.9
    assert plan.stop_all() and 49.0 < plan.kept <= 49.9
    tune.STARTED.update({"a", "b"})  # two trials sharing the machine: the final runs alone, twice as fast
    plan("b", {"time_this_iter_s": 8.0, "epoch_seconds": 7.0})
    plan("b", {"time_this_iter_s": 8.0, "epoch_seconds": 7.0})
    tune.STARTED.clear()
    assert plan.after() == 12.0 + 10 * 3.0 + (12.0 - 3.0 + 4 * 3.0)  # the median of 2, 2, 4, 2, 2, 4, 4, 4
    assert Budget(100.0)("a", {"time_this_iter_s": 5.0}) is False  # a plain budget plans for nothing after
    plain = Budget(100.0)
    plain("a", {"time_this_iter_s": 50.0})
    assert plain.after() == 0.0


@pytest.mark.slow
def test_a_time_budget_stops_the_trials_early_enough_for_the_final_retrain(ray_cluster, tmp_path):
    from lfa_ray import tune
    from lfa_ray.config import load_config
    from lfa_ray.storage import locate

    def timed_trial(params: dict, *, base: dict, **_) -> None:  # defined here: Ray pickles it by value
        """Reports ``max_t`` epochs of 0.3 s each from Tune's trial process, and trains nothing."""
        from ray import tune

        for epoch in range(1, base["train"]["epochs"] + 1):
            time.sleep(0.3)
            tune.report({"epoch": epoch, "epoch_seconds": 0.3, "val_dice": 0.1 * epoch, "run_finished": 0})

    cfg = load_config(None, ["tune.time_budget_s=10", "final.epochs=20", "refine.image_size=null",
                             "tune.num_samples=30", "tune.max_concurrent_trials=1", "tune.scheduler.max_t=3",
                             "tune.search_space={train.lr: {loguniform: [1.0e-4, 1.0e-2]}}"])
    tuner = tune.make_tuner(cfg, locate(str(tmp_path)) / "budget", None, trial=timed_trial, spent_before=1.0)
    tune.STARTED.clear()  # as a sweep's command starts (an earlier test's stopped sweep may have left some)
    tune.BUDGET_SPENT.clear()
    grid = tuner.fit()
    assert 1 <= len(grid) < 30 and not grid.errors
    # what the trials measured: a start and first epoch, and 19 more epochs of >= 0.3 s for the final
    spent = tune.BUDGET_SPENT
    assert spent["seconds"] == 10 and spent["after"] >= 0.3 + 19 * 0.3 and spent["kept"] <= spent["after"]
    assert "the final retrain's" in tune.why_ended_early(cfg, grid.get_dataframe().assign(best_val_dice=0.1))
