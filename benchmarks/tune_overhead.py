"""Overhead per Tune trial: trial wall time minus its epochs' compute, split into fixed and per-report.

    python benchmarks/tune_overhead.py [--trials 4] [--epochs 4] [--set KEY=VALUE ...]

Runs a sweep of ``--trials`` trials one at a time (no early stopping, so every
trial runs ``--epochs`` short epochs: 32 px, a narrow model) through the real
``lfa_ray.tune`` trainable. Per trial, from the reported ``time`` (epoch end)
and ``epoch_seconds`` metrics and the sweep's wall time:

- seconds per report = median over epochs 2.. of (epoch end - previous epoch end - epoch compute)
- fixed seconds per trial = (sweep wall / trials) - epochs x compute - (epochs - 1) x per-report
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
from lfa_ray.data import resolve_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from lfa_ray import ray_train, tune

    cfg = load_config(None, ["data.image_size=32", "model.features=[8,16]", f"tune.num_samples={args.trials}",
                             "tune.max_concurrent_trials=1", f"tune.scheduler.max_t={args.epochs}",
                             f"tune.scheduler.grace_period={args.epochs}", "train.checkpoint_every=1",
                             *args.overrides])
    root = resolve_root(cfg)
    t0 = time.perf_counter()
    ray_train.init_ray()
    ray_init = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as storage:
        exp = Path(storage) / "bench"
        exp.mkdir()
        tuner = tune.make_tuner(cfg, exp, str(root), early_stopping=False)
        t1 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t1
    per_report, compute, epochs = [], [], []
    for result in grid:
        df = result.metrics_dataframe.sort_values("epoch")
        ends, secs = df["time"].tolist(), df["epoch_seconds"].tolist()
        per_report += [b - a - s for a, b, s in zip(ends, ends[1:], secs[1:])]
        compute.append(sum(secs))
        epochs.append(len(df))
    report_s = statistics.median(per_report)
    trial_wall = wall / len(compute)
    fixed = trial_wall - statistics.mean(compute) - (statistics.mean(epochs) - 1) * report_s
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; ray.init {ray_init:.1f} s (once per sweep)")
    print(f"{len(compute)} trials x {statistics.mean(epochs):.0f} epochs, one at a time: sweep wall {wall:.1f} s, "
          f"trial wall {trial_wall:.1f} s, epoch compute {statistics.mean(compute):.2f} s per trial")
    print(f"per report: {report_s * 1000:.0f} ms (median of {len(per_report)}; target <= 50 ms)")
    print(f"fixed start/stop per trial: {fixed:.1f} s (target <= 4 s)")


if __name__ == "__main__":
    main()
