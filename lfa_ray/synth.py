"""Synthetic LFA cassette photos with read-window and line masks, randomised the way phone photos vary.

Each image is drawn like a phone photo of a test cassette: a background (table tops, wood, cloth,
printed paper, saturated colours, checks, stripes, dots), the cassette (bodies of several colours
and shapes with bevelled edges, a drop shadow, a sample well, printed brands and labels) with its
read window (recessed or flush, membranes of several tints and proportions) holding a control line
and a test line that is absent, faint or strong, and C/T marks. Then the framing, from far to
close-up (the cassette covers 10-80 % of the photo; close-ups crop its ends, never the window), in
portrait or landscape photos of several aspect ratios; rotation (mostly along the photo's long
side, sometimes any angle), perspective from a tilted phone, sometimes fingers over one end or a
holder around it; uneven lighting, cast shadows, glare, colour casts, blur or motion blur, sensor
noise (and JPEG compression when written). Window pixels hidden by fingers are not in the mask.

Everything is a function of ``(seed, index)``, so a set is the same on every machine.
``family`` restricts the style draws (body colours and background kinds) to one named family of
``STYLE_FAMILIES``: ``all`` (the default), ``plain`` (neutral cassettes on tables, wood, cloth,
paper) or ``bold`` (coloured cassettes on saturated and patterned backgrounds). Checks that train
on one family and test on the other measure how much a change of style costs (benchmarks/transfer.py).

The set is written in the original's folder layout (``train_images/NAME.jpg`` +
``train_masks/NAME_mask.gif``) so the default path exercises the real loader.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lfa_ray.cassettes import DRAWERS, KIND_WEIGHT, KINDS, RATIOS, hsv, smooth_noise
from lfa_ray.storage import new_folder

VERSION = 6  # bump when the drawing or its truth changes, so cached sets are regenerated
TRUTH_SUFFIX = "_readout.json"  # beside each mask: the read-out's ground truth
VISIBLE, SHOWN = 0.5, 1 / 3  # a line shows where this share of its contrast survives the clip, over this share of it
LONG_SIDE = 448  # px; the classic family's photos: 320
ASPECTS = [4 / 3, 3 / 2, 16 / 9, 1.0]  # long / short side; each as landscape or portrait
PORTRAIT = 0.55  # the share of portrait photos (phones are held upright)
# the cassette's area as a share of the photo's, far to close-up (ends cropped), drawn log-uniformly:
# as people photograph a test, down to a cassette a few percent of the frame (the classic cassette: 10 %)
FRAMING, CLASSIC_FRAMING = (0.015, 0.80), (0.10, 0.80)

# Style families: which body colours and background kinds a photo may draw.
BODIES = {
    "white": (0.93, 0.93, 0.92), "grey": (0.78, 0.79, 0.80), "cream": (0.92, 0.88, 0.76),
    "blue": (0.45, 0.62, 0.85), "green": (0.50, 0.75, 0.55), "pink": (0.90, 0.62, 0.72),
    "yellow": (0.95, 0.85, 0.35), "dark": (0.22, 0.23, 0.26),
}
BACKGROUNDS = ("table", "wood", "cloth", "saturated", "checks", "stripes", "dots", "paper", "white", "marble",
               "dark", "foam", "box")
STYLE_FAMILIES = {  # body colours, backgrounds, cassette kinds (lfa_ray.cassettes)
    "all": (tuple(BODIES), BACKGROUNDS, KINDS),
    # neutral cassettes on tables, paper and other plain surfaces
    "plain": (("white", "grey", "cream"), ("table", "wood", "cloth", "paper", "white", "marble", "dark", "foam"),
              KINDS),
    "bold": (("blue", "green", "pink", "yellow", "dark"), ("saturated", "checks", "stripes", "dots", "box"), KINDS),
    # the classic cassette (a flat body, a wide rectangular window) on the first eight backgrounds: the
    # photos the read-out was designed on
    "classic": (tuple(BODIES), BACKGROUNDS[:8], ("classic",)),
}
FAMILIES = tuple(STYLE_FAMILIES)
# how often each is drawn (within a family, renormalised): most cassettes are white, most photos are
# taken on tables and paper
_BODY_WEIGHT = {"white": 8, "grey": 1.5, "cream": 1.5, "blue": 1, "green": 0.7, "pink": 0.7, "yellow": 0.7,
                "dark": 0.8}
_BACKGROUND_WEIGHT = {"table": 3, "wood": 2, "cloth": 1, "paper": 1, "saturated": 1.5, "checks": 0.7,
                      "stripes": 0.7, "dots": 0.7, "white": 4, "marble": 1, "dark": 1.2, "foam": 0.5, "box": 1}
_TABLES = [(0.55, 0.38, 0.22), (0.70, 0.52, 0.33), (0.85, 0.85, 0.83), (0.40, 0.40, 0.42),
           (0.15, 0.15, 0.17), (0.25, 0.35, 0.55), (0.60, 0.65, 0.58), (0.90, 0.88, 0.80)]
_WRITING = ["(+ve)", "(-ve)", "10-2", "P0.1", "Tracker 1:2", "neg", "pos", "#3", "12:40", "A4"]


def _background(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind in ("saturated", "checks", "stripes", "dots", "box"):
        a = hsv(rng.uniform(), rng.uniform(0.5, 1.0), rng.uniform(0.35, 0.95))
    elif kind in ("white", "foam", "marble"):  # paper, white tables, styrofoam: nearly white, often grey in the shade
        a = np.clip(np.float32(rng.uniform(0.62, 0.97)) + rng.normal(0, 0.02, 3).astype(np.float32), 0, 1)
    elif kind == "dark":
        a = np.clip(np.float32(rng.uniform(0.03, 0.2)) + rng.normal(0, 0.02, 3).astype(np.float32), 0, 1)
    else:
        a = np.clip(np.array(_TABLES[rng.integers(len(_TABLES))], np.float32) + rng.normal(0, 0.05, 3), 0, 1)
    img = np.ones((h, w, 3), np.float32) * a
    if kind in ("checks", "stripes", "dots"):
        b = hsv(rng.uniform(), rng.uniform(0.0, 1.0), rng.uniform(0.2, 1.0))
        period = rng.uniform(10, 40)
        th = rng.uniform(0, np.pi)
        u, v = xx * np.cos(th) + yy * np.sin(th), -xx * np.sin(th) + yy * np.cos(th)
        if kind == "checks":
            on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
        elif kind == "stripes":
            on = np.floor(u / period) % 2 == 0
        else:
            on = ((u % period - period / 2) ** 2 + (v % period - period / 2) ** 2) < (period * 0.3) ** 2
        img[on] = b
    elif kind == "wood":
        y = yy + 6 * smooth_noise(rng, h, w, 4)
        img *= (1 + 0.08 * np.sin(y * rng.uniform(0.15, 0.5)))[..., None]
    elif kind == "cloth":
        img *= (1 + 0.05 * np.sin(xx * 1.3) * np.sin(yy * 1.3))[..., None]
    elif kind == "paper":  # a printed leaflet: white with text lines
        img[:] = np.clip(0.93 + rng.normal(0, 0.02), 0, 1)
        for y in np.arange(rng.uniform(5, 15), h, rng.uniform(9, 16)):
            x0 = rng.uniform(0, w * 0.2)
            img[int(y):int(y) + 2, int(x0):int(x0 + rng.uniform(0.4, 0.9) * w)] *= 0.35
    elif kind == "marble":  # soft grey veins
        veins = np.abs(np.sin(3 * smooth_noise(rng, h, w, 3) + xx / w * rng.uniform(2, 6)))
        img *= (1 - 0.08 * np.exp(-veins * 5))[..., None]
    elif kind == "foam":  # styrofoam: white beads, a box's walls
        img *= (1 + 0.06 * smooth_noise(rng, h, w, max(4, w // 6)))[..., None]
        inner = rng.uniform(0.1, 0.3)
        wall = (np.minimum(np.minimum(xx, w - xx) / w, np.minimum(yy, h - yy) / h) < inner).astype(np.float32)
        img *= (1 - rng.uniform(0.1, 0.3) * cv2.GaussianBlur(wall, (0, 0), 3))[..., None]
    elif kind == "box":  # a printed box or page: blocks of colour and big print
        for _ in range(int(rng.integers(2, 5))):
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            colour = hsv(rng.uniform(), rng.uniform(0, 1), rng.uniform(0.1, 1))
            img[int(y0):int(y0 + rng.uniform(0.1, 0.6) * h), int(x0):int(x0 + rng.uniform(0.1, 0.6) * w)] = colour
    img *= 1 + 0.08 * smooth_noise(rng, h, w, 5)[..., None]
    return img + rng.normal(0, 0.015, img.shape).astype(np.float32)


def _clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    """Things beside the cassette on the table, in place: handwriting, a colour card, cables, text."""
    h, w = img.shape[:2]
    if rng.random() < 0.2:  # handwriting on the paper, e.g. a result written under the cassette
        layer = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            text = _WRITING[rng.integers(len(_WRITING))]
            scale = rng.uniform(0.4, 1.4) * min(h, w) / 300
            cv2.putText(layer, text, (int(rng.uniform(0, 0.7) * w), int(rng.uniform(0.1, 1) * h)),
                        cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, scale, 255, max(1, int(scale * 2)), cv2.LINE_AA)
        ink = np.array([0.1, 0.12, 0.2], np.float32)
        a = (layer.astype(np.float32) / 255)[..., None] * rng.uniform(0.6, 0.95)
        img[:] = img * (1 - a) + ink * a
    if rng.random() < 0.06:  # a colour card: a grid of patches
        rows, cols = int(rng.integers(3, 5)), int(rng.integers(4, 7))
        cell = rng.uniform(0.03, 0.07) * max(h, w)
        x0, y0 = rng.uniform(0, w - cols * cell), rng.uniform(0, h - rows * cell)
        for r in range(rows):
            for c in range(cols):
                y, x = int(y0 + r * cell), int(x0 + c * cell)
                img[y + 1:int(y + cell) - 1, x + 1:int(x + cell) - 1] = hsv(rng.uniform(), rng.uniform(),
                                                                           rng.uniform(0.1, 1))
    if rng.random() < 0.1:  # cables: thick dark curves
        layer = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            t = np.linspace(0, 1, 30)[:, None]
            p = rng.uniform(-0.2, 1.2, (4, 2)) * [w, h]
            curve = ((1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t ** 2 * p[2] + t ** 3 * p[3])
            cv2.polylines(layer, [curve.astype(np.int32)], False, 255, int(rng.integers(3, 9)), cv2.LINE_AA)
        a = (layer.astype(np.float32) / 255)[..., None]
        img[:] = img * (1 - a) + hsv(rng.uniform(), rng.uniform(0, 0.3), rng.uniform(0.05, 0.3)) * a


def _placement(rng: np.random.Generator, length: int, height: int, window: np.ndarray, w: int, h: int
               ) -> np.ndarray:
    """Homography from the flat cassette to the photo: a rotation (mostly along the photo's long
    side), an offset and perspective from a tilted phone, keeping the read window in frame."""
    along = 0.0 if w >= h else 90.0
    angle = np.deg2rad((along + rng.normal(0, 15) if rng.random() < 0.9 else rng.uniform(0, 360))
                       + (180 if rng.random() < 0.3 else 0))
    src = np.array([[0, 0], [length, 0], [length, height], [0, height]], np.float32)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = (src - [length / 2, height / 2]) @ rot.T
    span = corners.max(0) - corners.min(0)
    room = np.abs(np.array([w, h]) - span) / 2 + 0.05 * span  # a close-up may be off-centre too
    centre = np.array([w / 2, h / 2]) + rng.uniform(-1, 1, 2) * room
    tilt = rng.uniform(0.0, 0.12)
    dst = corners + centre + rng.uniform(-tilt, tilt, corners.shape) * length
    warp = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    ys, xs = np.nonzero(window)
    box = np.array([[[xs.min(), ys.min()], [xs.max(), ys.min()], [xs.max(), ys.max()], [xs.min(), ys.max()]]],
                   np.float32)
    seen = cv2.perspectiveTransform(box, warp)[0]
    margin = 0.03 * min(w, h)
    low, high = seen.min(0) - margin, seen.max(0) + margin - [w, h]
    shift = np.where(low < 0, -low, 0) - np.where(high > 0, high, 0)  # move the window fully into view
    return cv2.getPerspectiveTransform(src, (dst + shift).astype(np.float32))


def _occluders(rng: np.random.Generator, w: int, h: int, a: np.ndarray, warp: np.ndarray, length: int,
               height: int) -> tuple[np.ndarray, np.ndarray]:
    """Fingers (skin-coloured rounded strokes) at the cassette's ends, or a holder frame around it:
    (coverage 0..1, colour)."""
    cover = np.zeros((h, w), np.float32)
    colour = np.zeros((h, w, 3), np.float32)
    if rng.random() < 0.25:  # fingers holding one end: skin-coloured, round-tipped, from outside the frame side
        skin = hsv(rng.uniform(0.02, 0.08), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
        at_start = rng.random() < 0.5
        for _ in range(int(rng.integers(1, 3))):
            y = height * rng.uniform(0.15, 0.85)
            tip_x = length * (rng.uniform(0.04, 0.12) if at_start else rng.uniform(0.88, 0.96))
            base_x = tip_x + (-1 if at_start else 1) * length * rng.uniform(0.25, 0.4)
            tip, base = cv2.perspectiveTransform(np.array([[[tip_x, y], [base_x, y + rng.normal(0, height * 0.3)]]],
                                                          np.float32), warp)[0]
            thick = max(3, int(height * rng.uniform(0.3, 0.45) * np.linalg.norm(tip - base) / (length * 0.32)))
            stroke = np.zeros((h, w), np.uint8)
            cv2.line(stroke, tuple(int(v) for v in base), tuple(int(v) for v in tip), 255, thick)
            cv2.circle(stroke, tuple(int(v) for v in tip), thick // 2, 255, -1)
            cover = np.maximum(cover, cv2.GaussianBlur(stroke.astype(np.float32) / 255, (0, 0), 1.2))
        colour[:] = skin
    elif rng.random() < 0.15:  # a holder: a dark frame just around the cassette
        ring = cv2.dilate((a > 0.5).astype(np.uint8), np.ones((9, 9), np.uint8)) - (a > 0.5).astype(np.uint8)
        cover = cv2.GaussianBlur(ring.astype(np.float32), (0, 0), 1.0)
        colour[:] = hsv(rng.uniform(), rng.uniform(0, 0.5), rng.uniform(0.1, 0.4))
    return cover, colour


def _pick(rng: np.random.Generator, names: tuple, weight: dict) -> str:
    p = np.array([weight[n] for n in names], np.float64)
    return names[rng.choice(len(names), p=p / p.sum())]


# the classic family draws as the generator did before far shots and other cassettes (same photos, same bytes)
_CLASSIC_BACKGROUND_WEIGHT = {"table": 3, "wood": 2, "cloth": 1, "paper": 1, "saturated": 2, "checks": 1,
                              "stripes": 1, "dots": 1}


def _draw_style(rng: np.random.Generator, family: str) -> tuple[str, str, str]:
    """The cassette's kind and body colour and the background's kind."""
    bodies, backgrounds, kinds = STYLE_FAMILIES[family]
    if family == "classic":
        return "classic", bodies[rng.integers(len(bodies))], _pick(rng, backgrounds, _CLASSIC_BACKGROUND_WEIGHT)
    return _pick(rng, kinds, KIND_WEIGHT), _pick(rng, bodies, _BODY_WEIGHT), _pick(rng, backgrounds, _BACKGROUND_WEIGHT)


def render(seed: int, index: int, family: str = "all", invalid_share: float = 0.0
           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One synthetic photo (uint8 RGB) and its masks {'window', 'lines'} (uint8 0/1).

    ``invalid_share``: the share of cassettes drawn without a control line (a failed test); it is
    decided apart from everything else, so the other photos stay the same. :func:`render_truth`
    also gives the read-out's ground truth."""
    image, masks, _ = render_truth(seed, index, family, invalid_share)
    return image, masks


