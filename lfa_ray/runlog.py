"""Per-run outputs written by rank 0: ``metrics.csv``, TensorBoard scalars and prediction overlays."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np
import torch
from tensorboardX import SummaryWriter

from lfa_ray.config import atomic_write_text

COLUMNS = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_dice", "val_iou", "best_val_dice",
           "lr", "epoch_seconds", "images_per_second", "time"]
N_OVERLAYS = 4


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB uint8: prediction tinted red, ground-truth outline green."""
    out = image.astype(np.float32).copy()
    out[pred > 0] = 0.55 * out[pred > 0] + 0.45 * np.array([255, 0, 0])
    t = truth.astype(np.uint8)
    edge = (t > 0) & (cv2.erode(t, np.ones((3, 3), np.uint8)) == 0)
    out[edge] = [0, 255, 0]
    return out.clip(0, 255).astype(np.uint8)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


class RunLog:
    """Appends each epoch to ``metrics.csv`` and TensorBoard under ``run_dir``.

    On resume, rows after the restored epoch are dropped (they belong to the
    interrupted attempt) and TensorBoard hides its events from that step on.
    """

    def __init__(self, run_dir: str | Path, start_epoch: int = 0):
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "metrics.csv"
        self.rows = [r for r in read_metrics(self.csv_path) if r["epoch"] <= start_epoch]
        self.writer = SummaryWriter(str(self.run_dir), purge_step=start_epoch + 1 if start_epoch else None,
                                    flush_secs=5)

    def log(self, metrics: dict) -> None:
        self.rows.append({k: metrics[k] for k in COLUMNS})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(self.csv_path, buf.getvalue())
        step = int(metrics["epoch"])
        for key in COLUMNS[1:-1]:
            self.writer.add_scalar(key, metrics[key], step)
        self.writer.flush()

    @torch.no_grad()
    def log_overlays(self, model: torch.nn.Module, val_ds, step: int, device: torch.device) -> None:
        """Predictions on the first validation images, as one image strip."""
        n = min(N_OVERLAYS, len(val_ds))
        if n == 0:
            return
        batch = torch.stack([val_ds[i][0] for i in range(n)]).to(device)
        was_training = model.training
        model.eval()
        pred = (model(batch) > 0).squeeze(1).cpu().numpy()
        model.train(was_training)
        tiles = [overlay(val_ds.images[i], val_ds.masks[i], pred[i]) for i in range(n)]
        self.writer.add_image("val/overlay", np.concatenate(tiles, axis=1), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
