"""Tuning efficiency on the synthetic task: TPE + ASHA vs random search without early stopping.

    python benchmarks/tune_efficiency.py [--budget 300] [--target 0.9] [--set KEY=VALUE ...]

Both sweeps run the default profile (plus ``--set``) on the same data, with the
same seed, the same concurrency and the same wall-clock budget (``time_budget_s``,
with more samples than fit). Printed per sweep: trials started, epochs trained,
best val_dice reached and the seconds from the sweep's start until some trial
first reached ``--target``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

from lfa_ray.config import load_config
from lfa_ray.data import load_for, resolve_root
from lfa_ray.storage import locate


def sweep(cfg, data, *, search: str, early_stopping: bool, budget: float, target: float) -> dict:
    from lfa_ray import tune

    with tempfile.TemporaryDirectory() as storage:
        exp = Path(storage) / search
        exp.mkdir()
        tuner = tune.make_tuner(cfg, locate(exp), data, search=search, early_stopping=early_stopping,
                                time_budget_s=budget)
        start = time.time()
        grid = tuner.fit()
        wall = time.time() - start
    best, first_hit, epochs, trials = 0.0, math.inf, 0, 0
    for result in grid:
        df = result.metrics_dataframe
        if df is None or "val_dice" not in df:
            continue
        trials += 1
        epochs += len(df)
        best = max(best, float(df["val_dice"].max()))
        hits = df.loc[df["val_dice"] >= target, "time"]
        if len(hits):
            first_hit = min(first_hit, float(hits.min()) - start)
    return {"trials": trials, "epochs": epochs, "best": best, "to_target": first_hit, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from lfa_ray import ray_train

    cfg = load_config(None, ["tune.num_samples=200", *args.overrides])
    loaded = load_for(cfg, resolve_root(cfg))
    ray_train.init_ray()
    data = ray_train.share(loaded)
    runs = {
        "TPE + ASHA": sweep(cfg, data, search="tpe", early_stopping=True, budget=args.budget, target=args.target),
        "random, no early stopping": sweep(cfg, data, search="random", early_stopping=False, budget=args.budget,
                                           target=args.target),
    }
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; budget {args.budget:.0f} s each, "
          f"image_size {cfg.data.image_size}, max_t {cfg.tune.scheduler.max_t}, seed {cfg.train.seed}")
    print(f"{'sweep':28s} {'trials':>6s} {'epochs':>6s} {'best val_dice':>13s} {'s to ' + str(args.target):>9s}")
    for name, r in runs.items():
        hit = f"{r['to_target']:.0f}" if math.isfinite(r["to_target"]) else "never"
        print(f"{name:28s} {r['trials']:6d} {r['epochs']:6d} {r['best']:13.4f} {hit:>9s}")


if __name__ == "__main__":
    main()
