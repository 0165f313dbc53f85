"""Overhead per Tune trial: trial wall time minus its epochs' compute, split into fixed and per-report.

    python benchmarks/tune_overhead.py [--trials 4] [--epochs 4] [--set KEY=VALUE ...]

Runs a sweep of ``--trials`` trials one at a time (no early stopping, so every
trial runs ``--epochs`` short epochs: 32 px, a narrow model) through the real
``lfa_ray.tune`` trainable. Per trial, from the reported ``time`` (epoch end)
and ``epoch_seconds`` metrics and the sweep's wall time:

- seconds per report = median over epochs 2.. of (epoch end - previous epoch end - epoch compute)
- fixed seconds per trial = (sweep wall / trials) - epochs x compute - (epochs - 1) x per-report

Then the same sweep again with a bare trial: a 1-worker TorchTrainer whose train
function only reports (no data, no model), wired like lfa_ray's trial. Its fixed
seconds are Ray Tune + Ray Train's own floor for one trial in this pattern; the
difference is what lfa_ray's trial adds (imports, data, model, checkpoints). And
once more with a Tune-only trial that reports from Tune's own trial process (no
TorchTrainer): Ray Tune's floor alone, so the difference is what Ray Train's
controller and worker actors cost per trial. Last, lfa_ray's own training run in
Tune's trial process (``lfa_ray.loop.fit`` reporting with ``tune.report``, no
checkpoints): what a trial without Ray Train would cost.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from lfa_ray.config import load_config
from lfa_ray.data import load_for, resolve_root
from lfa_ray.storage import locate


def bare_trial(params: dict, *, base: dict, data, exp_dir, **_) -> None:
    """A trial that reports ``train.epochs`` times and does nothing else (Ray's floor)."""
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    def train(config: dict) -> None:
        import ray.train

        for epoch in range(1, config["epochs"] + 1):
            ray.train.report({"epoch": epoch, "time": time.time(), "epoch_seconds": 0.0, "val_dice": 0.0,
                              "run_finished": int(epoch == config["epochs"])})

    from lfa_ray.ray_internals import fast_reports

    fast_reports()  # the controller's report polling lfa_ray's trials have (ray_train.make_trainer)
    TorchTrainer(train, train_loop_config={"epochs": base["train"]["epochs"]},
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(name="train",
                                      storage_path=f"{exp_dir.path}/{tune.get_context().get_trial_name()}",
                                      callbacks=[TuneReportCallback()])).fit()


def tune_only_trial(params: dict, *, base: dict, **_) -> None:
    """A trial that reports ``train.epochs`` times from Tune's trial process, with no Ray Train."""
    from ray import tune

    for epoch in range(1, base["train"]["epochs"] + 1):
        tune.report({"epoch": epoch, "time": time.time(), "epoch_seconds": 0.0, "val_dice": 0.0,
                     "run_finished": int(epoch == base["train"]["epochs"])})


def in_trial_process(params: dict, *, base: dict, data, **_) -> None:
    """lfa_ray's training in Tune's trial process (no TorchTrainer, no checkpoints), one CPU."""
    import ray
    import torch
    from ray import tune

    from lfa_ray.config import config_from_dict
    from lfa_ray.data import build_datasets
    from lfa_ray.loop import build, fit, make_loaders
    from lfa_ray.search import apply_params

    cfg = apply_params(config_from_dict(base), params)
    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    train_ds, val_ds = build_datasets(cfg, ray.get(data.ref))
    train_loader, val_loader = make_loaders(train_ds, val_ds, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    device = torch.device("cpu")
    fit(cfg, build(cfg, device), train_loader, val_loader, device,
        on_epoch=lambda result: tune.report(dict(result.metrics)))


def measure(cfg, data, trial=None) -> dict:
    """Run the sweep; per-report and fixed seconds from the reported epoch ends."""
    from lfa_ray import tune

    with tempfile.TemporaryDirectory() as storage:
        exp = Path(storage) / "bench"
        exp.mkdir()
        tuner = tune.make_tuner(cfg, locate(exp), data, early_stopping=False, trial=trial or tune.trial_fn)
        t1 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t1
    per_report, compute, epochs = [], [], []
    for result in grid:
        df = result.metrics_dataframe.sort_values("epoch")
        ends, secs = df["time"].tolist(), df["epoch_seconds"].tolist()
        per_report += [b - a - s for a, b, s in zip(ends, ends[1:], secs[1:], strict=False)]
        compute.append(sum(secs))
        epochs.append(len(df))
    report_s = statistics.median(per_report)
    trial_wall = wall / len(compute)
    return {"wall": wall, "trials": len(compute), "epochs": statistics.mean(epochs), "trial_wall": trial_wall,
            "compute": statistics.mean(compute), "report_s": report_s,
            "fixed": trial_wall - statistics.mean(compute) - (statistics.mean(epochs) - 1) * report_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from lfa_ray import ray_train

    cfg = load_config(None, ["data.image_size=32", "model.features=[8,16]", f"tune.num_samples={args.trials}",
                             "tune.max_concurrent_trials=1", f"tune.scheduler.max_t={args.epochs}",
                             f"tune.scheduler.grace_period={args.epochs}", "train.checkpoint_every=1",
                             *args.overrides])
    loaded = load_for(cfg, resolve_root(cfg))
    t0 = time.perf_counter()
    ray_train.init_ray()
    ray_init = time.perf_counter() - t0
    data = ray_train.share(loaded)
    ours = measure(cfg, data)
    bare = measure(cfg, data, trial=bare_trial)  # the same Tuner, trial function swapped
    tune_only = measure(cfg, data, trial=tune_only_trial)
    in_trial = measure(cfg, data, trial=in_trial_process)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; ray.init {ray_init:.1f} s (once per sweep)")
    for name, r in (("lfa_ray trial", ours), ("bare TorchTrainer trial", bare), ("Tune-only trial", tune_only),
                    ("lfa_ray's training in Tune's trial process", in_trial)):
        print(f"{name}: {r['trials']} trials x {r['epochs']:.0f} epochs, one at a time: sweep wall {r['wall']:.1f} s, "
              f"trial wall {r['trial_wall']:.1f} s, epoch compute {r['compute']:.2f} s per trial; "
              f"per report {r['report_s'] * 1000:.0f} ms; fixed {r['fixed']:.1f} s")
    print(f"per report: {ours['report_s'] * 1000:.0f} ms (target <= 50 ms)")
    print(f"fixed start/stop per trial: {ours['fixed']:.1f} s (target <= 6 s), of which Ray Tune + Train's own "
          f"floor {bare['fixed']:.1f} s and lfa_ray's trial set-up {ours['fixed'] - bare['fixed']:.1f} s; "
          f"of the floor, Ray Tune's own {tune_only['fixed']:.1f} s and Ray Train's actors "
          f"{bare['fixed'] - tune_only['fixed']:.1f} s")
    print(f"lfa_ray's training in Tune's trial process, no Ray Train: fixed {in_trial['fixed']:.1f} s per trial")

if __name__ == "__main__":
    main()
