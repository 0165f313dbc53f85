"""Inference: masks from a model (:func:`predict`), the window segmented again by a refining model
in a crop around it (:func:`refine`), both in one call (:func:`segment`), and the per-photo work
beside the model (:class:`PhotoWork`). ``predict``, ``evaluate``, ``export``, the benchmarks and the
refining model's training crops use it; it reads model files through :mod:`lfa_ray.checkpoint`.

Refining: a window model sees the whole photo at ``data.image_size`` (64 px by default): in a far
shot the read window is a few of its pixels, and its mask covers part of the window, spills into
the body or stops at a line. A refining model is the same UNET trained on crops around the window
(:mod:`lfa_ray.refine`); it sees the window a few times larger. At prediction the crop is MARGIN
times the long side of the mask's largest region, around its centre, and the refined mask (the
refining model's, in the crop; nothing outside it) is cropped around again, PASSES times in all: a
first mask cut short or off still holds part of the window, and each crop after it is centred on
more of it. Where the first mask has several sizeable regions (the window and a patch of the body,
say), each is refined on its own and the one that comes out most like a window (a strip that fills
its quadrilateral) is kept.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lfa_ray.augment import model_input
from lfa_ray.checkpoint import find_model, load_model, own_refiner
from lfa_ray.config import ReadoutConfig, load_config
from lfa_ray.errors import UserError
from lfa_ray.model import UNet
from lfa_ray.readout import largest, overlap, regions, window_corners
from lfa_ray.storage import Location

OVERLAY_SIDE = 1024  # a phone photo's overlay is decoded reduced to at least this (fast, still detailed)
READ_SIDE = OVERLAY_SIDE // 2  # the read-out sees the photo decoded at least this large
MARGIN = 1.5  # at prediction: the crop's side over the long side of the window the mask shows
PASSES = 3  # crops at prediction, each around the window the one before found
REGION_SHARE = 0.2  # a first mask's regions this large (of its largest) are each refined; the most window-like kept


def readout_layout(trained_with: dict, sets: list[str]) -> ReadoutConfig:
    """The read-out section of the model's profile (defaults for a model saved without one) with
    ``--set readout.KEY=VALUE`` items applied and checked; other keys are refused."""
    others = [item for item in sets if not item.strip().startswith("readout.")]
    if others:
        raise UserError(f"--set {others[0]}: predict and evaluate take only readout.* keys (the model is trained); "
                        f"e.g. --set readout.test_min=0.05")
    return load_config(None, sets, raw=trained_with, where="the model's profile").readout


FLIPS = ((), (3,), (2,), (2, 3))  # test-time augmentation: the photo as is, mirrored, upside down, both


@torch.no_grad()
def predict(model: UNet, images: list[np.ndarray], size: int, device: torch.device,
            out_sizes: list[tuple[int, int]] | None = None, tta: bool = False) -> list[np.ndarray]:
    """Binary masks (uint8 0/1), each at its image's size or at ``out_sizes`` (width, height).
    ``tta``: the logits averaged over the photo and its three flips (4 x the compute)."""
    x = model_input(images, size).to(device, memory_format=torch.channels_last)
    views = FLIPS if tta else FLIPS[:1]
    logits = sum(model(x.flip(dims)).float().flip(dims) for dims in views) / len(views)
    out = []
    for i, (im, lg) in enumerate(zip(images, logits, strict=True)):
        hw = im.shape[:2] if out_sizes is None else out_sizes[i][::-1]
        full = F.interpolate(lg[None], size=hw, mode="bilinear", align_corners=False)
        out.append((full[0, 0] > 0).cpu().numpy().astype(np.uint8))
    return out


def segment(model: UNet, size: int, images: list[np.ndarray], device: torch.device,
            out_sizes: list[tuple[int, int]] | None = None, tta: bool = False,
            refiner: tuple[UNet, int] | None = None) -> list[np.ndarray]:
    """:func:`predict`, then (with ``refiner``, :func:`load_refiner`) the window segmented again
    in a crop around it (:func:`refine`)."""
    masks = predict(model, images, size, device, out_sizes=out_sizes, tta=tta)
    if refiner is None:
        return masks
    return refine(*refiner, images, masks, device, tta=tta)


def refiner_path(path: str | None, checkpoint: str | Location) -> Location | None:
    """``--refine``: a refining model's checkpoint, ``none``, or (None) the one trained with the
    window model of ``checkpoint`` (:func:`lfa_ray.checkpoint.own_refiner`), if any."""
    if path is None:
        return own_refiner(find_model(checkpoint))
    if path.strip().lower() == "none":
        return None
    try:
        return find_model(path)
    except UserError as exc:
        raise UserError(f"--refine: {exc}") from None


def load_refiner(path: str | Location | None, device: torch.device) -> tuple[UNet, int] | None:
    """The refining model at ``path`` (:func:`refiner_path`) and its size, or None."""
    if path is None:
        return None
    try:
        model, size, _ = load_model(path, device)
    except UserError as exc:
        raise UserError(f"--refine: {exc}") from None
    return model, size


# -- refining: the window segmented again in a crop around it --------------------------------------

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


class PhotoWork:
    """Per-photo work (decoding, scoring, PNG writes, the read-out) on threads beside the model:
    PIL, zlib and OpenCV release the GIL, so it runs on the machine's other cores while the model
    works on a chunk. At most about two chunks of photos are in memory at once."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.pool = ThreadPoolExecutor(max(2, min(16, os.cpu_count() or 1)))
        self.queued: list[Future] = []
        self.waited = 0  # queued[:waited] are done
        self.skipped: list[str] = []  # decode errors of the photos :meth:`decoded` left out

    def __enter__(self) -> "PhotoWork":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def decoded(self, items: list, decode: Callable) -> Iterator[tuple[list, list]]:
        """``(chunk, [decode(item) ...])`` for consecutive chunks of ``items``, the next chunk
        decoded while the caller works on this one. An item whose decode raises a UserError (a
        photo that does not decode) is left out of its chunk, its message printed (``skipped: ...``)
        and kept in :attr:`skipped`; the rest go on."""
        chunks = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        ahead = [self.pool.submit(decode, item) for item in chunks[0]] if chunks else []
        for k, chunk in enumerate(chunks):
            kept = []
            for item, future in zip(chunk, ahead, strict=True):
                try:
                    kept.append((item, future.result()))
                except UserError as exc:
                    print(f"skipped: {exc}", file=sys.stderr)
                    self.skipped.append(str(exc))
            ahead = [self.pool.submit(decode, item) for item in chunks[k + 1]] if k + 1 < len(chunks) else []
            if kept:
                yield [item for item, _ in kept], [done for _, done in kept]

    def submit(self, fn: Callable, *args) -> None:
        """Queue one photo's work, first waiting while two chunks' work is already queued."""
        while len(self.queued) - self.waited >= 2 * self.batch_size:
            self.queued[self.waited].result()
            self.waited += 1
        self.queued.append(self.pool.submit(fn, *args))

    def results(self) -> list:
        """What each submitted call returned, in submission order."""
        return [f.result() for f in self.queued]
