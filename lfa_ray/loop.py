"""The per-worker training loop: plain PyTorch, no Ray.

``fit`` runs epochs of :func:`train_one_epoch` and :func:`validate`, steps
ReduceLROnPlateau, applies early stopping and the checkpoint policy, and hands
each epoch's metrics (and, when due, the full training state) to a callback.
Ray Train, a test or a benchmark supplies that callback; this module never
imports Ray. With ``torch.distributed`` initialised, losses and metrics are
summed over all workers, so every rank sees the same numbers.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from lfa_ray.augment import to_unit
from lfa_ray.config import Config
from lfa_ray.errors import UserError
from lfa_ray.images import HALF
from lfa_ray.model import UNet

log = logging.getLogger("lfa_ray")


# -- set-up ----------------------------------------------------------------------------------

def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX). Elsewhere (e.g. AVX2 only)
    bf16 autocast is emulated and about 10x slower than fp32 (docs/PERFORMANCE.md)."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in
               ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``train.amp`` on ``device`` (None: full precision). ``auto``: fp16 on
    CUDA, bf16 on a CPU that computes it natively, full precision on other CPUs."""
    if mode == "off":
        return None
    if mode == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


@dataclass
class TrainingSetup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    dtype: Optional[torch.dtype]
    average: Optional["WeightAverage"] = None  # train.ema_epochs: what is validated and saved


class WeightAverage(AveragedModel):
    """An exponential moving average of the model's weights and BatchNorm statistics over about
    ``horizon`` optimizer steps, shorter while the run is young: the (n+1)-th step blends in with
    weight max(9 / (10 + n), 1 / horizon) (TensorFlow's ExponentialMovingAverage ``num_updates``
    rule), so early on it spans about the last tenth of the steps so far and an early score (ASHA's
    first rung) is not dragged back to the first steps. Averaged weights generalise better than the
    last step's and do not depend on where in the noise the run ended."""

    def __init__(self, model: nn.Module, horizon: float):
        super().__init__(model, multi_avg_fn=self._blend, use_buffers=True)
        self.horizon = horizon

    @torch.no_grad()
    def _blend(self, averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, torch.clamp(9 / (10 + n), min=1 / self.horizon))
        else:  # BatchNorm's batch counters
            torch._foreach_copy_(averaged, current)


