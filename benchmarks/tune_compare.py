"""lfa_ray's sweep vs plain Optuna and random search: the same task, space and wall-clock budget, repeated.

    python benchmarks/tune_compare.py [--budget 150] [--seeds 5] [--target 0.6] [--out DIR] [--set KEY=VALUE ...]

Contenders, each run once per seed (0..seeds-1, searcher and training seed alike), in turn:

- ``lfa_ray``: ``lfa_ray.tune``'s Tuner (TorchTrainer trials, Optuna TPE + ASHA), trials side by side
  as the profile says (two 1-CPU trials on a 2-core machine);
- ``lfa_ray random``: the same Tuner with random search and no early stopping;
- ``plain Optuna``: one process, no Ray: ``study.optimize(objective, timeout=budget)`` with TPE and
  a HyperbandPruner (resources = epochs, ``tune.scheduler``'s grace period, max_t and reduction
  factor), the objective training with ``lfa_ray.loop`` on all CPUs, one trial at a time.

All start with the original's config (``REFERENCE_POINT``) and search ``tune.search_space`` of the
default profile; trials train up to ``tune.scheduler.max_t`` epochs. The budget is the search's own
wall time (Ray's start and the data's decoding, once per process, are outside it). No final retrain.

Per contender: median and range of the best val Dice at the budget, the median time to first reach
``--target`` (runs that never do count as never), trials started / run to ``max_t`` / stopped early,
and the share of the slots' time (concurrent trials x wall) spent outside training epochs. Writes
``compare.json``, ``compare.md`` and ``best_so_far.png`` (median best-so-far vs time, band = range).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfa_ray.config import load_config  # noqa: E402
from lfa_ray.data import build_datasets, load_for, resolve_root  # noqa: E402
from lfa_ray.search import apply_params, reference_point  # noqa: E402
from lfa_ray.storage import locate  # noqa: E402

CONTENDERS = ("lfa_ray", "lfa_ray random", "plain Optuna")


def _trial_record(epochs: list[dict], start: float, budget: float, max_t: int) -> dict:
    """One trial: its (seconds since start, val_dice) per epoch, epoch compute, and how it ended."""
    last_end = epochs[-1]["time"] - start if epochs else 0.0
    ended = ("completed" if len(epochs) >= max_t else
             "stopped" if epochs and last_end < budget - 2 * epochs[-1]["epoch_seconds"] - 1 else "cut")
    return {"points": [(e["time"] - start, e["val_dice"]) for e in epochs],
            "compute": sum(e["epoch_seconds"] for e in epochs), "ended": ended}


def lfa_ray_sweep(cfg, data, *, search: str, early_stopping: bool, budget: float) -> dict:
    from lfa_ray import tune

    with tempfile.TemporaryDirectory() as storage:
        exp = Path(storage) / "sweep"
        exp.mkdir()
        tuner = tune.make_tuner(cfg, locate(exp), data, search=search, early_stopping=early_stopping,
                                time_budget_s=budget)
        start = time.time()
        grid = tuner.fit()
        wall = time.time() - start
    trials = []
    for result in grid:
        df = result.metrics_dataframe
        rows = [] if df is None or "val_dice" not in df else df.sort_values("epoch").to_dict("records")
        trials.append(_trial_record(rows, start, budget, cfg.tune.scheduler.max_t))
    return {"trials": trials, "wall": wall, "slots": tune.default_concurrency(cfg)}


def optuna_sweep(cfg, loaded, *, budget: float) -> dict:
    """Plain Optuna: TPE + HyperbandPruner in this process, training with lfa_ray.loop (no Ray)."""
    import optuna
    import torch

    from lfa_ray.loop import build, fit, make_loaders

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device("cpu")
    sched = cfg.tune.scheduler
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.train.seed),
                                pruner=optuna.pruners.HyperbandPruner(min_resource=sched.grace_period,
                                                                      max_resource=sched.max_t,
                                                                      reduction_factor=sched.reduction_factor))
    first = reference_point(cfg)
    if first:
        study.enqueue_trial(first)
    trials, start = [], time.time()

    def objective(trial: optuna.Trial) -> float:
        params = {}
        for key, spec in cfg.tune.search_space.items():
            (kind, args), = spec.items()
            params[key] = (trial.suggest_float(key, *args, log=True) if kind == "loguniform" else
                           trial.suggest_float(key, *args) if kind == "uniform" else
                           trial.suggest_int(key, args[0], args[1] - 1) if kind == "randint" else
                           trial.suggest_categorical(key, args))
        tcfg = apply_params(cfg, {**params, "train.epochs": sched.max_t})
        train_ds, val_ds = build_datasets(tcfg, loaded)
        train_loader, val_loader = make_loaders(train_ds, val_ds, batch_size=tcfg.train.batch_size,
                                                seed=tcfg.train.seed)
        parts = build(tcfg, device)
        epochs: list[dict] = []

        def on_epoch(result) -> None:
            epochs.append(result.metrics)
            trial.report(result.metrics["val_dice"], result.metrics["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()
            if time.time() - start > budget:  # the budget ends this trial too, as Tune's does
                raise optuna.TrialPruned("the budget is spent")

        try:
            fit(tcfg, parts, train_loader, val_loader, device, on_epoch=on_epoch)
        finally:
            trials.append(_trial_record(epochs, start, budget, sched.max_t))
        return max(e["val_dice"] for e in epochs)

    def stop_at_budget(study, trial) -> None:
        if time.time() - start > budget:
            study.stop()

    study.optimize(objective, timeout=budget, callbacks=[stop_at_budget])
    return {"trials": trials, "wall": time.time() - start, "slots": 1}


def summarise(runs: list[dict], budget: float, target: float) -> dict:
    best, to_target, started, completed, stopped, outside = [], [], [], [], [], []
    for run in runs:
        points = sorted(p for t in run["trials"] for p in t["points"] if p[0] <= budget)
        best.append(max((v for _, v in points), default=0.0))
        to_target.append(next((s for s, v in points if v >= target), math.inf))
        started.append(len(run["trials"]))
        completed.append(sum(t["ended"] == "completed" for t in run["trials"]))
        stopped.append(sum(t["ended"] == "stopped" for t in run["trials"]))
        compute = sum(t["compute"] for t in run["trials"])
        outside.append(1 - compute / (run["slots"] * max(run["wall"], 1e-9)))
    return {"best_median": statistics.median(best), "best_min": min(best), "best_max": max(best), "best": best,
            "to_target_median": statistics.median(to_target), "to_target": to_target,
            "reached": sum(math.isfinite(t) for t in to_target),
            "started": statistics.median(started), "completed": statistics.median(completed),
            "stopped": statistics.median(stopped), "outside_share": statistics.median(outside)}


def best_so_far(run: dict, grid: np.ndarray) -> np.ndarray:
    points = sorted(p for t in run["trials"] for p in t["points"])
    curve, best, i = np.zeros_like(grid), 0.0, 0
    for j, t in enumerate(grid):
        while i < len(points) and points[i][0] <= t:
            best = max(best, points[i][1])
            i += 1
        curve[j] = best
    return curve


def plot(results: dict, budget: float, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, budget, 200)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, runs in results.items():
        curves = np.array([best_so_far(r, grid) for r in runs])
        line, = ax.plot(grid, np.median(curves, axis=0), label=f"{name} (median of {len(runs)})")
        ax.fill_between(grid, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.15)
    ax.axhline(target, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="seconds into the search", ylabel="best val Dice so far", ylim=(0, 1))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(summary: dict, target: float) -> str:
    lines = [f"| contender | best val Dice: median (min–max) | s to {target}: median (runs that reach it) | "
             "trials started / run to max_t / stopped early (median) | slot time outside epochs |",
             "| --- | --- | --- | --- | --- |"]
    for name, s in summary.items():
        hit = f"{s['to_target_median']:.0f}" if math.isfinite(s["to_target_median"]) else "never"
        lines.append(f"| {name} | {s['best_median']:.4f} ({s['best_min']:.4f}–{s['best_max']:.4f}) | "
                     f"{hit} ({s['reached']}/{len(s['best'])}) | {s['started']:g} / {s['completed']:g} / "
                     f"{s['stopped']:g} | {s['outside_share']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=150)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--out", type=Path, default=Path("tune_compare"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from lfa_ray import ray_train

    base = load_config(None, ["tune.num_samples=1000", *args.overrides])
    loaded = load_for(base, resolve_root(base))
    ray_train.init_ray()
    data = ray_train.share(loaded)
    results: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for seed in range(args.seeds):
        cfg = load_config(None, ["tune.num_samples=1000", f"train.seed={seed}", *args.overrides])
        for name in CONTENDERS:
            t = time.time()
            if name == "plain Optuna":
                run = optuna_sweep(cfg, loaded, budget=args.budget)
            else:
                run = lfa_ray_sweep(cfg, data, search="tpe" if name == "lfa_ray" else "random",
                                    early_stopping=name == "lfa_ray", budget=args.budget)
            results[name].append(run)
            s = summarise([run], args.budget, args.target)
            print(f"seed {seed} {name:15s}: best {s['best_median']:.4f}, {s['started']:g} trials, "
                  f"to {args.target}: {s['to_target_median']:.0f} s, outside epochs {s['outside_share']:.0%} "
                  f"({time.time() - t:.0f} s)", flush=True)
    summary = {name: summarise(runs, args.budget, args.target) for name, runs in results.items()}
    header = (f"{platform.machine()}, {os.cpu_count()} CPUs; budget {args.budget:.0f} s, {args.seeds} seeds, "
              f"target val Dice {args.target}; image_size {base.data.image_size}, max_t {base.tune.scheduler.max_t}, "
              f"{loaded.summary['train']} training images")
    md = f"{header}\n\n{table(summary, args.target)}\n"
    print("\n" + md)
    (args.out / "compare.md").write_text(md)
    (args.out / "compare.json").write_text(json.dumps({"header": header, "summary": summary, "runs": results},
                                                      default=float))
    plot(results, args.budget, args.target, args.out / "best_so_far.png")
    print(f"wrote compare.md, compare.json and best_so_far.png to {args.out}")


if __name__ == "__main__":
    main()
