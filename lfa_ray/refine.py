"""The refining model's training data: square crops around each photo's window (:func:`write_crops`,
``python -m lfa_ray.data crops``: squares REFINE_SCALE times the window's long side, their centres
moved by up to REFINE_SHIFT of it, as a window model's mask would place them), cached per run
(:func:`crops_for`), and the profile it trains with (:func:`refiner_config`). Every ``train`` run
and a sweep's final retrain train one into ``RUN/refine/`` (:func:`lfa_ray.runs.train_refiner`);
at prediction it segments the window again in a crop around where the window model found it
(:func:`lfa_ray.infer.refine`).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lfa_ray.checkpoint import find_model, own_refiner
from lfa_ray.config import Config, config_from_dict
from lfa_ray.data import InMemoryFile, decode_pair, discover, resolve_splits
from lfa_ray.errors import UserError
from lfa_ray.images import scale_mask
from lfa_ray.infer import READ_SIDE, affine, crop, window_box
from lfa_ray.storage import Location, new_folder

REFINE_SCALE = (1.2, 4.0)  # training crops: the crop's side over the window's long side (log-uniform)
REFINE_SHIFT = 0.3  # training crops: the crop's centre moved by up to this share of the long side, per axis
CROPS_VERSION = 2  # bump when the crops change, so cached ones are written again


def training_crops(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, count: int
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` crops of a photo and its 0/1 mask (at the photo's size) around its window, jittered."""
    box = window_box(mask)
    if box is None:
        return []
    cx, cy, long = box
    out = []
    for _ in range(count):
        side = long * np.exp(rng.uniform(*np.log(REFINE_SCALE)))
        x, y = np.array([cx, cy]) + rng.uniform(-REFINE_SHIFT, REFINE_SHIFT, 2) * long
        n = max(8, int(round(side)))
        m = cv2.warpAffine(mask.astype(np.float32), affine(x, y, side, n), (n, n), flags=cv2.INTER_LINEAR)
        out.append((crop(image, x, y, side), (m >= 0.5).astype(np.uint8)))
    return out


def write_crops(source, out: str | Path, per_photo: int = 3, seed: int = 0, val_fraction: float = 0.2,
                test_fraction: float = 0.1, split_seed: int = 42) -> dict:
    """A refining model's dataset: ``per_photo`` crops of every photo of ``source`` (any layout)
    around its window, written into ``out`` as ``train_``, ``val_`` and ``test_images/`` +
    ``_masks/`` by the photo's split (the source's own split folders, else its photos split with
    these fractions and seed, as training splits them: the crops of a window model's test photos
    are the refining model's test set). Deterministic by ``seed``; a photo with an empty mask has
    none. The folder appears complete or not at all. The counts written, per split."""
    out = Path(out)
    if per_photo < 1:
        raise UserError(f"--per-photo must be at least 1, got {per_photo}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder; choose a new OUT")
    splits = resolve_splits(source, val_fraction, split_seed, test_fraction)
    counts = {"photos": 0, "skipped": 0}
    with new_folder(out) as tmp:
        for prefix in ("train", "val", "test"):
            pairs = getattr(splits, prefix)
            counts[prefix] = 0
            if not pairs:
                continue
            (tmp / f"{prefix}_images").mkdir()
            (tmp / f"{prefix}_masks").mkdir()
            for pair in pairs:
                photo, mask = decode_pair(pair, reduce_to=READ_SIDE)  # as predict decodes it
                h, w = photo.pixels.shape[:2]
                rng = np.random.default_rng([seed, zlib.crc32(pair.name.encode())])
                made = training_crops(photo.pixels, scale_mask(mask, (w, h)), rng, per_photo)
                counts["photos"] += 1
                counts["skipped"] += not made
                for k, (image, m) in enumerate(made):
                    name = f"{pair.name}_{k}"
                    Image.fromarray(image).save(tmp / f"{prefix}_images" / f"{name}.jpg", quality=95)
                    Image.fromarray(m * 255).save(tmp / f"{prefix}_masks" / f"{name}_mask.png")
                counts[prefix] += len(made)
            if not counts[prefix]:  # no window in any of them: no empty split folders
                (tmp / f"{prefix}_images").rmdir()
                (tmp / f"{prefix}_masks").rmdir()
        if not counts["train"]:
            raise UserError(f"{source}: no training photo shows a window (every mask is empty); nothing to crop")
    return counts


# -- the refining model of a training run ------------------------------------------------------

def crops_for(cfg: Config, root: Location) -> Path:
    """The refining model's dataset for a run of ``cfg`` on ``root``: ``refine.per_photo`` crops of
    each photo, in the run's own split (:func:`write_crops`), written once into the cache (keyed by
    the photos' names and sizes, the split and the crops' settings)."""
    from lfa_ray.synth import cache_root

    found = discover(root)
    listing = sorted((p.name, len(p.image.data) if isinstance(p.image, InMemoryFile) else p.image.size())
                     for p in found.pairs + (found.val or []) + (found.test or []))
    d = cfg.data
    key = json.dumps([CROPS_VERSION, REFINE_SCALE, REFINE_SHIFT, root.uri, listing, d.val_fraction, d.split_seed,
                      d.test_fraction, cfg.refine.per_photo], default=str)
    path = cache_root() / f"crops-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not path.is_dir():
        try:
            write_crops(root, path, cfg.refine.per_photo, 0, d.val_fraction, d.test_fraction, d.split_seed)
        except UserError:
            if not path.is_dir():  # another process finished it first, else a real problem
                raise
    return path


def refiner_config(cfg: Config, crops: Path) -> Config:
    """The profile the refining model of a run of ``cfg`` trains with: the run's, on ``crops`` at
    ``refine.image_size`` for ``refine.epochs``, warm-started from the refining model of the run's
    ``train.init_from`` where that has one (else from scratch), with no refining model of its own."""
    raw = cfg.to_dict()
    raw["data"].update(path=str(crops), image_size=cfg.refine.image_size)
    init = cfg.train.init_from and own_refiner(find_model(cfg.train.init_from))
    raw["train"].update(epochs=cfg.refine.epochs, init_from=init.uri if init else None)
    raw["refine"]["image_size"] = None
    return config_from_dict(raw)
