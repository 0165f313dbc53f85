"""Flat drawings of test cassettes and strips for the synthetic photos (:mod:`lfa_ray.synth`).

Each drawer returns the cassette seen from above, ``height x length`` pixels with the sample end at
x = 0: its colour (a stack of the three :data:`DRAWINGS`), alpha, read-window mask, line mask and
layout (the window's corners and each line's place, strength and box, in flat coordinates).

- ``classic``: a plain rectangular window in a flat body, thin C/T marks, a brand band.
- ``moulded``: what most real cassettes look like: a narrow slot (square, rounded or stadium
  ends, the read window being its tangent rectangle as annotators draw it) in a raised bezel,
  its inner walls shading the membrane, a sample well of several shapes, printed C/T (or C/2/1,
  C/L/I, IgG/IgM) letters, product names across the body, QR codes, vent dots, arrows, lot
  numbers, handwriting in marker, sometimes a second, empty slot.
- ``dipstick``: a bare strip with printed arrows and bars; the read window is the strip's full
  width between the two bars that bound its result zone.
"""

from __future__ import annotations

import cv2
import numpy as np

DRAWINGS = ("photo", "without lines", "every line place drawn")
TEST_AT, CONTROL_AT = 0.38, 0.72  # where the lines are drawn, as a share of the window's length from its sample end
FAINTEST = 0.08  # the faintest test line drawn: an absent one is visible where a line this faint would be
KINDS = ("classic", "moulded", "dipstick")
KIND_WEIGHT = {"classic": 0.25, "moulded": 0.62, "dipstick": 0.13}
RATIOS = {"classic": (0.22, 0.34), "moulded": (0.22, 0.36), "dipstick": (0.05, 0.12)}  # width / length

_LABELS = ["Ag", "hCG", "LH", "COVID-19", "FLU A/B", "HIV", "TEST", "hsCRP", "Strep A", "Malaria", "RSV", "PSA"]
_MEMBRANES = [(0.96, 0.93, 0.94), (0.95, 0.93, 0.85), (0.90, 0.90, 0.90), (0.97, 0.89, 0.91)]
_USED_MEMBRANES = [(0.96, 0.86, 0.88), (0.93, 0.84, 0.86), (0.98, 0.92, 0.90)]  # pink-tinged by the sample's flow
_BRANDS = ["QuickVue", "RapidCheck", "SureTest", "ClearLine", "BinaxNOW", "OneStep", "Accu", "iHealth", "FlowFlex"]
_PRODUCTS = ["COVID-19 Ag", "SARS-CoV-2", "Antigen", "Q-Line", "HIV 1/2", "Malaria", "Pf/Pv", "hCG", "FOB", "HBsAg",
             "HCV", "Syphilis", "Influenza", "A+B", "FeLV FIV", "Dengue", "TB", "Rapid Test", "Hotgen", "Boson",
             "LOT 2301", "REF 0571", "IgG/IgM", "Strep A", "CRP"]
_LETTERS = [("C", "T"), ("C", "T"), ("C", "T"), ("T", "C"), ("C", "2", "1"), ("C", "L", "I"), ("C", "G", "M"),
            ("C", "T1", "T2")]