def build(cfg: Config, device: torch.device, wrap: Callable[[nn.Module], nn.Module] = lambda m: m) -> TrainingSetup:
    """Model, Adam, ReduceLROnPlateau and GradScaler as the original project set them up.

    ``wrap`` puts the model in its distributed wrapper (Ray's ``prepare_model``);
    ``train.compile`` compiles the wrapped model, as PyTorch recommends for DDP.
    """
    torch.manual_seed(cfg.train.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest conv kernels
    # channels_last is ~25% faster for these convs on CPU (oneDNN) and suits tensor cores on GPU.
    model = wrap(UNet(features=cfg.model.features).to(device, memory_format=torch.channels_last))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if cfg.train.compile:
        model = torch.compile(model)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", patience=cfg.train.lr_patience, factor=cfg.train.lr_factor)
    dtype = amp_dtype(cfg.train.amp, device)
    # Loss scaling is needed for fp16 only; bf16 has fp32's range.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 and device.type == "cuda")
    return TrainingSetup(model, optimizer, scheduler, scaler, dtype)


def evaluated(parts: TrainingSetup) -> nn.Module:
    """The model validated and saved: the weight average when there is one."""
    return parts.average.module if parts.average is not None else unwrap(parts.model)


def loader_workers(setting: int | str, device: torch.device, cpus: int) -> int:
    """DataLoader processes for ``data.loader_workers`` on a worker with ``cpus`` CPUs.

    ``auto``: none on CPU (the worker's cores are busy with the model), one per CPU on a GPU
    worker (its training process mostly waits on the GPU, so augmentation moves out of its way).
    """
    if setting != "auto":
        return int(setting)
    return cpus if device.type == "cuda" else 0


class EpochSampler(torch.utils.data.Sampler):
    """``sampler``'s indices as ``(epoch, index)``, so the dataset seeds each item's augmentation
    by its epoch in whichever loader process draws it (:class:`lfa_ray.data.SegmentationDataset`)."""

    def __init__(self, sampler: torch.utils.data.Sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def make_loaders(train_ds, val_ds, *, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 loader_workers: int = 0, pin_memory: bool = False
                 ) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Loaders giving each of ``world`` workers a disjoint shard.

    Training shuffles with a DistributedSampler seeded per epoch, its indices carrying the epoch
    (:class:`EpochSampler`). Validation takes
    every ``world``-th image without padding, so summed metrics are exact.
    ``pin_memory`` (for CUDA) lets host-to-GPU copies run asynchronously.
    """
    sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    val_shard = torch.utils.data.Subset(val_ds, list(range(rank, len(val_ds), world)))
    common = dict(num_workers=loader_workers, persistent_workers=loader_workers > 0, pin_memory=pin_memory)
    return (torch.utils.data.DataLoader(train_ds, batch_size=batch_size, sampler=EpochSampler(sampler), **common),
            torch.utils.data.DataLoader(val_shard, batch_size=batch_size, shuffle=False, **common))


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside torch.compile's and DistributedDataParallel's wrappers."""
    while hasattr(model, "_orig_mod") or hasattr(model, "module"):
        model = getattr(model, "_orig_mod", None) or model.module
    return model


# -- one epoch -------------------------------------------------------------------------------

def loss_fn(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    logits = logits.float()
    loss = F.binary_cross_entropy_with_logits(logits, target)
    if kind == "bce+dice":
        prob = torch.sigmoid(logits)
        inter = (prob * target).sum(dim=(1, 2, 3))
        dice = (2 * inter + 1) / (prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
        loss = loss + (1 - dice).mean()
    return loss


def overlap(pred: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU of binary ``pred`` vs ``masks`` (N, 1, H, W); an empty prediction of an
    empty mask scores 1 on both."""
    inter = (pred * masks).sum(dim=(1, 2, 3))
    both = pred.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3))
    union = both - inter
    dice = torch.where(both > 0, 2 * inter / both.clamp(min=1), torch.ones_like(both))
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return dice, iou


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _to(images: torch.Tensor, masks: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader's uint8 batch on ``device`` as float model input and target (the mask's coverage as a
    share in [0, 1], :func:`lfa_ray.augment.resize`): copied first (a quarter of float32's bytes),
    converted there."""
    return (to_unit(images.to(device, non_blocking=True, memory_format=torch.channels_last)),
            masks.to(device, non_blocking=True).float().mul_(1 / 255))


def train_one_epoch(parts: TrainingSetup, loader, device: torch.device, *, loss: str = "bce",
                    grad_clip: Optional[float] = None) -> dict:
    model, optimizer, scaler = parts.model, parts.optimizer, parts.scaler
    model.train()
    total, count = 0.0, 0
    start = time.perf_counter()
    for images, masks in loader:
        images, masks = _to(images, masks, device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=parts.dtype or torch.float32, enabled=parts.dtype is not None):
            value = loss_fn(model(images), masks, loss)
        scaler.scale(value).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if parts.average is not None:
            parts.average.update_parameters(unwrap(model))
        total += value.item() * images.shape[0]
        count += images.shape[0]
    seconds = time.perf_counter() - start
    total, count = _all_sum([total, count], device)
    return {"train_loss": total / max(count, 1), "train_images": int(count), "train_seconds": seconds}


@torch.no_grad()
def validate(parts: TrainingSetup, loader, device: torch.device, *, loss: str = "bce") -> dict:
    """Loss, pixel accuracy and per-image Dice/IoU (an empty prediction of an empty mask scores 1)."""
    model = parts.average.module if parts.average is not None else parts.model  # as trained: compiled, wrapped
    model.eval()
    sums = [0.0] * 5  # loss*n, correct pixels, pixels, dice, iou (per-image sums); images below
    images_seen = 0
    for images, masks in loader:
        images, masks = _to(images, masks, device)
        with torch.autocast(device.type, dtype=parts.dtype or torch.float32, enabled=parts.dtype is not None):
            logits = model(images)
        sums[0] += loss_fn(logits, masks, loss).item() * images.shape[0]
        masks = (masks >= HALF / 255).float()  # the metrics' truth: pixels at least half inside
        pred = (logits.float() > 0).float()
        sums[1] += (pred == masks).sum().item()
        sums[2] += masks.numel()
        dice, iou = overlap(pred, masks)
        sums[3] += dice.sum().item()
        sums[4] += iou.sum().item()
        images_seen += images.shape[0]
    loss_sum, correct, pixels, dice, iou, n = _all_sum([*sums, images_seen], device)
    n = max(n, 1)
    return {"val_loss": loss_sum / n, "val_accuracy": correct / max(pixels, 1),
            "val_dice": dice / n, "val_iou": iou / n}


# -- checkpoints -----------------------------------------------------------------------------

def training_state(parts: TrainingSetup, progress: "Progress", config: dict) -> dict:
    return {
        "model": evaluated(parts).state_dict(),  # what predict, export and warm starts load
        **({"trained": unwrap(parts.model).state_dict(), "averaged_steps": int(parts.average.n_averaged)}
           if parts.average is not None else {}),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "progress": progress.__dict__.copy(),
        "config": config,
    }


def restore(parts: TrainingSetup, state: dict) -> "Progress":
    """Load model, optimizer, scheduler, scaler and weight-average state; return where training stood.

    An averaged run's ``model`` is its average, ``trained`` the weights it trains; a checkpoint
    saved without an average starts one from its weights."""
    unwrap(parts.model).load_state_dict(state.get("trained", state["model"]))
    if parts.average is not None:
        if "trained" in state:
            parts.average.module.load_state_dict(state["model"])
            parts.average.n_averaged.fill_(state["averaged_steps"])
        else:
            parts.average.update_parameters(unwrap(parts.model))
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    return Progress(**state["progress"])


# -- the loop --------------------------------------------------------------------------------

@dataclass
class Progress:
    epoch: int = 0  # last finished epoch
    best_val_dice: float = -math.inf
    best_val_loss: float = math.inf
    bad_epochs: int = 0  # epochs since val_loss last improved (early stopping)


@dataclass
class EpochResult:
    metrics: dict
    checkpoint: Optional[dict] = None  # full training state, when the policy says to save
    improved: bool = False
    last: bool = False


def fit(cfg: Config, parts: TrainingSetup, train_loader, val_loader, device: torch.device, *,
        on_epoch: Callable[[EpochResult], None], state: Optional[dict] = None,
        config_dict: Optional[dict] = None) -> Progress:
    """Train until ``train.epochs`` or early stopping, starting after ``state``'s epoch if given.

    Each epoch's training set order and augmentation depend only on (seed, epoch),
    so a run resumed from a checkpoint repeats the uninterrupted run.
    """
    t = cfg.train
    if t.ema_epochs is not None and parts.average is None:  # the horizon counts this loader's steps
        parts.average = WeightAverage(unwrap(parts.model), t.ema_epochs * len(train_loader))
    progress = restore(parts, state) if state is not None else Progress()
    if state is not None:
        log.info("resuming after epoch %d (best val_dice %.4f)", progress.epoch, progress.best_val_dice)
    for epoch in range(progress.epoch + 1, t.epochs + 1):
        epochal = getattr(train_loader, "sampler", train_loader)  # a DataLoader's sampler, or a stream
        if hasattr(epochal, "set_epoch"):  # the shuffle and each photo's augmentation
            epochal.set_epoch(epoch)
        start = time.perf_counter()
        tr = train_one_epoch(parts, train_loader, device, loss=t.loss, grad_clip=t.grad_clip)
        va = validate(parts, val_loader, device, loss=t.loss)
        lr_before = parts.optimizer.param_groups[0]["lr"]
        check_finite(epoch, {"train_loss": tr["train_loss"], **va}, lr_before)
        parts.scheduler.step(va["val_loss"])
        lr = parts.optimizer.param_groups[0]["lr"]
        if lr != lr_before:
            log.info("epoch %d: val_loss plateaued, learning rate %.3g -> %.3g", epoch, lr_before, lr)

        improved = va["val_dice"] > progress.best_val_dice
        progress.best_val_dice = max(progress.best_val_dice, va["val_dice"])
        if va["val_loss"] < progress.best_val_loss:
            progress.best_val_loss, progress.bad_epochs = va["val_loss"], 0
        else:
            progress.bad_epochs += 1
        progress.epoch = epoch
        stop = progress.bad_epochs >= t.early_stopping_patience
        if stop and epoch < t.epochs:
            log.info("epoch %d: early stopping, val_loss has not improved for %d epochs", epoch, progress.bad_epochs)
        last = stop or epoch == t.epochs
        metrics = {
            "epoch": epoch, "train_loss": tr["train_loss"], **va, "lr": lr_before,
            "best_val_dice": progress.best_val_dice,
            "epoch_seconds": time.perf_counter() - start,
            "images_per_second": tr["train_images"] / max(tr["train_seconds"], 1e-9),
            "train_images": tr["train_images"],  # trained on this epoch, by all workers together
            "time": time.time(),  # wall clock at the epoch's end: epoch-to-epoch gaps show reporting costs
            "run_finished": int(last),  # 1 when the run ends by itself (epochs done or early stopping)
        }
        due = improved or last or epoch % t.checkpoint_every == 0
        checkpoint = training_state(parts, progress, config_dict or cfg.to_dict()) if due else None
        on_epoch(EpochResult(metrics, checkpoint, improved, last))
        if stop:
            break
    return progress


class Diverged(UserError):
    """Training produced a non-finite loss or metric: the weights are no longer usable."""


def check_finite(epoch: int, metrics: dict, lr: float) -> None:
    """Stop at the first epoch whose loss or metrics are not finite (nothing of it is saved)."""
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        key, value = next(iter(bad.items()))
        raise Diverged(f"training diverged at epoch {epoch}: {key} is {value} (learning rate {lr:.3g}); "
                       f"lower train.lr or set train.grad_clip, e.g. --set train.grad_clip=1.0")


def format_metrics(m: dict, epochs: int) -> str:
    return (f"epoch {m['epoch']}/{epochs}  train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
            f"val_dice {m['val_dice']:.4f}  val_iou {m['val_iou']:.4f}  lr {m['lr']:.2g}  "
            f"{m['epoch_seconds']:.1f}s  {m['images_per_second']:.0f} img/s")
