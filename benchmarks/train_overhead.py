"""Epoch time of the plain loop vs the same loop in a 1-worker TorchTrainer, side by side.

    python benchmarks/train_overhead.py [--epochs 8] [--set KEY=VALUE ...]

Both run the default profile (plus ``--set``) on the same data with the same
threads and the same checkpoint policy. Per-epoch wall time is the gap between
consecutive epoch ends (so in the TorchTrainer it includes ``ray.train.report``
and checkpoint persistence); the first epoch is left out of the medians as
warm-up. Fixed seconds are what the TorchTrainer run costs beyond its epochs:
Ray start, worker group start, dataset build, shutdown.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lfa_ray import loop
from lfa_ray.checkpoint import save_state
from lfa_ray.config import load_config
from lfa_ray.data import build_datasets, load_for, resolve_root
from lfa_ray.runlog import read_metrics
from lfa_ray.storage import locate

CPU = torch.device("cpu")


def epoch_walls(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def plain(cfg, data, device: torch.device = CPU) -> dict:
    """The loop with the loaders, workers and pinned memory a Ray Train worker on ``device`` uses."""
    if device.type == "cpu":
        torch.set_num_threads(cfg.scaling.cpus_per_worker)  # what Ray gives a worker of that many CPUs
    t0 = time.perf_counter()
    tr, va = build_datasets(cfg, data)
    tl, vl = loop.make_loaders(tr, va, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                               loader_workers=loop.loader_workers(cfg.data.loader_workers, device,
                                                                  cfg.scaling.cpus_per_worker),
                               pin_memory=device.type == "cuda")
    parts = loop.build(cfg, device)
    setup = time.perf_counter() - t0
    ends, compute = [], []
    with tempfile.TemporaryDirectory() as tmp:
        def on_epoch(r: loop.EpochResult) -> None:
            if r.checkpoint is not None:  # same checkpoint policy and file as the Ray run
                save_state(r.checkpoint, Path(tmp) / f"e{r.metrics['epoch']}")
            compute.append(r.metrics["epoch_seconds"])
            ends.append(time.time())

        start = time.time()
        loop.fit(cfg, parts, tl, vl, device, on_epoch=on_epoch)
    return {"setup": setup, "walls": [ends[0] - start, *epoch_walls(ends)], "compute": compute}


def in_trainer(cfg, data, gpus_per_worker: float = 0.0) -> dict:
    """The same run in a 1-worker TorchTrainer (``gpus_per_worker`` > 0: on a GPU)."""
    import ray

    from lfa_ray import ray_train

    t0 = time.perf_counter()
    ray_train.init_ray()
    ray_init = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as storage:
        run_dir = Path(storage) / "bench"
        run_dir.mkdir()
        trainer = ray_train.make_trainer(cfg, data=ray_train.share(data), storage=locate(storage), name="bench",
                                         gpus_per_worker=gpus_per_worker, run_dir=str(run_dir))
        t1, wall1 = time.perf_counter(), time.time()
        trainer.fit()
        total, wall2 = time.perf_counter() - t1, time.time()
        rows = read_metrics(run_dir / "metrics.csv")
    ray.shutdown()
    times = [r["time"] for r in rows]
    walls = [rows[0]["epoch_seconds"], *epoch_walls(times)]
    return {"ray_init": ray_init, "total": total, "walls": walls, "compute": [r["epoch_seconds"] for r in rows],
            "fixed": total - sum(walls), "images_per_second": [r["images_per_second"] for r in rows],
            # the fixed cost split: fit() called -> first epoch begins, last epoch ends -> fit() returns
            "start": times[0] - rows[0]["epoch_seconds"] - wall1, "stop": wall2 - times[-1],
            "worker_setup": rows[0]["setup_seconds"]}  # lfa_ray's share of the start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(None, [f"train.epochs={args.epochs}", "train.early_stopping_patience=1000",
                             *args.overrides])
    data = load_for(cfg, resolve_root(cfg))
    p = plain(cfg, data)
    r = in_trainer(cfg, data)
    pm, rm = statistics.median(p["walls"][1:]), statistics.median(r["walls"][1:])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, python {sys.version.split()[0]}")
    print(f"config: image_size {cfg.data.image_size}, features {cfg.model.features}, batch {cfg.train.batch_size}, "
          f"amp {cfg.train.amp}, {cfg.scaling.cpus_per_worker} threads, {args.epochs} epochs, "
          f"checkpoint every {cfg.train.checkpoint_every} + on improvement")
    print(f"plain loop   epoch wall median {pm:.3f} s  (compute {statistics.median(p['compute'][1:]):.3f} s; "
          f"per epoch: {' '.join(f'{w:.2f}' for w in p['walls'])})")
    print(f"TorchTrainer epoch wall median {rm:.3f} s  (compute {statistics.median(r['compute'][1:]):.3f} s; "
          f"per epoch: {' '.join(f'{w:.2f}' for w in r['walls'])})")
    print(f"ratio TorchTrainer / plain: {rm / pm:.3f}  (target <= 1.05)")
    print(f"fixed seconds: ray.init {r['ray_init']:.1f} s; trainer start+stop {r['fixed']:.1f} s "
          f"(fit {r['total']:.1f} s - epochs {sum(r['walls']):.1f} s: "
          f"start {r['start']:.1f} s, of it the worker's own set-up {r['worker_setup']:.1f} s and Ray's "
          f"{r['start'] - r['worker_setup']:.1f} s; stop {r['stop']:.1f} s); plain set-up {p['setup']:.1f} s")


if __name__ == "__main__":
    main()