_DYES = [(0.55, 0.10, 0.35), (0.70, 0.18, 0.35), (0.45, 0.10, 0.45), (0.60, 0.15, 0.25)]  # gold conjugates: red-purple
_BLUE = (0.25, 0.35, 0.75)  # latex-bead control lines (dipsticks)
_INKS = [(0.1, 0.1, 0.1), (0.15, 0.15, 0.2), (0.85, 0.45, 0.1), (0.15, 0.3, 0.7), (0.75, 0.15, 0.2),
         (0.2, 0.45, 0.25)]


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    grid = rng.standard_normal((cells, max(2, cells * w // max(h, 1)))).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def hsv(h: float, s: float, v: float) -> np.ndarray:
    px = np.uint8([[[int(h * 179) % 180, int(s * 255), int(v * 255)]]])
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255


def box_sdf(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, hw: float, hh: float, r: float) -> np.ndarray:
    """Signed distance (px, negative inside) to a rounded rectangle of half sizes hw, hh, corner radius r."""
    r = float(min(r, hw, hh))
    qx, qy = np.abs(xx - cx) - (hw - r), np.abs(yy - cy) - (hh - r)
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


def _inside(d: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of the region where the signed distance is negative."""
    return np.clip(0.5 - d, 0, 1).astype(np.float32)


def _paint(rgb: np.ndarray, where: np.ndarray, colour) -> None:
    """Blend ``colour`` into every drawing where ``where`` (0..1) says, in place."""
    w = where[..., None]
    rgb[:] = rgb * (1 - w) + np.asarray(colour, np.float32) * w


def _text(ink: np.ndarray, text: str, x: float, y: float, height: float, rng: np.random.Generator,
          upright: bool, font: int | None = None) -> None:
    """Print ``text`` centred at (x, y) into the 0..1 ``ink`` layer, letters ``height`` px tall;
    ``upright``: readable with the cassette standing (sample end down), else along its length."""
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_PLAIN]) if font is None
               else font)
    scale = max(height, 3) / 22.0
    thick = max(1, int(round(height / 9)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    patch = np.zeros((th + base + 4, tw + 4), np.uint8)
    cv2.putText(patch, text, (2, th + 2), font, scale, 255, thick, cv2.LINE_AA)
    if upright:
        patch = np.rot90(patch, 1 if rng.random() < 0.8 else 3)
    ph, pw = patch.shape
    x0, y0 = int(round(x - pw / 2)), int(round(y - ph / 2))
    h, w = ink.shape
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + pw), min(h, y0 + ph)
    if sx1 > sx0 and sy1 > sy0:
        part = patch[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0].astype(np.float32) / 255
        ink[sy0:sy1, sx0:sx1] = np.maximum(ink[sy0:sy1, sx0:sx1], part)


def _qr(ink: np.ndarray, x: float, y: float, side: float, rng: np.random.Generator) -> None:
    """A QR-code-like square (random modules, three finder squares) centred at (x, y)."""
    n = int(rng.choice([21, 25]))
    modules = (rng.random((n, n)) < 0.5).astype(np.float32)
    for fy, fx in ((0, 0), (0, n - 7), (n - 7, 0)):
        modules[fy:fy + 7, fx:fx + 7] = 1
        modules[fy + 1:fy + 6, fx + 1:fx + 6] = 0
        modules[fy + 2:fy + 5, fx + 2:fx + 5] = 1
    size = max(int(side), n)
    img = cv2.resize(modules, (size, size), interpolation=cv2.INTER_NEAREST)
    x0, y0 = int(x - size / 2), int(y - size / 2)
    h, w = ink.shape
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + size), min(h, y0 + size)
    if sx1 > sx0 and sy1 > sy0:
        ink[sy0:sy1, sx0:sx1] = np.maximum(ink[sy0:sy1, sx0:sx1], img[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0])


def _scribble(ink: np.ndarray, rng: np.random.Generator, box: tuple[float, float, float, float], thick: int) -> None:
    """Handwriting in marker: a few smooth strokes inside ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    for _ in range(int(rng.integers(1, 4))):
        t = np.linspace(0, 1, 24)[:, None]
        p = rng.uniform([x0, y0], [x1, y1], (4, 2))
        curve = ((1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t ** 2 * p[2] + t ** 3 * p[3])
        layer = np.zeros(ink.shape, np.uint8)
        cv2.polylines(layer, [curve.astype(np.int32)], False, 255, thick, cv2.LINE_AA)
        np.maximum(ink, layer.astype(np.float32) / 255, out=ink)


def _lines(rng: np.random.Generator, rgb: np.ndarray, lines: np.ndarray, window: tuple[int, int, int, int],
           invalid: bool, width, dyes: tuple, soft: float, centred: bool = True) -> dict:
    """Draw the control line (unless ``invalid``) and a test line (absent, faint or strong) across
    the window (x0, y0, x1, y1: inclusive) into the DRAWINGS and the line mask; their layout.
    ``width()`` draws the lines' width; ``centred``: each line's centre at its place (else its
    first column, as the classic cassette has them)."""
    x0, y0, x1, y1 = window
    test_strength = [0.0, rng.uniform(FAINTEST, 0.25), rng.uniform(0.5, 0.9)][rng.integers(3)]
    lw = max(2, int(round(width())))
    xx = np.arange(rgb.shape[2], dtype=np.float32)
    out = {}
    for frac, strength, name, dye in [(CONTROL_AT, rng.uniform(0.6, 0.95), "control", dyes[0]),
                                      (TEST_AT, test_strength, "test", dyes[1])]:
        lx = x0 + (int(round((x1 + 1 - x0) * frac - lw / 2)) if centred else int((x1 - x0) * frac))
        drawn = strength if name == "control" else max(strength, FAINTEST)
        strength = 0.0 if name == "control" and invalid else strength
        out[name] = {"at": (lx + lw / 2 - x0) / (x1 + 1 - x0), "strength": float(strength), "x": lx + lw / 2,
                     "box": (lx, y0 + 1, lx + lw, y1)}
        # the line's opacity across x: flat over its width, edges blurred by the membrane's bleed
        profile = np.clip(np.minimum(xx - lx + 0.5, lx + lw - 0.5 - xx) / max(soft, 0.3) + 0.5, 0, 1)
        c0, c1 = int(np.argmax(profile > 0)), len(profile) - int(np.argmax(profile[::-1] > 0))
        for k, s in ((0, strength), (2, drawn)):
            if s > 0:
                a = (profile[c0:c1] * s)[:, None]
                band = rgb[k, y0 + 1:y1, c0:c1]
                rgb[k, y0 + 1:y1, c0:c1] = band * (1 - a) + np.asarray(dye, np.float32) * a
        if strength > 0:
            lines[y0 + 1:y1, lx:lx + lw] = 255
    return out


def classic(rng: np.random.Generator, length: int, ratio: float, body: np.ndarray, invalid: bool) -> tuple:
    """A flat body with a rectangular window (recessed or flush), a round sample well, thin C/T
    marks, a label and sometimes a brand band."""
    height = int(length * ratio)
    rgb = np.ones((height, length, 3), np.float32) * body
    rgb *= 1 + 0.01 * smooth_noise(rng, height, length, 3)[..., None]

    alpha = np.zeros((height, length), np.uint8)
    shape = rng.integers(3)  # 0: rounded rectangle, 1: nearly square corners, 2: tapered sample end
    r = max(2, height // (6 if shape == 0 else 14))
    cv2.rectangle(alpha, (r, 0), (length - 1 - r, height - 1), 255, -1)
    cv2.rectangle(alpha, (0, r), (length - 1, height - 1 - r), 255, -1)
    for cx, cy in [(r, r), (length - 1 - r, r), (r, height - 1 - r), (length - 1 - r, height - 1 - r)]:
        cv2.circle(alpha, (cx, cy), r, 255, -1)
    if shape == 2:
        cut = int(height * 0.22)
        corner = int(length * 0.08)
        for pts in ([(0, 0), (corner, 0), (0, cut)], [(0, height), (corner, height), (0, height - cut)]):
            cv2.fillPoly(alpha, [np.array(pts, np.int32)], 0)
    edge = cv2.distanceTransform(alpha, cv2.DIST_L2, 3)
    rgb *= (1 - 0.28 * np.exp(-edge / 3.0))[..., None]  # bevelled rim

    # Sample well: a dark recessed ring around a pad.
    wx, wy = int(length * rng.uniform(0.13, 0.19)), height // 2
    ax, ay = int(length * 0.07), int(height * 0.26)
    cv2.ellipse(rgb, (wx, wy), (ax + 3, ay + 3), 0, 0, 360, tuple(float(c) for c in body * 0.62), -1)
    pad = np.clip(np.array([0.92, 0.90, 0.80]) + rng.normal(0, 0.03, 3), 0, 1)
    cv2.ellipse(rgb, (wx, wy), (ax, ay), 0, 0, 360, tuple(float(c) for c in pad), -1)

    # Read window: a recessed frame around the membrane.
    x0 = int(length * rng.uniform(0.34, 0.48))
    x1 = x0 + int(length * rng.uniform(0.22, 0.42))
    half = int(height * rng.uniform(0.12, 0.25))
    y0, y1 = wy - half, wy + half
    rim = int(rng.integers(0, 5))  # the recessed frame's width; 0: the membrane sits flush
    if rim:
        shade = body * rng.uniform(0.5, 0.85)
        cv2.rectangle(rgb, (x0 - rim, y0 - rim), (x1 + rim, y1 + rim), tuple(float(c) for c in shade), -1)
    tint = _MEMBRANES[rng.integers(len(_MEMBRANES))]
    membrane = np.clip(np.array(tint) + rng.normal(0, 0.02, 3), 0, 1)
    rgb[y0:y1 + 1, x0:x1 + 1] = membrane
    window = np.zeros((height, length), np.uint8)
    window[y0:y1 + 1, x0:x1 + 1] = 255

    # Control line always; test line absent, faint or strong.
    lines = np.zeros_like(window)
    rgb = np.stack([rgb, rgb, rgb])  # DRAWINGS
    dye = np.array([0.55, 0.10, 0.35], np.float32) + rng.normal(0, 0.04, 3).astype(np.float32)
    layout = {"window": [(x0, y0), (x1 + 1, y0), (x1 + 1, y1 + 1), (x0, y1 + 1)],
              "lines": _lines(rng, rgb, lines, (x0, y0, x1, y1), invalid, lambda: rng.integers(2, 5), (dye, dye), 0.3,
                              centred=False)}
    ink = np.zeros((height, length), np.uint8)  # printed marks; putText draws on 8-bit images only
    for name, mark in (("control", "C"), ("test", "T")):
        lx = int(layout["lines"][name]["box"][0])
        cv2.putText(ink, mark, (lx - 3, y0 - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.3, 255, 1, cv2.LINE_AA)
    label = _LABELS[rng.integers(len(_LABELS))]
    cv2.putText(ink, label, (x1 + 8, wy + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.3, 255, 1, cv2.LINE_AA)
    if rng.random() < 0.6:  # a printed brand: a coloured band or just the name along the top edge
        brand = _BRANDS[rng.integers(len(_BRANDS))]
        if rng.random() < 0.5:
            band = hsv(rng.uniform(), rng.uniform(0.5, 1), rng.uniform(0.4, 0.9))
            rgb[:, max(1, int(height * 0.05)):max(2, int(height * 0.2)), int(length * 0.3):int(length * 0.95)] = band
        cv2.putText(ink, brand, (int(length * 0.32), max(8, int(height * 0.17))), cv2.FONT_HERSHEY_SIMPLEX,
                    0.28, 255, 1, cv2.LINE_AA)
    dark_ink = body.mean() > 0.45
    ink_f = (ink.astype(np.float32) / 255)[..., None]  # broadcast over the DRAWINGS
    rgb = rgb * (1 - 0.6 * ink_f) if dark_ink else rgb * (1 - ink_f) + 0.9 * ink_f
    return rgb, alpha, window, lines, layout


def _well(rng: np.random.Generator, rgb: np.ndarray, ink: np.ndarray, body: np.ndarray, x: float, y: float,
          radius: float, light: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> None:
    """The sample well: a hole (round, rounded square or oval) in a raised ring, shaded by the light."""
    shape = rng.integers(3)
    rx, ry = radius * (1.3 if shape == 2 else 1.0), radius
    r = radius * (1.0 if shape != 1 else rng.uniform(0.2, 0.5))
    d = box_sdf(xx, yy, x, y, rx, ry, r if shape != 2 else ry)
    ring = rng.uniform(0.15, 0.6) * radius
    side = ((xx - x) * light[0] + (yy - y) * light[1]) / max(radius + ring, 1)
    around = _inside(d - ring) * (1 - _inside(d))
    _paint(rgb, around * np.clip(0.5 - 0.5 * side, 0, 1) * 0.5, body * 0.6)
    _paint(rgb, around * np.clip(0.5 * side, 0, 1) * 0.4, np.minimum(body * 1.15, 1.0))
    hole = _inside(d)
    deep = np.clip(-d / max(radius * 0.5, 1), 0, 1)
    pad = np.clip(np.array([0.93, 0.90, 0.86]) + rng.normal(0, 0.03, 3), 0, 1)
    _paint(rgb, hole, body * rng.uniform(0.35, 0.6))  # the hole's walls
    if rng.random() < 0.7:  # the sample pad at its bottom
        _paint(rgb, hole * np.clip(deep * 1.6 - 0.5, 0, 1), pad * rng.uniform(0.7, 1.0))
    if rng.random() < 0.5:
        _text(ink, "S", x - 0.2 * rx, y + ry + ring + 0.9 * radius, 0.9 * radius, rng, True)


def moulded(rng: np.random.Generator, length: int, ratio: float, body: np.ndarray, invalid: bool) -> tuple:
    """A moulded cassette as most real ones look (module docstring)."""
    height = int(length * ratio)
    yy, xx = np.mgrid[0:height, 0:length].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(angle), np.sin(angle)], np.float32)
    rgb = np.ones((height, length, 3), np.float32) * body
    rgb *= (1 + 0.012 * smooth_noise(rng, height, length, 3)
            + 0.05 * ((xx / length - 0.5) * light[0] + (yy / height - 0.5) * light[1] * ratio))[..., None]
    d_body = box_sdf(xx, yy, length / 2, height / 2, length / 2 - 0.5, height / 2 - 0.5,
                     height * rng.uniform(0.08, 0.5))
    alpha = (_inside(d_body) * 255).astype(np.uint8)
    bevel = max(1.5, height * rng.uniform(0.03, 0.1))
    rgb *= (1 - 0.3 * np.exp(-np.maximum(-d_body, 0) / bevel))[..., None]

    # the window: a narrow slot in the middle of the body, its sample end after the well
    wl = length * rng.uniform(0.16, 0.32)
    ww = min(wl * rng.uniform(0.12, 0.4), height * 0.55)
    well_x, well_r = length * rng.uniform(0.1, 0.2), height * rng.uniform(0.14, 0.3)
    x0 = int(max(length * rng.uniform(0.4, 0.56), well_x + well_r * 2.2))
    x1 = int(min(x0 + wl, length * 0.92)) - 1
    half = ww / 2
    cy = height / 2 + rng.uniform(-0.05, 0.05) * height
    y0, y1 = int(round(cy - half)), int(round(cy + half)) - 1
    cx, cy, hw, hh = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2, (x1 + 1 - x0) / 2, (y1 + 1 - y0) / 2
    ends = rng.choice(["square", "rounded", "stadium"], p=[0.35, 0.4, 0.25])
    r_open = {"square": rng.uniform(0, 0.15), "rounded": rng.uniform(0.15, 0.6), "stadium": 1.0}[ends] * hh
    rim = float(rng.choice([0, 0, 1, 1.5, 2.5]))  # a crisp dark edge of the opening, outside the membrane
    d_win = box_sdf(xx, yy, cx, cy, hw, hh, r_open)
    ink = np.zeros((height, length), np.float32)
    dark_ink = body.mean() > 0.45

    if rng.random() < 0.65:  # a raised or sunken bezel around the slot, lit from one side
        margin = min(height * rng.uniform(0.05, 0.2), height / 2 - hh - 1)
        if margin > 1:
            d_bez = box_sdf(xx, yy, cx, cy, hw + margin, hh + margin, r_open + margin)
            ring = _inside(d_bez) * (1 - _inside(d_win - rim))
            side = ((xx - cx) * light[0] / (hw + margin) + (yy - cy) * light[1] / (hh + margin))
            sunken = 1 if rng.random() < 0.6 else -1
            _paint(rgb, ring * np.clip(-sunken * side, 0, 1) * rng.uniform(0.2, 0.5), body * 0.55)
            _paint(rgb, ring * np.clip(sunken * side, 0, 1) * 0.3, np.minimum(body * 1.2, 1))
            if rng.random() < 0.5:  # the bezel's outer crease
                _paint(rgb, np.clip(1 - np.abs(d_bez) / 0.8, 0, 1) * 0.35, body * 0.5)
    if rim:
        _paint(rgb, _inside(d_win - rim), body * rng.uniform(0.25, 0.6))

    # the membrane: in the opening (rounded like it); the window is its tangent rectangle
    used = rng.random() < 0.5
    tints = _USED_MEMBRANES if used else _MEMBRANES
    membrane = np.clip(np.array(tints[rng.integers(len(tints))]) + rng.normal(0, 0.02, 3), 0, 1)
    open_ = _inside(d_win)
    _paint(rgb, open_, membrane)
    if rng.random() < 0.7:  # the inner walls' shadow on the membrane, along one long side and one end
        dx = (x1 + 1 - xx) if light[0] > 0 else (xx - x0)  # from the wall away from the light
        dy = (y1 + 1 - yy) if light[1] > 0 else (yy - y0)
        depth = rng.uniform(0.05, 0.35) * 2 * hh
        shade = np.maximum(np.exp(-np.maximum(dx, 0) / max(depth, 0.5)), np.exp(-np.maximum(dy, 0) / max(depth, 0.5)))
        _paint(rgb, open_ * shade * rng.uniform(0.15, 0.5), membrane * 0.45)
    window = np.zeros((height, length), np.uint8)
    window[y0:y1 + 1, x0:x1 + 1] = 255

    # wells, marks and print
    _well(rng, rgb, ink, body, well_x, cy, well_r, light, xx, yy)
    letters = _LETTERS[rng.integers(len(_LETTERS))]
    letter_h = max(4.0, min(hh * rng.uniform(0.9, 1.8), height * 0.22))
    side = 1 if rng.random() < 0.5 else -1
    ly = cy + side * (hh + rng.uniform(0.5, 1.0) * letter_h + 2)
    places = (CONTROL_AT, TEST_AT) if len(letters) == 2 else (CONTROL_AT + 0.08, 0.5, 0.2)
    if rng.random() < 0.85:
        for place, letter in zip(places, letters, strict=True):
            _text(ink, letter, x0 + (x1 - x0) * place, ly, letter_h, rng, True)
    far = x1 + 1 + (length - x1) * rng.uniform(0.3, 0.6)
    if rng.random() < 0.7:  # product names across the far end
        for k in range(int(rng.integers(1, 3))):
            word = _PRODUCTS[rng.integers(len(_PRODUCTS))]
            _text(ink, word, far + (k - 0.5) * height * 0.3, height / 2, height * rng.uniform(0.1, 0.2), rng, True)
    if rng.random() < 0.25:
        _qr(ink, x1 + 1 + (length - x1) * rng.uniform(0.35, 0.6), height / 2, height * rng.uniform(0.4, 0.65), rng)
    elif rng.random() < 0.2:  # vent dots
        for i in range(2):
            for j in range(3):
                cv2.circle(ink, (int(far + (i - 0.5) * height * 0.15), int(height * (0.3 + 0.2 * j))),
                           max(1, int(height * 0.04)), 1.0, -1, cv2.LINE_AA)
    if rng.random() < 0.25:  # arrows towards the sample end, or a lot number
        _text(ink, rng.choice(["<<", "<", "LOT 2023", "MAX"]), well_x + well_r * 2.5 if x0 > well_x + well_r * 4
              else length * 0.93, height * rng.uniform(0.2, 0.8), height * 0.12, rng, False)
    if rng.random() < 0.1:  # a second, empty slot (a label window) beyond the read window
        sx = x1 + 1 + (length - x1) * rng.uniform(0.3, 0.55)
        d2 = box_sdf(xx, yy, sx, height / 2, (length - x1) * 0.15, hh, r_open)
        _paint(rgb, _inside(d2 - 1), body * 0.5)
        _paint(rgb, _inside(d2), membrane)
    if rng.random() < 0.15:  # handwriting in marker on the housing
        span = (x1 + 2, 2, length - 2, height - 2) if rng.random() < 0.5 else (2, 2, max(3, x0 - 2), height - 2)
        _scribble(ink, rng, span, max(1, int(height * 0.025)))
    ink = np.clip(ink, 0, 1) * alpha.astype(np.float32) / 255 * (1 - open_)  # nothing printed on the membrane
    colour = np.array(_INKS[rng.integers(len(_INKS))], np.float32)
    if not dark_ink:
        colour = np.array([0.92, 0.92, 0.9], np.float32)
    _paint(rgb, ink * rng.uniform(0.7, 0.95), colour)

    lines = np.zeros_like(window)
    rgb = np.stack([rgb, rgb, rgb])  # DRAWINGS
    dye = np.array(_DYES[rng.integers(len(_DYES))], np.float32) + rng.normal(0, 0.03, 3).astype(np.float32)
    layout = {"window": [(x0, y0), (x1 + 1, y0), (x1 + 1, y1 + 1), (x0, y1 + 1)],
              "lines": _lines(rng, rgb, lines, (x0, y0, x1, y1), invalid, lambda: (x1 - x0) * rng.uniform(0.03, 0.07),
                              (dye, dye), rng.uniform(0.3, 1.5))}
    return rgb, alpha, window, lines, layout


def dipstick(rng: np.random.Generator, length: int, ratio: float, body: np.ndarray, invalid: bool) -> tuple:
    """A bare strip: printed arrows and bars on a white strip; the window spans its full width
    between the two bars that bound the result zone."""
    height = max(6, int(length * ratio))
    yy, xx = np.mgrid[0:height, 0:length].astype(np.float32)
    white = np.clip(np.array([0.95, 0.95, 0.94]) + rng.normal(0, 0.02, 3), 0, 1).astype(np.float32)
    rgb = np.ones((height, length, 3), np.float32) * white
    rgb *= (1 + 0.01 * smooth_noise(rng, height, length, 3))[..., None]
    alpha = np.full((height, length), 255, np.uint8)
    alpha[:, :1] = alpha[:, -1:] = 128
    x0 = int(length * rng.uniform(0.35, 0.5))
    x1 = x0 + int(length * rng.uniform(0.1, 0.2)) - 1
    bar = max(2, int(length * rng.uniform(0.012, 0.035)))
    bar_colour = [body * 0.8, np.array([0.8, 0.55, 0.55]), np.array([0.6, 0.6, 0.62]), np.array([0.25, 0.25, 0.3]),
                  np.array([0.99, 0.99, 0.99])][rng.integers(5)]
    rgb[:, x0 - bar:x0] = bar_colour
    rgb[:, x1 + 1:x1 + 1 + bar] = bar_colour
    ink = np.zeros((height, length), np.float32)
    colours = [np.array(c, np.float32) for c in ((0.85, 0.4, 0.55), (0.3, 0.45, 0.8), (0.1, 0.1, 0.1))]
    for start, stop in ((int(length * 0.03), x0 - bar - 3), (x1 + bar + 4, int(length * 0.97))):
        if stop - start < height:
            continue
        pattern = rng.integers(3)
        if pattern == 0:  # chevrons pointing to the dip end
            step = height * rng.uniform(0.8, 1.5)
            for k, x in enumerate(np.arange(start, stop - height * 0.6, step)):
                pts = np.array([[x + height * 0.6, height * 0.15], [x, height / 2], [x + height * 0.6, height * 0.85]])
                layer = np.zeros((height, length), np.uint8)
                cv2.polylines(layer, [pts.astype(np.int32)], False, 255, max(1, int(height * 0.15)), cv2.LINE_AA)
                _paint(rgb, layer.astype(np.float32) / 255, colours[k % 2])
        elif pattern == 1:  # barcode-like squares
            for x in np.arange(start, stop - height * 0.4, height * 0.5):
                if rng.random() < 0.6:
                    rgb[int(height * 0.2):int(height * 0.8), int(x):int(x + height * 0.35)] = colours[2]
        else:
            _text(ink, _BRANDS[rng.integers(len(_BRANDS))], (start + stop) / 2, height / 2, height * 0.5, rng, False)
    _paint(rgb, ink, colours[2])
    edge = np.minimum(yy, height - 1 - yy)
    rgb *= (1 - 0.12 * np.exp(-edge / 1.0))[..., None]  # the strip's cut edges
    window = np.zeros((height, length), np.uint8)
    window[:, x0:x1 + 1] = 255
    lines = np.zeros_like(window)
    rgb = np.stack([rgb, rgb, rgb])
    blue = np.array(_BLUE, np.float32) + rng.normal(0, 0.03, 3).astype(np.float32)
    pink = np.array(_DYES[1], np.float32)
    control, test = (blue, pink) if rng.random() < 0.6 else (pink, pink)
    y0, y1 = 0, height - 1
    layout = {"window": [(x0, y0), (x1 + 1, y0), (x1 + 1, y1 + 1), (x0, y1 + 1)],
              "lines": _lines(rng, rgb, lines, (x0, y0 - 1, x1, y1 + 1), invalid,
                              lambda: (x1 - x0) * rng.uniform(0.04, 0.08), (control, test), rng.uniform(0.5, 1.5))}
    for line in layout["lines"].values():
        bx0, by0, bx1, by1 = line["box"]
        line["box"] = (bx0, max(0, by0), bx1, min(height - 1, by1))
    return rgb, alpha, window, lines, layout


DRAWERS = {"classic": classic, "moulded": moulded, "dipstick": dipstick}