def render_truth(seed: int, index: int, family: str = "all", invalid_share: float = 0.0
                 ) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """:func:`render` and the photo's read-out truth (:func:`_truth`)."""
    invalid = bool(np.random.default_rng([seed, index, 2]).random() < invalid_share)
    rng = np.random.default_rng([seed, index])
    kind, body_name, background = _draw_style(rng, family)
    classic = family == "classic"
    aspect = ASPECTS[rng.integers(len(ASPECTS))]
    long_side = 320 if classic else LONG_SIDE
    w, h = long_side, int(round(long_side / aspect))
    if rng.random() < (0.35 if classic else PORTRAIT):
        w, h = h, w
    img = _background(rng, h, w, background)
    if not classic:
        _clutter(rng, img)
    ratio = rng.uniform(*RATIOS[kind])  # the cassette's width / length
    # log-uniform; the classic cassette in close-ups, as it always was
    share = np.exp(rng.uniform(*np.log(CLASSIC_FRAMING if kind == "classic" else FRAMING)))
    length = int(min(np.sqrt(share * w * h / max(ratio, 0.2)), 1.3 * max(w, h)))
    body = np.clip(np.array(BODIES[body_name], np.float32) + rng.normal(0, 0.03, 3), 0.05, 1.0).astype(np.float32)
    rgb, alpha, window, lines, layout = DRAWERS[kind](rng, length, ratio, body, invalid)
    warp = _placement(rng, length, alpha.shape[0], window, w, h)
    size = (w, h)
    rgb = np.stack([cv2.warpPerspective(drawing, warp, size, flags=cv2.INTER_LINEAR) for drawing in rgb])
    a = cv2.warpPerspective(alpha, warp, size, flags=cv2.INTER_LINEAR).astype(np.float32) / 255
    masks = {name: (cv2.warpPerspective(m, warp, size, flags=cv2.INTER_NEAREST) > 127).astype(np.uint8)
             for name, m in (("window", window), ("lines", lines))}

    # its shadow on the table: short and crisp under a ceiling light, long and soft beside a window
    if classic:
        shift = np.float32([[1, 0, rng.uniform(2, 8)], [0, 1, rng.uniform(2, 8)]])
        img *= (1 - 0.4 * cv2.GaussianBlur(cv2.warpAffine(a, shift, size), (0, 0), 4))[..., None]
    else:
        away = rng.uniform(0, 2 * np.pi)
        reach = length * rng.uniform(0.005, 0.06) + 2
        shift = np.float32([[1, 0, reach * np.cos(away)], [0, 1, reach * np.sin(away)]])
        shadow = cv2.GaussianBlur(cv2.warpAffine(a, shift, size), (0, 0), 1 + length * rng.uniform(0.005, 0.04))
        img *= (1 - rng.uniform(0.15, 0.55) * shadow)[..., None]
    img = img * (1 - a[..., None]) + rgb * a[..., None]  # from here on, the scene of each of the DRAWINGS
    cover, colour = _occluders(rng, w, h, a, warp, length, alpha.shape[0])
    if cover.any():
        img = img * (1 - cover[..., None]) + colour * cover[..., None]
        hidden = cover > 0.5
        for m in masks.values():
            m[hidden] = 0

    # Lighting: a linear gradient, vignette, colour cast and exposure, cast shadows and glare.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phi = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - w / 2) * np.cos(phi) + (yy - h / 2) * np.sin(phi)) / max(w, h)
    vignette = 1 - 0.25 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2)
    img *= ((1 + rng.uniform(-0.6, 0.6) * ramp) * vignette)[..., None]
    cast = rng.normal(0, 0.04, 3) if rng.random() < 0.6 else rng.normal(0, 0.12, 3)  # sometimes a strong cast
    img *= (1 + cast).astype(np.float32) * rng.uniform(0.7, 1.15)
    if rng.random() < 0.45:  # a hand or phone casting a soft shadow over part of the scene
        p = rng.uniform(0, 1, 2) * [w, h]
        th = rng.uniform(0, 2 * np.pi)
        side = ((xx - p[0]) * np.cos(th) + (yy - p[1]) * np.sin(th) > 0).astype(np.float32)
        img *= (1 - rng.uniform(0.2, 0.5) * cv2.GaussianBlur(side, (0, 0), 8))[..., None]
    if rng.random() < 0.3:  # glare: a soft specular highlight, possibly over the window
        c = rng.uniform(0.2, 0.8, 2) * [w, h]
        axes = rng.uniform(0.04, 0.15, 2) * max(w, h)
        spot = np.zeros((h, w), np.float32)
        cv2.ellipse(spot, (int(c[0]), int(c[1])), (int(axes[0]), int(axes[1])), rng.uniform(0, 180), 0, 360, 1.0, -1)
        img += (rng.uniform(0.3, 0.8) * cv2.GaussianBlur(spot, (0, 0), axes.min() / 3 + 1))[..., None]
    blur = rng.random()
    if blur < 0.15:  # motion blur: a shaking hand
        k = int(rng.integers(3, 9))
        kernel = np.zeros((k, k), np.float32)
        cv2.line(kernel, (0, k // 2), (k - 1, k // 2), 1.0, 1)
        rot = cv2.getRotationMatrix2D(((k - 1) / 2, (k - 1) / 2), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (k, k))
        img = np.stack([cv2.filter2D(scene, -1, kernel / max(kernel.sum(), 1e-6)) for scene in img])
    elif blur < 0.75:
        sigma = rng.uniform(0.3, 1.3)
        img = np.stack([cv2.GaussianBlur(scene, (0, 0), sigma) for scene in img])
    img += rng.normal(0, rng.uniform(0.005, 0.03), img.shape[1:]).astype(np.float32)
    truth = _truth(layout, warp, masks["window"], cv2.warpPerspective(window, warp, size, flags=cv2.INTER_NEAREST),
                   _visible(img, layout, warp))
    return (np.clip(img[0], 0, 1) * 255).round().astype(np.uint8), masks, truth


def _visible(scenes: np.ndarray, layout: dict, warp: np.ndarray) -> dict[str, bool]:
    """Whether the photo shows each line (or, where the line is absent, would show it): over at
    least SHOWN of the line's length, at least VISIBLE of its contrast with the membrane (the scene
    with the line drawn against the scene without it, lit, before the photo clips at white; in the
    pixel's clearest colour channel) survives the clip. Glare and overexposure wash a line out; a
    line the photo does not reach (covered, outside) is not shown either."""
    h, w = scenes.shape[1:3]
    shown = {}
    for name, line in layout["lines"].items():
        x0, y0, x1, y1 = line["box"]
        around = np.zeros((y1 + 4, x1 + 4), np.uint8)
        around[max(0, y0 - 3):y1 + 3, max(0, x0 - 3):x1 + 3] = 1  # the line and its blur
        place = cv2.warpPerspective(around, warp, (w, h), flags=cv2.INTER_NEAREST) > 0
        drawn, bare = scenes[0 if line["strength"] > 0 else 2][place], scenes[1][place]
        lit = np.abs(drawn - bare).max(axis=1)
        seen = np.abs(np.clip(drawn, 0, 1) - np.clip(bare, 0, 1)).max(axis=1)
        core = lit > 0.5 * lit.max() if len(lit) else lit > 0  # the line itself, not its blurred fringe
        shown[name] = bool(core.any() and (seen[core] >= VISIBLE * lit[core]).mean() >= SHOWN)
    return shown


def _truth(layout: dict, warp: np.ndarray, seen: np.ndarray, whole: np.ndarray, visible: dict[str, bool]) -> dict:
    """What a reader should report for the photo: each line's place (share of the window's length from
    the sample end, and its centre in the photo), strength (the dye's opacity; 0: absent), level and
    whether the photo shows it (``visible``, :func:`_visible`), the window's corners in the photo
    (sample end first) and the share of it hidden, the call, and whether the photo shows what the
    call rests on (``readable``: the control line's place, and the test line's unless invalid); a
    reader that declines a photo that is not readable is right to."""
    y0, y1 = layout["window"][0][1], layout["window"][2][1]
    lines = {}
    for name, line in layout["lines"].items():
        centre = cv2.perspectiveTransform(np.float32([[[line["x"], (y0 + y1) / 2]]]), warp)[0, 0]
        strength = line["strength"]
        lines[name] = {"at": round(line["at"], 4), "strength": round(strength, 4),
                       "centre": [round(float(v), 1) for v in centre],
                       "level": "absent" if strength == 0 else "faint" if strength < 0.4 else "strong",
                       "visible": visible[name]}
    corners = cv2.perspectiveTransform(np.float32([layout["window"]]), warp)[0]
    call = ("invalid" if lines["control"]["strength"] == 0 else
            "positive" if lines["test"]["strength"] > 0 else "negative")
    readable = visible["control"] and (call == "invalid" or visible["test"])
    return {"call": call, "readable": readable, "lines": lines,
            "window": [[round(float(v), 1) for v in c] for c in corners],
            "hidden": round(1 - float(seen.sum()) / max(1, float((whole > 127).sum())), 4)}


CHUNK = 16  # photos a process or Ray task draws at a time


def write_synthetic(out: str | Path, n: int, *, seed: int = 0, target: str = "window", family: str = "all",
                    invalid_share: float = 0.0, how: str = "auto") -> Path:
    """Write ``n`` cassettes into ``out`` in the original layout, each with its read-out truth
    (``train_masks/NAME_readout.json``, :func:`_truth`, and the JPEG quality the photo was saved
    at); the folder appears complete or not at all.

    ``how`` draws them: ``ray`` in Ray tasks across the cluster's CPUs (this process joined it), the
    files written here as the tasks return them; ``processes`` on this machine's CPUs; ``serial``;
    ``auto``: Ray where it has started, else processes for 100 photos or more. Each photo is a
    function of ``(seed, index)`` alone, so every way writes the same bytes on one machine (a node
    of another CPU type may round OpenCV's arithmetic differently)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(out)
    with new_folder(out) as tmp:
        (tmp / "train_images").mkdir()
        (tmp / "train_masks").mkdir()
        for name, jpg, gif, truth in _drawn(n, (seed, target, family, invalid_share), how):
            (tmp / "train_images" / f"{name}.jpg").write_bytes(jpg)
            (tmp / "train_masks" / f"{name}_mask.gif").write_bytes(gif)
            (tmp / "train_masks" / f"{name}{TRUTH_SUFFIX}").write_text(truth)
    return out


def _drawn(n: int, settings: tuple, how: str):
    """Each photo's files, as :func:`_draw_chunk` makes them, ``how`` :func:`write_synthetic` says."""
    chunks = [(settings, range(i, min(n, i + CHUNK))) for i in range(0, n, CHUNK)]
    if how == "auto":
        import sys

        ray = sys.modules.get("ray")  # not imported here: only a process that started Ray uses it
        how = ("ray" if ray is not None and ray.is_initialized() and n >= 50 else
               "processes" if n >= 100 and (os.cpu_count() or 1) > 1 else "serial")
    if how == "ray":
        import ray

        task = ray.remote(num_cpus=1)(_draw_chunk)
        pending = [task.remote(*c) for c in chunks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield from ray.get(done[0])
    elif how == "processes":
        with ProcessPoolExecutor(min(os.cpu_count() or 1, len(chunks)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            for files in pool.map(_draw_chunk, *zip(*chunks, strict=True)):
                yield from files
    elif how == "serial":
        for c in chunks:
            yield from _draw_chunk(*c)
    else:
        raise ValueError(f"how={how!r}: ray, processes, serial or auto")


def _draw_chunk(settings: tuple, indices: range) -> list[tuple[str, bytes, bytes, str]]:
    """Photos ``indices`` of a set (``settings``: seed, target, family, invalid_share), each as its
    name, JPEG, GIF mask and read-out truth (JSON)."""
    import io

    cv2.setNumThreads(1)  # one photo per CPU: OpenCV's own threads would only contend
    seed, target, family, invalid_share = settings
    files = []
    for i in indices:
        image, masks, truth = render_truth(seed, i, family, invalid_share)
        quality = int(np.random.default_rng([seed, i, 1]).integers(55, 96))
        jpg, gif = io.BytesIO(), io.BytesIO()
        Image.fromarray(image).save(jpg, format="JPEG", quality=quality)
        Image.fromarray(masks[target] * 255).save(gif, format="GIF")
        truth["jpeg_quality"] = quality  # how the photo was saved: low quality erases faint lines
        files.append((f"cassette_{i:05d}", jpg.getvalue(), gif.getvalue(), json.dumps(truth)))
    return files


def cache_root() -> Path:
    return Path(os.environ.get("LFA_RAY_CACHE", Path.home() / ".cache" / "lfa_ray"))


def synthetic_path(n: int, target: str, seed: int = 0) -> Path:
    """Where the cached synthetic set for these settings is (or will be)."""
    return cache_root() / f"synthetic-v{VERSION}-{target}-n{n}-seed{seed}"


def synthetic_dataset(n: int, target: str, seed: int = 0) -> Path:
    """The cached synthetic set for these settings, generated on first use (in Ray tasks across the
    cluster where this process has started Ray: :func:`write_synthetic`)."""
    path = synthetic_path(n, target, seed)
    if not (path / "train_masks").is_dir():
        print(f"generating {n} synthetic cassettes into {path} (once; later runs reuse them)")
        try:
            write_synthetic(path, n, seed=seed, target=target)
        except FileExistsError:  # another process finished it first
            pass
    return path
