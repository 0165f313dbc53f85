"""Per-run outputs written by rank 0: ``metrics.csv``, TensorBoard scalars and prediction overlays."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from tensorboardX import SummaryWriter

from lfa_ray.augment import to_unit
from lfa_ray.config import METRICS
from lfa_ray.images import HALF
from lfa_ray.storage import Location, locate

SCALARS = [*METRICS, "best_val_dice", "lr", "epoch_seconds", "images_per_second"]  # also in TensorBoard
# train_images: of all workers together; setup_seconds: the worker's set-up before this attempt's first epoch
COLUMNS = ["epoch", *SCALARS, "train_images", "time", "run_finished", "setup_seconds"]
N_OVERLAYS = 4
STAGING_PREFIX = "lfa_ray-log-"  # + the writing process's id: a local copy of a remote run's logs


def staging_dir() -> Path:
    """A new local folder for a remote run's logs. Those of processes that are gone (a trial ASHA
    stopped or a worker killed never closes its RunLog) are removed first."""
    for old in Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*-*"):
        pid = old.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB uint8: prediction tinted red, ground-truth outline green."""
    out = image.astype(np.float32).copy()
    out[pred > 0] = 0.55 * out[pred > 0] + 0.45 * np.array([255, 0, 0])
    t = truth.astype(np.uint8)
    edge = (t > 0) & (cv2.erode(t, np.ones((3, 3), np.uint8)) == 0)
    out[edge] = [0, 255, 0]
    return out.clip(0, 255).astype(np.uint8)


def read_metrics(path: str | Path | Location) -> list[dict]:
    loc = locate(path)
    if not loc.is_file():
        return []
    # an empty cell: a column the run's earlier epochs were written without (train_images)
    return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(io.StringIO(loc.read_text()))]


class RunLog:
    """Appends each epoch to ``metrics.csv`` and TensorBoard under ``run_dir`` (a path or a URI).

    On resume, rows after the restored epoch are dropped (they belong to the
    interrupted attempt) and TensorBoard hides its events from that step on.
    For a run on object storage the files are written to a local folder and
    uploaded after every epoch.
    """

    def __init__(self, run_dir: str | Path | Location, start_epoch: int = 0):
        self.run_dir = locate(run_dir)
        self.rows = [r for r in read_metrics(self.run_dir / "metrics.csv") if r["epoch"] <= start_epoch]
        self.staging = self.run_dir.local if self.run_dir.is_local else staging_dir()
        self.writer = SummaryWriter(str(self.staging), purge_step=start_epoch + 1 if start_epoch else None,
                                    flush_secs=5)

    def log(self, metrics: dict) -> None:
        self.rows.append({k: metrics[k] for k in COLUMNS})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(self.rows)
        (self.run_dir / "metrics.csv").write_text(buf.getvalue())
        step = int(metrics["epoch"])
        for key in SCALARS:
            self.writer.add_scalar(key, metrics[key], step)
        self._flush()

    def _flush(self) -> None:
        self.writer.flush()
        if not self.run_dir.is_local:
            self.run_dir.upload(self.staging)

    @torch.no_grad()
    def log_overlays(self, model: torch.nn.Module, val_ds, step: int, device: torch.device) -> None:
        """Predictions on the first validation images, as one image strip."""
        n = min(N_OVERLAYS, len(val_ds))
        if n == 0:
            return
        batch = to_unit(torch.stack([val_ds[i][0] for i in range(n)]).to(device))
        was_training = model.training
        model.eval()
        pred = (model(batch) > 0).squeeze(1).cpu().numpy()
        model.train(was_training)
        tiles = [overlay(val_ds.images[i], val_ds.masks[i] >= HALF, pred[i]) for i in range(n)]
        self.writer.add_image("val/overlay", np.concatenate(tiles, axis=1), step, dataformats="HWC")
        self._flush()

    def close(self) -> None:
        self.writer.close()
        if not self.run_dir.is_local:
            self.run_dir.upload(self.staging)
            shutil.rmtree(self.staging, ignore_errors=True)


def write_events(run_dir: str | Path | Location, step: int, scalars: dict, *, images: dict | None = None,
                 hparams: dict | None = None, texts: dict | None = None) -> None:
    """Add to a run's TensorBoard logs at ``step`` (a new events file beside the run's own): scalars,
    RGB ``images`` by tag, an HParams entry of ``hparams`` measured by ``scalars``, markdown ``texts``
    by tag (TensorBoard's text tab)."""
    from tensorboardX.summary import hparams as hparams_summary

    run_dir = locate(run_dir)
    staging = run_dir.local if run_dir.is_local else staging_dir()
    try:
        with SummaryWriter(str(staging), filename_suffix=".scores") as writer:
            if hparams:
                for summary in hparams_summary({k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                for k, v in hparams.items()}, scalars):
                    writer.file_writer.add_summary(summary)
            for key, value in scalars.items():
                writer.add_scalar(key, value, step)
            for tag, image in (images or {}).items():
                writer.add_image(tag, image, step, dataformats="HWC")
            for tag, text in (texts or {}).items():
                writer.add_text(tag, text, step)
        if not run_dir.is_local:
            run_dir.upload(staging)
    finally:
        if not run_dir.is_local:
            shutil.rmtree(staging, ignore_errors=True)
