"""Synthetic LFA cassette photos with read-window and line masks.

Each image is drawn like a phone photo of a test cassette on a table: a
textured background, the plastic body with bevelled edges and a drop shadow,
the sample well, the read window (membrane) with a control line and a test
line that is absent, faint or strong, printed C/T marks, then rotation and
mild perspective, uneven lighting, an occasional cast shadow, blur, sensor
noise and JPEG compression. Everything is a function of ``(seed, index)``.

``family`` picks the style: ``plain`` (the default: neutral table tops, white cassettes) or
``bold`` (saturated table tops, coloured cassette bodies), drawn from a separate random stream
so a plain photo is the same whether or not other families exist. Checks that train on one
family and test on the other measure how much a change of style costs (benchmarks/transfer.py).

The set is written in the seed's folder layout (``train_images/NAME.jpg`` +
``train_masks/NAME_mask.gif``) so the default path exercises the real loader.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

WIDTH, HEIGHT = 320, 240
VERSION = 1  # bump when the drawing changes, so cached sets are regenerated

_BACKGROUNDS = [  # table tops and cloths, RGB in [0, 1]
    (0.55, 0.38, 0.22), (0.70, 0.52, 0.33), (0.85, 0.85, 0.83), (0.40, 0.40, 0.42),
    (0.15, 0.15, 0.17), (0.25, 0.35, 0.55), (0.60, 0.65, 0.58), (0.90, 0.88, 0.80),
]
_BOLD_BACKGROUNDS = [  # saturated cloths, mats and painted tables
    (0.10, 0.25, 0.75), (0.80, 0.15, 0.15), (0.10, 0.55, 0.20), (0.95, 0.75, 0.10),
    (0.55, 0.15, 0.60), (0.05, 0.60, 0.65), (0.95, 0.45, 0.10), (0.85, 0.30, 0.55),
]
_BOLD_BODIES = [(0.45, 0.62, 0.85), (0.50, 0.75, 0.55), (0.90, 0.62, 0.72), (0.95, 0.85, 0.35), (0.25, 0.26, 0.30)]
FAMILIES = ("plain", "bold")
_LABELS = ["Ag", "hCG", "LH", "COVID-19", "FLU A/B", "HIV", "TEST"]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    grid = rng.standard_normal((cells, max(2, cells * w // h))).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, palette: list = _BACKGROUNDS) -> np.ndarray:
    base = np.array(palette[rng.integers(len(palette))], np.float32)
    base = np.clip(base + rng.normal(0, 0.05, 3), 0, 1)
    img = np.ones((HEIGHT, WIDTH, 3), np.float32) * base
    img *= 1 + 0.08 * _smooth_noise(rng, HEIGHT, WIDTH, 5)[..., None]
    if rng.random() < 0.4:  # wood grain
        y = np.arange(HEIGHT, dtype=np.float32)[:, None] + 6 * _smooth_noise(rng, HEIGHT, WIDTH, 4)
        img *= (1 + 0.07 * np.sin(y * rng.uniform(0.15, 0.5)))[..., None]
    img += rng.normal(0, 0.015, img.shape).astype(np.float32)
    return img


def _cassette(rng: np.random.Generator, length: int, colour: tuple = (0.93, 0.93, 0.92)
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw the cassette flat: colour, alpha, window mask and line mask, all ``height x length``."""
    height = int(length * rng.uniform(0.24, 0.30))
    low = 0.75 if min(colour) > 0.75 else 0.0
    body = np.clip(np.array(colour) + rng.normal(0, 0.03, 3), low, 1.0).astype(np.float32)
    rgb = np.ones((height, length, 3), np.float32) * body
    rgb *= 1 + 0.01 * _smooth_noise(rng, height, length, 3)[..., None]

    alpha = np.zeros((height, length), np.uint8)
    r = max(3, height // 6)
    cv2.rectangle(alpha, (r, 0), (length - 1 - r, height - 1), 255, -1)
    cv2.rectangle(alpha, (0, r), (length - 1, height - 1 - r), 255, -1)
    for cx, cy in [(r, r), (length - 1 - r, r), (r, height - 1 - r), (length - 1 - r, height - 1 - r)]:
        cv2.circle(alpha, (cx, cy), r, 255, -1)
    edge = cv2.distanceTransform(alpha, cv2.DIST_L2, 3)
    rgb *= (1 - 0.28 * np.exp(-edge / 3.0))[..., None]  # bevelled rim

    # Sample well: a dark recessed ring around a pad.
    wx, wy = int(length * rng.uniform(0.13, 0.19)), height // 2
    ax, ay = int(length * 0.07), int(height * 0.26)
    cv2.ellipse(rgb, (wx, wy), (ax + 3, ay + 3), 0, 0, 360, tuple(float(c) for c in body * 0.62), -1)
    pad = np.clip(np.array([0.92, 0.90, 0.80]) + rng.normal(0, 0.03, 3), 0, 1)
    cv2.ellipse(rgb, (wx, wy), (ax, ay), 0, 0, 360, tuple(float(c) for c in pad), -1)

    # Read window: a recessed frame around the membrane.
    x0 = int(length * rng.uniform(0.40, 0.46))
    x1 = x0 + int(length * rng.uniform(0.30, 0.38))
    half = int(height * rng.uniform(0.15, 0.21))
    y0, y1 = wy - half, wy + half
    cv2.rectangle(rgb, (x0 - 3, y0 - 3), (x1 + 3, y1 + 3), tuple(float(c) for c in body * 0.7), -1)
    membrane = np.clip(np.array([0.96, 0.93, 0.94]) + rng.normal(0, 0.02, 3), 0, 1)
    rgb[y0:y1 + 1, x0:x1 + 1] = membrane
    window = np.zeros((height, length), np.uint8)
    window[y0:y1 + 1, x0:x1 + 1] = 255

    # Control line always; test line absent, faint or strong.
    lines = np.zeros_like(window)
    dye = np.array([0.55, 0.10, 0.35], np.float32) + rng.normal(0, 0.04, 3).astype(np.float32)
    test_strength = [0.0, rng.uniform(0.08, 0.25), rng.uniform(0.5, 0.9)][rng.integers(3)]
    lw = int(rng.integers(2, 5))
    ink = np.zeros((height, length), np.uint8)  # printed marks; putText draws on 8-bit images only
    for frac, strength, mark in [(0.72, rng.uniform(0.6, 0.95), "C"), (0.38, test_strength, "T")]:
        lx = x0 + int((x1 - x0) * frac)
        if strength > 0:
            seg = rgb[y0 + 1:y1, lx:lx + lw]
            rgb[y0 + 1:y1, lx:lx + lw] = seg * (1 - strength) + dye * strength
            lines[y0 + 1:y1, lx:lx + lw] = 255
        cv2.putText(ink, mark, (lx - 3, y0 - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.3, 255, 1, cv2.LINE_AA)
    label = _LABELS[rng.integers(len(_LABELS))]
    cv2.putText(ink, label, (x1 + 8, wy + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.3, 255, 1, cv2.LINE_AA)
    rgb *= 1 - 0.6 * (ink.astype(np.float32) / 255)[..., None]
    return rgb, alpha, window, lines


def _placement(rng: np.random.Generator, length: int, height: int) -> np.ndarray:
    """Homography from the flat cassette to the photo: rotation, offset, mild perspective."""
    angle = np.deg2rad(rng.uniform(-25, 25) + (180 if rng.random() < 0.2 else 0))
    centre = np.array([WIDTH / 2, HEIGHT / 2]) + rng.uniform(-0.1, 0.1, 2) * [WIDTH, HEIGHT]
    src = np.array([[0, 0], [length, 0], [length, height], [0, height]], np.float32)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = (src - [length / 2, height / 2]) @ rot.T + centre
    dst += rng.uniform(-0.04, 0.04, dst.shape) * length
    return cv2.getPerspectiveTransform(src, dst.astype(np.float32))


def render(seed: int, index: int, family: str = "plain") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One synthetic photo (uint8 RGB, HEIGHT x WIDTH) and its masks {'window', 'lines'} (uint8 0/1)."""
    rng = np.random.default_rng([seed, index])
    if family == "bold":
        style = np.random.default_rng([seed, index, 7])  # its own stream: the main one stays as for plain
        palette, colour = _BOLD_BACKGROUNDS, _BOLD_BODIES[style.integers(len(_BOLD_BODIES))]
    else:
        palette, colour = _BACKGROUNDS, (0.93, 0.93, 0.92)
    img = _background(rng, palette)
    length = int(WIDTH * rng.uniform(0.62, 0.82))
    rgb, alpha, window, lines = _cassette(rng, length, colour)
    warp = _placement(rng, length, rgb.shape[0])
    size = (WIDTH, HEIGHT)
    rgb = cv2.warpPerspective(rgb, warp, size, flags=cv2.INTER_LINEAR)
    a = cv2.warpPerspective(alpha, warp, size, flags=cv2.INTER_LINEAR).astype(np.float32) / 255
    masks = {name: (cv2.warpPerspective(m, warp, size, flags=cv2.INTER_NEAREST) > 127).astype(np.uint8)
             for name, m in (("window", window), ("lines", lines))}

    shift = np.float32([[1, 0, rng.uniform(2, 8)], [0, 1, rng.uniform(2, 8)]])
    shadow = cv2.GaussianBlur(cv2.warpAffine(a, shift, size), (0, 0), 4)
    img *= (1 - 0.4 * shadow)[..., None]
    img = img * (1 - a[..., None]) + rgb * a[..., None]

    # Lighting: a linear gradient, vignette, white balance and exposure.
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    phi = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - WIDTH / 2) * np.cos(phi) + (yy - HEIGHT / 2) * np.sin(phi)) / WIDTH
    vignette = 1 - 0.25 * (((xx - WIDTH / 2) / WIDTH) ** 2 + ((yy - HEIGHT / 2) / HEIGHT) ** 2)
    img *= ((1 + rng.uniform(-0.5, 0.5) * ramp) * vignette)[..., None]
    img *= (1 + rng.normal(0, 0.04, 3)).astype(np.float32) * rng.uniform(0.75, 1.12)
    if rng.random() < 0.4:  # a hand or phone casting a soft shadow over part of the scene
        p = rng.uniform(0, 1, 2) * [WIDTH, HEIGHT]
        th = rng.uniform(0, 2 * np.pi)
        side = ((xx - p[0]) * np.cos(th) + (yy - p[1]) * np.sin(th) > 0).astype(np.float32)
        img *= (1 - rng.uniform(0.2, 0.45) * cv2.GaussianBlur(side, (0, 0), 8))[..., None]
    if rng.random() < 0.7:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.3))
    img += rng.normal(0, rng.uniform(0.005, 0.03), img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), masks


def write_synthetic(out: str | Path, n: int, *, seed: int = 0, target: str = "window", family: str = "plain") -> Path:
    """Write ``n`` cassettes into ``out`` in the seed layout; the folder appears complete or not at all."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        (tmp / "train_images").mkdir()
        (tmp / "train_masks").mkdir()
        for i in range(n):
            image, masks = render(seed, i, family)
            quality = int(np.random.default_rng([seed, i, 1]).integers(55, 96))
            name = f"cassette_{i:05d}"
            Image.fromarray(image).save(tmp / "train_images" / f"{name}.jpg", quality=quality)
            Image.fromarray(masks[target] * 255).save(tmp / "train_masks" / f"{name}_mask.gif")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def cache_root() -> Path:
    return Path(os.environ.get("LFA_RAY_CACHE", Path.home() / ".cache" / "lfa_ray"))


def synthetic_dataset(n: int, target: str, seed: int = 0) -> Path:
    """The cached synthetic set for these settings, generated on first use."""
    path = cache_root() / f"synthetic-v{VERSION}-{target}-n{n}-seed{seed}"
    if not (path / "train_masks").is_dir():
        print(f"generating {n} synthetic cassettes into {path} (once; later runs reuse them)")
        try:
            write_synthetic(path, n, seed=seed, target=target)
        except FileExistsError:  # another process finished it first
            pass
    return path
