"""Decoding photos and masks as a phone takes them: EXIF orientation, HEIC/HEIF, any bit depth.

Every place that reads an image (``data check``, ``data pack``, training, ``predict``) goes
through :func:`read_photo` and :func:`read_mask`:

- the EXIF orientation tag is applied, so pixels are as the photo is displayed;
- HEIC/HEIF (iPhones' default) is read through pillow-heif;
- 16-bit, 32-bit and float images are scaled to 8 bits (not clipped to white); grayscale, CMYK,
  palette and alpha images become RGB;
- a JPEG far larger than the size it is needed at is decoded reduced (libjpeg's DCT scaling by
  1/2, 1/4 or 1/8, staying at least twice that size so the resize after it still averages
  pixels): a 12-megapixel phone photo trained at 64 px decodes many times faster
  (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional, Protocol

import cv2
import numpy as np
from PIL import Image, ImageOps

try:  # HEIC/HEIF support; a machine without pillow-heif still reads every other format
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a dependency; the bare GPU box may lack it
    pass

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp", ".heic", ".heif", ".webp"}
# EXIF orientations that swap width and height (transpose, 90°, transverse, 270°)
_SWAPS = {5, 6, 7, 8}
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


class Readable(Protocol):
    def read_bytes(self) -> bytes: ...


@dataclass
class Photo:
    pixels: np.ndarray  # H x W x 3 uint8 RGB as displayed; smaller than ``size`` when decoded reduced
    size: tuple[int, int]  # (width, height) as displayed, at full resolution
    orientation: int  # the EXIF orientation applied (1: none)

    def orient(self, mask: np.ndarray) -> Optional[np.ndarray]:
        """``mask`` at this photo's displayed size: as it is if it matches, rotated like the photo
        if it matches the photo's stored (unrotated) pixels instead; None if it matches neither."""
        h, w = mask.shape[:2]
        if (w, h) == self.size:
            return mask
        if self.orientation in _SWAPS and (h, w) == self.size:
            return turn(mask, self.orientation)
        return None


def turn(mask: np.ndarray, orientation: int) -> np.ndarray:
    """A mask drawn on a photo's stored pixels, turned as the photo is displayed (EXIF ``orientation``)."""
    return mask if orientation == 1 else np.asarray(Image.fromarray(mask).transpose(_TRANSPOSE[orientation]))


def header(data: bytes) -> tuple[tuple[int, int], tuple[int, int], int]:
    """A photo's stored (width, height), its size as displayed and its EXIF orientation, from its header."""
    with Image.open(io.BytesIO(data)) as img:
        orientation = _orientation(img)
        w, h = img.size
    return (w, h), ((h, w) if orientation in _SWAPS else (w, h)), orientation


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(0x0112, 1))  # Orientation
    except (TypeError, ValueError, SyntaxError, OSError):  # a broken EXIF block: show the pixels as stored
        return 1
    return value if value in _TRANSPOSE else 1


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F" and a.size and a.max() <= 1.0:
            top = 1.0  # float images in [0, 1]
        elif img.mode.startswith("I;16") or (a.size and a.max() > 255):
            top = 65535.0  # 16-bit data (a 16-bit PNG may open as I;16 or I)
        else:
            top = 255.0
        gray = np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"))  # L, P, PA, LA, RGBA, CMYK, YCbCr; 48-bit PNGs open as RGB scaled


def read_photo(src: Readable, reduce_to: Optional[int] = None) -> Photo:
    """Decode a photo, oriented as displayed. ``reduce_to``: the side it will be resized to; a JPEG
    at least four times as large in both sides is decoded reduced (to at least twice that side)."""
    with Image.open(io.BytesIO(src.read_bytes())) as img:
        orientation = _orientation(img)
        w, h = img.size
        if reduce_to is not None and img.format == "JPEG":
            img.draft("RGB", (2 * reduce_to, 2 * reduce_to))
        img.load()
        if orientation != 1:
            img = img.transpose(_TRANSPOSE[orientation])
        pixels = _to_rgb(img)
    return Photo(pixels, (h, w) if orientation in _SWAPS else (w, h), orientation)


def read_mask(src: Readable) -> np.ndarray:
    """uint8 HxW in {0, 1}: any non-zero pixel (of a visible pixel, for masks with alpha) is foreground;
    an EXIF orientation tag on the mask itself is applied."""
    with Image.open(io.BytesIO(src.read_bytes())) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("P", "PA", "RGB", "RGBA", "LA", "CMYK", "YCbCr"):
            rgba = np.asarray(img.convert("RGBA"))
            fg = (rgba[..., :3].max(axis=-1) > 0) & (rgba[..., 3] > 0)
        else:  # 1, L, I, I;16, F
            fg = np.asarray(img) > 0
    return fg.astype(np.uint8)


HALF = 128  # coverage (of 255) from which a pixel counts as inside a mask


def coverage(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 0/1 mask at ``size`` (width, height) as the share of each new pixel inside it, 0-255
    (uint8), by area interpolation: aligned with its photo resized by area the same way."""
    share = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return np.round(share * 255).astype(np.uint8)


def scale_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 0/1 mask at ``size`` (width, height), aligned with its photo scaled the same way: shrunk to
    the pixels at least half inside (:func:`coverage`, :data:`HALF`), enlarged by the pixel whose
    centre is nearest. OpenCV's plain nearest neighbour takes each new pixel's top-left source
    pixel: shrinking by k it moves the mask (k - 1) / 2 source pixels down and right of a photo
    shrunk by area (2 px of a 320 x 240 photo at 64 px)."""
    w, h = size
    if mask.shape[:2] == (h, w):
        return mask
    if w <= mask.shape[1] and h <= mask.shape[0]:
        return (coverage(mask, size) >= HALF).astype(np.uint8)
    return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
