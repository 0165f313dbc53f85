"""Samples/s of the training DataLoader (augmentation included) for a profile, per number of loader processes.

    python benchmarks/loader.py [--config tune_configs/reference_512.yaml] [--workers 0 1 2] [--set KEY=VALUE ...]

One epoch of the profile's training set after the first batch (the processes started), on
synthetic cassettes unless ``--set data.path=DIR``. What the loader hands over is what the loop
receives (uint8 images and masks, normalised later on the device). benchmarks/gpu_suite.py
part d runs the same measurement with pinned memory beside a GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from lfa_ray import loop
from lfa_ray.config import load_config
from lfa_ray.data import build_datasets, load_for, resolve_root

REPO = Path(__file__).resolve().parents[1]


def samples_per_second(train_ds, val_ds, *, batch_size: int, workers: int, pin_memory: bool = False) -> float:
    """Training samples/s of one epoch through the DataLoader with ``workers`` processes."""
    train_loader, _ = loop.make_loaders(train_ds, val_ds, batch_size=batch_size, seed=0, loader_workers=workers,
                                        pin_memory=pin_memory)
    train_loader.sampler.set_epoch(1)
    batches = iter(train_loader)
    next(batches)  # processes started, first batch made
    n, start = 0, time.perf_counter()
    for images, _ in batches:
        n += images.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "tune_configs" / "reference_512.yaml"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, ["data.path=null", *args.overrides])
    train_ds, val_ds = build_datasets(cfg, load_for(cfg, resolve_root(cfg)))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {Path(args.config).name}: "
          f"{cfg.data.image_size} px, batch {cfg.train.batch_size}, aug {cfg.train.aug_strength}, "
          f"{len(train_ds)} training images")
    for workers in args.workers:
        rate = samples_per_second(train_ds, val_ds, batch_size=cfg.train.batch_size, workers=workers)
        print(f"{workers} loader processes: {rate:.0f} samples/s", flush=True)


if __name__ == "__main__":
    main()
