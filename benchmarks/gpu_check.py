"""GPU check of the plain loop: AMP on CUDA learns, and the seed model's throughput per precision.

    python benchmarks/gpu_check.py [--quick]

Needs only torch, numpy, opencv and pyyaml (no Ray, no albumentations), so it
runs on a bare GPU machine. Synthetic cassettes go straight into tensors.
Prints: whether `train.amp: auto` chose fp16 with a GradScaler on CUDA, the
val Dice it reached, and seed-UNET (features 64..512, 512 px, batch 8)
training images/s for fp32, fp16 + GradScaler and bf16, channels_last.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from lfa_ray import loop
from lfa_ray.config import load_config
from lfa_ray.synth import render


def tensors(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in range(n):
        image, masks = render(seed, i)
        xs.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
        ys.append(cv2.resize(masks["window"], (size, size), interpolation=cv2.INTER_NEAREST))
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(np.stack(ys)).unsqueeze(1).float()
    return x, y


def learn(device: torch.device, quick: bool) -> None:
    cfg = load_config(None, ["data.image_size=128", "train.epochs=" + ("8" if quick else "15"),
                             "model.features=[32,64,128,256]", "train.batch_size=16"])
    x, y = tensors(400, 128, seed=0)
    train = torch.utils.data.TensorDataset(x[:320], y[:320])
    val = torch.utils.data.TensorDataset(x[320:], y[320:])
    tl, vl = loop.make_loaders(train, val, batch_size=cfg.train.batch_size, seed=0)
    parts = loop.build(cfg, device)
    print(f"amp auto on {device.type}: dtype {parts.dtype}, GradScaler enabled {parts.scaler.is_enabled()}")
    results = []
    loop.fit(cfg, parts, tl, vl, device, on_epoch=results.append)
    for r in results:
        print("  " + loop.format_metrics(r.metrics, cfg.train.epochs))
    print(f"LEARN best val_dice {max(r.metrics['val_dice'] for r in results):.4f} "
          f"(scale {parts.scaler.get_scale() if parts.scaler.is_enabled() else 'n/a'})")


def throughput(device: torch.device, quick: bool) -> None:
    x, y = tensors(16, 512, seed=1)
    batch_x, batch_y = x[:8].to(device), y[:8].to(device)
    steps = 10 if quick else 30
    for amp in ["off", "fp16", "bf16"]:
        cfg = load_config(None, ["model.features=[64,128,256,512]", f"train.amp={amp}", "train.lr=1e-4"])
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        parts = loop.build(cfg, device)
        loader = [(batch_x, batch_y)] * steps
        loop.train_one_epoch(parts, loader[:3], device)  # warm-up: cuDNN autotune, allocator
        torch.cuda.synchronize()
        t = time.perf_counter()
        loop.train_one_epoch(parts, loader, device)
        torch.cuda.synchronize()
        ips = steps * 8 / (time.perf_counter() - t)
        print(f"THROUGHPUT seed UNET 512px batch 8 amp={amp:4s}: {ips:7.1f} img/s "
              f"(peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, incl. cuDNN autotune workspaces)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    learn(device, args.quick)
    throughput(device, args.quick)


if __name__ == "__main__":
    main()
