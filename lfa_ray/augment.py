"""Augmentation pipelines (albumentations), scaled by one knob ``train.aug_strength``.

Images arrive already resized to ``data.image_size`` (the original's first step),
so the pipelines start after its Resize. At strength 1 the geometry is the
original's: Rotate(limit=35, p=1), HorizontalFlip(0.5), VerticalFlip(0.1); at 0
nothing remains. Photometric jitter (brightness/contrast, blur, noise) scales with
the same knob. Image and mask always share the geometry.

The pipelines end in uint8 tensors; the original's Normalize (to [0, 1]) is
:func:`to_unit`, applied by the training loop after the copy to the device, so the
loader processes, pinned memory and the host-to-GPU copy move a quarter of the bytes.
"""

from __future__ import annotations

import os
from unittest import mock

import cv2
import numpy as np
import torch

from lfa_ray.images import coverage

# albumentations asks PyPI for a newer version at its import, in every Ray worker; an offline
# cluster node waits for the name lookup to fail. lfa_ray pins its version: no check. Its switch
# is set for the import alone, so importing lfa_ray leaves the environment as it was.
with mock.patch.dict(os.environ, {"NO_ALBUMENTATIONS_UPDATE": "1"}):
    import albumentations as A
    from albumentations.pytorch import ToTensorV2


def resize(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The first step of every path into the model (training, validation, test, predict): a photo
    to ``size`` x ``size`` (area interpolation), and its 0/1 mask with it as *coverage*: the share
    of each new pixel inside the mask, 0-255 (:func:`lfa_ray.images.coverage`), aligned with the
    photo's pixels by the same interpolation. The loss learns the share, so an edge is learned
    where it lies within a pixel rather than rounded to whole pixels (at 64 px, rounding alone caps
    a 320 x 240 photo's Dice at 0.95); the metrics count a pixel as inside where at least half of
    it is (:data:`lfa_ray.images.HALF`)."""
    small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return small, None if mask is None else coverage(mask, (size, size))


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (on any device, in any memory format) as the model's float input: the original
    project's Normalize(mean 0, std 1, max_pixel_value 255), i.e. x / 255 in [0, 1], equal bit for
    bit to albumentations' (a test checks all 256 values)."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"to_unit takes uint8 pixels, not {pixels.dtype}")
    return pixels.float().mul_(1 / 255)


def model_input(images: list[np.ndarray], size: int) -> torch.Tensor:
    """Photos as the model sees them outside training: resized, batched, normalised (:func:`to_unit`)."""
    transform = val_transform()
    return to_unit(torch.stack([transform(image=resize(im, None, size)[0])["image"] for im in images]))


def train_transform(strength: float, seed: int = 0) -> A.Compose:
    s = float(strength)
    steps = []
    if s > 0:
        steps = [
            A.Rotate(limit=35 * s, p=1.0, mask_interpolation=cv2.INTER_LINEAR),  # coverage turns as the photo does
            A.HorizontalFlip(p=0.5 * s),
            A.VerticalFlip(p=0.1 * s),
            A.RandomBrightnessContrast(brightness_limit=0.25 * s, contrast_limit=0.25 * s, p=0.5 * s),
            A.GaussianBlur(sigma_limit=(0.1, 1.0 * s + 0.1), p=0.2 * s),
            A.GaussNoise(std_range=(0.0, 0.04 * s), p=0.3 * s),
        ]
    return A.Compose([*steps, ToTensorV2()], seed=seed)


def val_transform() -> A.Compose:
    return A.Compose([ToTensorV2()], seed=0)
