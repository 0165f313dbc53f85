"""CPU inference speed of an exported model next to PyTorch's, and how often their masks agree.

    python benchmarks/export.py [--checkpoint results/tune-default] [--batch 16] [--repeat 20]

Without ``--checkpoint`` it uses a default-profile UNET (random weights: speed only; the agreement
figure then means little). Prints images/s for PyTorch (eager),
ONNX Runtime and TorchScript on the same uint8 batch (the same graph: normalisation + UNET),
each after a warm-up, side by side.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfa_ray import export  # noqa: E402
from lfa_ray.checkpoint import (
    load_model,  # noqa: E402
    state_bytes,  # noqa: E402
)
from lfa_ray.config import Config  # noqa: E402
from lfa_ray.model import UNet  # noqa: E402


def rate(fn, images: np.ndarray, repeat: int) -> float:
    fn(images)  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - t)
    return len(images) / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = str(Path(tmp) / "model.pt")
            Path(checkpoint).write_bytes(state_bytes({"model": UNet(features=Config().model.features).state_dict(),
                                                      "config": Config().to_dict()}))
        model, size, _ = load_model(checkpoint, torch.device("cpu"))
        images = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
        wrapped = export.WithPreprocessing(model).eval()

        def eager(x):
            with torch.no_grad():
                return wrapped(torch.from_numpy(x)).numpy()

        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
              f"{torch.get_num_threads()}; model {checkpoint}, {size} px, batch {args.batch}")
        base = rate(eager, images, args.repeat)
        print(f"pytorch eager: {base:.0f} img/s")
        for fmt in export.FORMATS:
            t = time.perf_counter()
            out, _ = export.export(checkpoint, Path(tmp) / "m", fmt)
            took = time.perf_counter() - t
            run = export.load_exported(out)
            r = rate(run, images, args.repeat)
            same = float(((run(images) > 0) == (eager(images) > 0)).mean())
            print(f"{fmt}: {r:.0f} img/s (x{r / base:.2f} of PyTorch), export {took:.1f} s, "
                  f"masks agree on {same:.4%} of pixels")


if __name__ == "__main__":
    main()
