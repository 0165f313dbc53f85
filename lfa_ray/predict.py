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
a refining model in a crop around it (:func:`lfa_ray.infer.refine`). The inference itself is
:mod:`lfa_ray.infer`; this module is the command.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m lfa_ray.predict: the command, run before this copy defines anything,
    from lfa_ray.cli import predict  # so the module's state exists once (as lfa_ray.predict)

    raise SystemExit(predict())

from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from lfa_ray import readout
from lfa_ray.checkpoint import find_model, load_model
from lfa_ray.config import ReadoutConfig
from lfa_ray.errors import UserError
from lfa_ray.images import IMAGE_EXTS, Photo, read_photo, scale_mask
from lfa_ray.infer import READ_SIDE, PhotoWork, load_refiner, readout_layout, refiner_path, segment
from lfa_ray.runlog import overlay
from lfa_ray.storage import Location, locate


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


def run(checkpoint: str, inputs: str, out: str, batch_size: int = 16, device: str | None = None,
        readout_sets: list[str] | None = None, tta: bool = False, refine: str | None = None) -> list[Path]:
    """Write each photo's mask and overlay into ``out``. ``readout_sets`` (a list, maybe empty:
    ``--readout`` and its ``--set readout.KEY=VALUE`` items): also read each test
    (:mod:`lfa_ray.readout`): ``NAME_readout.png`` (the window straightened, lines marked) and one
    ``readout.csv`` for all photos. ``tta``: see :func:`predict`. ``refine``: a refining model's
    checkpoint or ``none`` (default: the model's own, :func:`lfa_ray.infer.refiner_path`; :func:`lfa_ray.infer.refine`).
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

