"""Two-stage windows: a refining model segments the window again in a square crop around where the
window model found it.

A window model sees the whole photo at ``data.image_size`` (64 px by default): in a far shot the
read window is a few of its pixels, and its mask covers part of the window, spills into the body
or stops at a line. A refining model is the same UNET trained on crops around the window
(:func:`write_crops`, ``python -m lfa_ray.data crops``: squares REFINE_SCALE times the window's
long side, their centres moved by up to REFINE_SHIFT of it, as a window model's mask would place
them); it sees the window a few times larger. At prediction (``predict``/``evaluate --refine``)
the crop is MARGIN times the long side of the mask's largest region, around its centre, and the
refined mask (the refining model's, in the crop; nothing outside it) is cropped around again,
PASSES times in all: a first mask cut short or off still holds part of the window, and each crop
after it is centred on more of it. Where the first mask has several sizeable regions (the window
and a patch of the body, say), each is refined on its own and the one that comes out most like a
window (a strip that fills its quadrilateral) is kept.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from PIL import Image

from lfa_ray.config import Config, config_from_dict
from lfa_ray.data import InMemoryFile, decode_pair, discover, resolve_splits
from lfa_ray.errors import UserError
from lfa_ray.images import scale_mask
from lfa_ray.readout import largest, overlap, regions, window_corners
from lfa_ray.storage import Location, new_folder

REFINE_SCALE = (1.2, 4.0)  # training crops: the crop's side over the window's long side (log-uniform)
REFINE_SHIFT = 0.3  # training crops: the crop's centre moved by up to this share of the long side, per axis
MARGIN = 1.5  # at prediction: the crop's side over the long side of the window the mask shows
PASSES = 3  # crops at prediction, each around the window the one before found
REGION_SHARE = 0.2  # a first mask's regions this large (of its largest) are each refined; the most window-like kept
REFINE_DIR = "refine"  # a run's refining model: a training run of its own inside the run folder
CROPS_VERSION = 2  # bump when the crops change, so cached ones are written again


def window_box(mask: np.ndarray) -> tuple[float, float, float] | None:
    """The centre (x, y) and long side of the mask's largest region's minimum-area rectangle, in
    the mask's pixels; None when the mask is empty."""
    region = largest(mask)
    if region is None:
        return None
    (cx, cy), (a, b), _ = cv2.minAreaRect(cv2.findNonZero(region))
    return float(cx), float(cy), max(float(a), float(b), 1.0)


def affine(cx: float, cy: float, side: float, n: int) -> np.ndarray:
    """The 2x3 transform from a photo's pixels to the n x n crop of the square ``side`` px wide
    centred at (cx, cy)."""
    s = n / side
    return np.float32([[s, 0, (side / 2 - cx) * s], [0, s, (side / 2 - cy) * s]])


def crop(image: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """The square ``side`` px wide centred at (cx, cy), at the photo's resolution; beyond the photo
    its edge repeated."""
    n = max(8, int(round(side)))
    return cv2.warpAffine(image, affine(cx, cy, side, n), (n, n), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


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
    from lfa_ray.predict import READ_SIDE

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


def windowness(mask: np.ndarray) -> float:
    """How much a refined mask looks like a read window: its largest region's overlap (IoU) with the
    quadrilateral the read-out finds for it; 0 where the read-out finds none (too small, not a
    strip, nearly square), -1 for an empty mask."""
    region = largest(mask)
    if region is None:
        return -1.0
    quad, _ = window_corners(mask)
    return 0.0 if quad is None else overlap(region, quad)


def refine(model: torch.nn.Module, size: int, images: list[np.ndarray], masks: list[np.ndarray],
           device: torch.device, tta: bool = False) -> list[np.ndarray]:
    """``masks`` (0/1, each at any size: its photo's as displayed) with the window segmented again by
    the refining ``model`` (trained at ``size`` px) in a crop around it (:data:`MARGIN`,
    :data:`PASSES`), from ``images`` (the photos, RGB, maybe decoded reduced). A mask of several
    regions (:func:`lfa_ray.readout.regions`, REGION_SHARE): each is refined on its own and the
    one that comes out most like a window (:func:`windowness`) is kept. An empty mask stays."""
    from lfa_ray.predict import predict

    owner, views, out = [], [], []
    for i, mask in enumerate(masks):
        found = regions(mask, REGION_SHARE) or [mask]
        owner += [i] * len(found)
        views += [images[i]] * len(found)
        out += found
    for _ in range(PASSES):
        todo, crops, geometry = [], [], []
        for i, (image, mask) in enumerate(zip(views, out, strict=True)):
            box = window_box(mask)
            if box is None:
                continue
            h, w = image.shape[:2]
            scale = w / mask.shape[1]  # photo pixels per mask pixel
            cx, cy, long = box
            side = MARGIN * long  # in mask pixels
            todo.append(i)
            crops.append(crop(image, (cx + 0.5) * scale - 0.5, (cy + 0.5) * scale - 0.5, side * scale))
            geometry.append((cx, cy, side, max(8, int(round(side)))))
        if not todo:
            break
        found = predict(model, crops, size, device, out_sizes=[(n, n) for *_, n in geometry], tta=tta)
        for i, m, (cx, cy, side, n) in zip(todo, found, geometry, strict=True):
            h, w = out[i].shape
            out[i] = cv2.warpAffine(m, affine(cx, cy, side, n), (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    best: dict[int, tuple[float, np.ndarray]] = {}
    several = {i for i, n in Counter(owner).items() if n > 1}
    for i, mask in zip(owner, out, strict=True):
        score = windowness(mask) if i in several else 0.0
        if i not in best or score > best[i][0]:  # ties: the larger region of the first mask
            best[i] = (score, mask)
    return [best[i][1] for i in range(len(masks))]


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


def own_refiner(model: Location) -> Optional[Location]:
    """The refining model trained beside a window model file (``RUN/refine/model.pt`` for
    ``RUN/model.pt``), if there is one."""
    candidate = model.parent / REFINE_DIR / "model.pt"
    return candidate if candidate.is_file() else None


def refiner_config(cfg: Config, crops: Path) -> Config:
    """The profile the refining model of a run of ``cfg`` trains with: the run's, on ``crops`` at
    ``refine.image_size`` for ``refine.epochs``, warm-started from the refining model of the run's
    ``train.init_from`` where that has one (else from scratch), with no refining model of its own."""
    from lfa_ray.predict import find_model

    raw = cfg.to_dict()
    raw["data"].update(path=str(crops), image_size=cfg.refine.image_size)
    init = cfg.train.init_from and own_refiner(find_model(cfg.train.init_from))
    raw["train"].update(epochs=cfg.refine.epochs, init_from=init.uri if init else None)
    raw["refine"]["image_size"] = None
    return config_from_dict(raw)
