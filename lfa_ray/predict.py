"""``python -m lfa_ray.predict --checkpoint PATH INPUT [--out DIR]``: masks for new photos.

``--checkpoint`` takes a sweep folder (its ``final/model.pt``), a run folder
(its ``model.pt``), a ``model.pt`` file or a ``checkpoint_epoch_*`` folder, local
or on object storage (``s3://...``). ``INPUT`` is an image file or a folder of
images (local or a URI), phone photos included (EXIF orientation, HEIC). For each image it
writes ``NAME_mask.png`` (0/255, at the photo's size as displayed) and ``NAME_overlay.png``
(a large photo's overlay is at least 1024 px on its short side, not full size) into the local ``--out``.
``--readout`` also reads each test (control/test lines, T/C ratio, positive/negative/invalid; see
:mod:`lfa_ray.readout`) with the model profile's ``readout`` keys, changed with ``--set readout.KEY=V``:
``NAME_readout.png`` and ``readout.csv``. ``--refine CHECKPOINT`` segments each window again with
a refining model in a crop around it (:mod:`lfa_ray.refine`).
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m lfa_ray.predict: the command, run before this copy defines anything,
    from lfa_ray.cli import predict  # so the module's state exists once (as lfa_ray.predict)

    raise SystemExit(predict())

import io
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lfa_ray import readout
from lfa_ray.augment import model_input
from lfa_ray.checkpoint import STATE_FILE
from lfa_ray.config import ReadoutConfig, load_config
from lfa_ray.errors import UserError
from lfa_ray.images import IMAGE_EXTS, Photo, read_photo, scale_mask
from lfa_ray.loop import nonfinite
from lfa_ray.model import UNet
from lfa_ray.runlog import overlay
from lfa_ray.storage import Location, locate

OVERLAY_SIDE = 1024  # a phone photo's overlay is decoded reduced to at least this (fast, still detailed)
READ_SIDE = OVERLAY_SIDE // 2  # the read-out sees the photo decoded at least this large


def readout_layout(trained_with: dict, sets: list[str]) -> ReadoutConfig:
    """The read-out section of the model's profile (defaults for a model saved without one) with
    ``--set readout.KEY=VALUE`` items applied and checked; other keys are refused."""
    others = [item for item in sets if not item.strip().startswith("readout.")]
    if others:
        raise UserError(f"--set {others[0]}: predict and evaluate take only readout.* keys (the model is trained); "
                        f"e.g. --set readout.test_min=0.05")
    return load_config(None, sets, raw=trained_with, where="the model's profile").readout


def find_model(path: str | Path | Location) -> Location:
    """The weights file behind any of the accepted ``--checkpoint`` forms."""
    path = locate(path)
    for candidate in (path / "final" / "model.pt", path / "model.pt", path / STATE_FILE, path):
        if candidate.is_file():
            return candidate
    raise UserError(f"--checkpoint {path}: no model here; pass a sweep or run folder (with model.pt), "
                    f"a model.pt file or a checkpoint_epoch_* folder")


def load_model(path: str | Path | Location, device: torch.device) -> tuple[UNet, int, dict]:
    """The UNET, its training image size and the profile it was trained with (``Config.to_dict()``)."""
    file = find_model(path)
    try:
        # weights_only: tensors and plain values; a file that would run code when unpickled is refused
        state = torch.load(io.BytesIO(file.read_bytes()), map_location=device, weights_only=True)
        cfg = state["config"]
        model = UNet(features=cfg["model"]["features"])
        model.load_state_dict(state["model"])
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types (struct.error for junk bytes)
        raise UserError(f"{file}: not an lfa_ray model ({type(exc).__name__}); pass a model.pt or checkpoint "
                        f"written by lfa_ray (only tensors and plain values are read, never code)") from None
    bad = nonfinite(state["model"])
    if bad:
        raise UserError(f"{file}: weights {bad} are not finite (saved by a run that diverged); pick another model")
    return model.to(device).eval(), int(cfg["data"]["image_size"]), cfg


def init_weights(path: str, features: list[int]) -> dict:
    """``train.init_from``: the weights of the model at ``path`` (any ``--checkpoint`` form, local or a
    URI) for a UNET of ``features``; another architecture is refused."""
    file = find_model(path)
    model, _, trained = load_model(file, torch.device("cpu"))
    if list(trained["model"]["features"]) != list(features):
        raise UserError(f"train.init_from {file}: that UNET has model.features {trained['model']['features']} but "
                        f"this profile has {list(features)}; set model.features to match or drop train.init_from")
    return model.state_dict()


def find_images(path: str | Path) -> list[Location]:
    path = locate(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        images = [f for f in path.files() if Path(f.name).suffix.lower() in IMAGE_EXTS]
        if images:
            return images
        raise UserError(f"{path}: no images (.png .jpg .heic .gif .tif .bmp .webp) in this folder")
    raise UserError(f"{path}: input not found; pass an image file or a folder of images")


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


def refiner_path(path: str | None, checkpoint: str | Location) -> Location | None:
    """``--refine``: a refining model's checkpoint, ``none``, or (None) the one trained with the
    window model of ``checkpoint`` (:func:`lfa_ray.refine.own_refiner`), if any."""
    from lfa_ray.refine import own_refiner

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


def segment(model: UNet, size: int, images: list[np.ndarray], device: torch.device,
            out_sizes: list[tuple[int, int]] | None = None, tta: bool = False,
            refiner: tuple[UNet, int] | None = None) -> list[np.ndarray]:
    """:func:`predict`, then (with ``refiner``, :func:`load_refiner`) the window segmented again
    in a crop around it (:func:`lfa_ray.refine.refine`)."""
    masks = predict(model, images, size, device, out_sizes=out_sizes, tta=tta)
    if refiner is None:
        return masks
    from lfa_ray.refine import refine

    return refine(*refiner, images, masks, device, tta=tta)


def run(checkpoint: str, inputs: str, out: str, batch_size: int = 16, device: str | None = None,
        readout_sets: list[str] | None = None, tta: bool = False, refine: str | None = None) -> list[Path]:
    """Write each photo's mask and overlay into ``out``. ``readout_sets`` (a list, maybe empty:
    ``--readout`` and its ``--set readout.KEY=VALUE`` items): also read each test
    (:mod:`lfa_ray.readout`): ``NAME_readout.png`` (the window straightened, lines marked) and one
    ``readout.csv`` for all photos. ``tta``: see :func:`predict`. ``refine``: a refining model's
    checkpoint or ``none`` (default: the model's own, :func:`refiner_path`; :mod:`lfa_ray.refine`).
    Photos are decoded, and their files written, beside the model (:class:`PhotoWork`)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, size, trained_with = load_model(checkpoint, dev)
    refine_path = refiner_path(refine, checkpoint)
    refiner = load_refiner(refine_path, dev)
    layout = None if readout_sets is None else readout_layout(trained_with, readout_sets)
    files = find_images(inputs)
    print(f"segmenting {len(files)} photos with {find_model(checkpoint)}"
          + (f", refined by {refine_path}" if refiner else ""))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with PhotoWork(batch_size) as work:
        for chunk, photos in work.decoded(files, partial(_decode, reduce_to=max(size, READ_SIDE))):
            masks = segment(model, size, [p.pixels for p in photos], dev, out_sizes=[p.size for p in photos],
                            tta=tta, refiner=refiner)
            for f, photo, mask in zip(chunk, photos, masks, strict=True):
                work.submit(_write, out_dir, f, photo, mask, layout)
        done = work.results()  # per photo, in order: (mask file, read-out row or None)
    written, readings = [w for w, _ in done], [r for _, r in done]
    if layout is not None and written:
        import pandas as pd

        pd.DataFrame(readings).to_csv(out_dir / "readout.csv", index=False, float_format="%.4f")
    if work.skipped:
        raise UserError(f"{len(written)} of {len(files)} photos written to {out_dir}; "
                        f"{len(work.skipped)} could not be decoded (named above): remove or fix them")
    return written


def _write(out_dir: Path, f: Location, photo: Photo, mask: np.ndarray,
           layout: Optional[ReadoutConfig]) -> tuple[Path, Optional[dict]]:
    """One photo's files: its mask, overlay and (with ``layout``) read-out strip; its read-out row."""
    stem = Path(f.name).stem
    Image.fromarray(mask * 255).save(out_dir / f"{stem}_mask.png")
    h, w = photo.pixels.shape[:2]
    small = scale_mask(mask, (w, h))
    Image.fromarray(overlay(photo.pixels, np.zeros_like(small), small)).save(out_dir / f"{stem}_overlay.png")
    if layout is None:
        return out_dir / f"{stem}_mask.png", None
    reading = readout.read(photo.pixels, small, layout)
    if reading.strip is not None:
        Image.fromarray(reading.strip).save(out_dir / f"{stem}_readout.png")
    return out_dir / f"{stem}_mask.png", {"name": f.name, **reading.row()}


def _decode(path: Location, reduce_to: int) -> Photo:
    try:
        return read_photo(path, reduce_to)
    except Exception:  # noqa: BLE001 - name the file, whatever PIL raised
        raise UserError(f"{path}: cannot be decoded as an image") from None

