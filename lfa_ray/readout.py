"""Read the test from a photo and its read-window mask: control line present (valid), test line
intensity, T/C ratio and a call (positive / negative / invalid), or why the photo cannot be read.

1. The window: the mask's largest region, its four corners (of its minimum-area rectangle, lines
   fitted to its four sides and its outline simplified to four corners, the convex quadrilateral
   that overlaps it most: the fitted sides follow perspective past a predicted mask's rounded
   corners and bumps); a region too small, far from a filled quadrilateral or nearly square is not
   read ("no read" and the reason), never guessed. Its sides are then snapped onto the membrane's
   edges in the photo (:func:`snap`): a model's mask, upscaled, puts them pixels off; and an end
   the mask put short is moved out along those edges to where the membrane ends (:func:`extend`).
2. Rectified: the window warped to a straight strip along its long side (perspective undone), then
   sheared where that straightens its lines (a predicted window's corners may be off, slanting them).
3. The profile along the strip: per position, the median green value across the middle of the strip
   (red and purple line dyes absorb green most); where green is saturated over much of the strip
   (glare, overexposure, a warm cast), the least saturated channel instead. The membrane's
   brightness around each line, a grey closing of the profile wider than a line, is the background,
   and ``1 - profile / background`` the line intensity (0: nothing, 1: black).
4. Which end faces the sample: both ends are tried and the one whose control place (``readout.
   control_at``, a share of the window's length from its sample-well end, within ``readout.
   tolerance``) holds the stronger line wins, unless the photo shows the sample well (a ring on the
   window's axis beyond one end, about as wide as the strip: the strongest fitting circle of a Hough
   transform in the window's surroundings, straightened the same way). One line looks alike from
   either end (an invalid test's test line, seen from the far end, sits near the control line's
   place), so the well's end wins unless the line sits nearer the control line's place from the
   other end than the test line's place from the well's end (a well taken for another circle).
5. The lines: the control line, the strongest within the tolerance of its place; none there and
   the well seen (a predicted window's ends may be off), within three times the tolerance from the
   well's end (never as far as the test line's place). The test line is looked for where the
   control line found puts it: at its distance from the control line (``readout.test_at``, either
   order), and where it would be were only one end of the window exact (the sample end, or the far
   end) and its length wrong; the strongest of the three places counts (they coincide where the
   control line sits at its place). Without a control line, at its own place.
6. The call: ``invalid`` when the control line is below ``readout.control_min``; ``positive`` when
   the test line reaches ``readout.test_min``; else ``negative``. T/C = test / control intensity.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lfa_ray.images import scale_mask

STRIP_LENGTH = 160  # px along the rectified window: every window is read at this resolution
SIDE_ENDS = 0.15  # the share at each end of a side whose outline points are left out of its line fit
MIN_SIDES = (12, 3)  # px in the photo: a window shorter or narrower than this is not read
MIN_FILL = 0.75  # the region's area over its quadrilateral's: lower is not a window
MIN_ASPECT = 1.15  # long side over short side: nearer square, the strip's direction is unknown
WASHED_OUT = 254  # a channel's value this high is clipped (JPEG blurs 255 a little): a line there may not show
MAX_WASHED_OUT = 0.7  # a share of saturated pixels at a line's place above this: that place cannot be read
GREEN = 1  # the channel read unless it is saturated (red and purple line dyes absorb green most)
SATURATED_STRIP = 0.3  # green saturated over more of the strip's middle than this: read another channel
WELL_PX = 100  # px per window length where the sample well is looked for
WELL_REACH = (0.15, 2.1)  # how far beyond a window end the well's centre may sit, in window lengths
WELL_RADIUS = (0.09, 0.5)  # the well's radius, in window lengths
WELL_WIDTHS = (0.45, 1.2)  # and in window widths (a well is about as wide as the strip)
SLANTS = np.linspace(-1.5, 1.5, 17)  # the lines' slants tried in the strip (px along per px across)
STRAIGHTER = (1.3, 0.02)  # a slant counts where it makes the strongest line this much (times, plus) stronger
WIDE = 3  # with the sample end told by the well, the control line is looked for within WIDE x readout.tolerance
CALLS = ("positive", "negative", "invalid", "no read")
SNAP_REACH = (0.3, 0.06)  # how far a side may move onto the membrane's edge: a share of the short side (long
# sides), of the long side (short sides: from a window ending short, further would reach a line)
SNAP_SAMPLES = (0.15, 0.85)  # the stretch of each side whose points are moved (clear of the corners)
SNAP_EDGE = 24.0  # the least drop (summed over RGB, per 2 px) from inside to outside that counts as the edge
SNAP_RELATIVE = 0.5  # ... and at least this share of the strongest drop within reach
SNAP_POINTS = 0.5  # the share of a side's points that must find the edge, on one line, else the side stays
SNAP_STRAIGHT = 1.0  # px: a point this near the line fitted through them is on it
EXTEND_REACH = 0.6  # how far beyond each end a window may continue (window lengths; :func:`extend`)
EXTEND_GAP = 0.14  # the membrane's edges missing over this share of its length: it ended (lines are narrower)
EXTEND_BAND = 0.15  # the long edges are looked for within this share of the width of where the window has them
EXTEND_CORE = (0.25, 0.75)  # the stretch of the window whose edges tell how strong and where they are
EXTEND_RELATIVE = 0.6  # an edge counts from this share of its median strength in the core ...
EXTEND_STRAIGHT = 2  # ... and within this many strip px of its median place there
EXTEND_SHOWN = 0.8  # the share of the core where both edges must show, else the ends stay
SNAP = True  # read() snaps the window's sides and extends its ends (benchmarks/readout.py compares without)


@dataclass
class Reading:
    call: str  # one of CALLS
    status: str = "ok"  # "ok", or why the photo was not read
    control: float | None = None  # line intensities, 0..1
    test: float | None = None
    ratio: float | None = None  # test / control; None when invalid or not read
    flipped: bool = False  # the sample-well end was the mask's far end
    well: bool = False  # the sample end read from is the one the sample well shows (step 4)
    strip: np.ndarray | None = None  # the rectified window, sample end left, lines marked (RGB)
    test2: float | None = None  # a three-line test's second test line (readout.test2_at), its intensity

    def row(self) -> dict:
        row = {"call": self.call, "status": self.status, "control": self.control, "test": self.test,
               "tc_ratio": self.ratio}
        if self.test2 is not None:
            row.update(test2=self.test2, t2c_ratio=round(self.test2 / self.control, 4) if self.control else None)
        return row


def regions(mask: np.ndarray, share: float) -> list[np.ndarray]:
    """The mask's connected regions (each uint8 0/1) of at least ``share`` of the largest one's area,
    largest first (equal areas in label order); none for an empty mask."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return [(labels == 1 + int(k)).astype(np.uint8) for k in np.argsort(-areas, kind="stable")
            if areas[k] >= share * areas.max()]


def largest(mask: np.ndarray) -> np.ndarray | None:
    """The mask's largest connected region (uint8 0/1), or None when the mask is empty."""
    found = regions(mask, 1.0)
    return found[0] if found else None


def _quad(region: np.ndarray) -> tuple[np.ndarray, float]:
    """The quadrilateral that fits the region best, and how well (intersection over union): of its
    minimum-area rectangle, the lines fitted to its sides and its outline simplified to four corners
    (these two where convex)."""
    contour = max(cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=cv2.contourArea)
    box = cv2.boxPoints(cv2.minAreaRect(contour)).astype(np.float32)
    hull = cv2.convexHull(contour)
    candidates = [_fit_sides(contour, box)]
    for eps in (0.02, 0.04, 0.06, 0.08):
        approx = cv2.approxPolyDP(hull, eps * cv2.arcLength(hull, True), True)
        if len(approx) == 4:
            candidates.append(approx[:, 0].astype(np.float32))
            break
    convex = [q for q in candidates if q is not None and cv2.isContourConvex(np.round(q).astype(np.int32))]
    return max(((q, overlap(region, q)) for q in [box, *convex]), key=lambda c: c[1])


def window_corners(mask: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The window's corners (4x2, float32; the first side is a long one), or None and why not."""
    region = largest(mask)
    if region is None:
        return None, "no window found"
    quad, _ = _quad(region)
    sides = np.linalg.norm(quad - np.roll(quad, -1, axis=0), axis=1)
    if sides[1] + sides[3] > sides[0] + sides[2]:  # start on a long side
        quad, sides = np.roll(quad, -1, axis=0), np.roll(sides, -1)
    long, short = (sides[0] + sides[2]) / 2, (sides[1] + sides[3]) / 2
    area = float(region.sum())
    if long < MIN_SIDES[0] or short < MIN_SIDES[1]:
        return None, f"window too small to read ({long:.0f} x {short:.0f} px)"
    fill = area / max(cv2.contourArea(quad), 1.0)
    if fill < MIN_FILL:
        return None, f"window mask is not a strip (fills {fill:.0%} of its outline)"
    if long / short < MIN_ASPECT:
        return None, f"window mask is nearly square ({long:.0f} x {short:.0f} px): its long side is unknown"
    return quad, "ok"


def _fit_sides(contour: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """The quadrilateral whose sides are lines fitted (robustly) to the outline's points nearest each
    side of ``box``, the ends of each side left out: it follows perspective, and a bump or a rounded
    corner of the mask barely moves it. None when a side has too few points."""
    points = contour[:, 0].astype(np.float32)
    start, vec = box, np.roll(box, -1, axis=0) - box
    length = np.maximum(np.linalg.norm(vec, axis=1), 1e-6)
    along = vec / length[:, None]
    rel = points[:, None, :] - start[None]  # point x side x 2
    off = np.abs(rel[..., 0] * along[:, 1] - rel[..., 1] * along[:, 0])  # distance to each side's line
    share = (rel * along[None]).sum(-1) / length  # where along each side, 0..1
    nearest = off.argmin(axis=1)
    lines = []
    for k in range(4):
        mine = points[(nearest == k) & (share[:, k] > SIDE_ENDS) & (share[:, k] < 1 - SIDE_ENDS)]
        if len(mine) < 2:
            return None
        vx, vy, x, y = cv2.fitLine(mine, cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
        lines.append((np.float32([x, y]), np.float32([vx, vy])))
    return _corners(lines)


def _corners(lines: list) -> np.ndarray | None:
    """Where four lines (point, direction) meet in turn: corner k where lines k-1 and k do; None
    where two are nearly parallel."""
    corners = []
    for (p, d), (q, e) in zip([lines[-1]] + lines[:-1], lines, strict=True):
        det = d[0] * -e[1] + d[1] * e[0]
        if abs(det) < 1e-3:
            return None
        t = ((q - p)[0] * -e[1] + (q - p)[1] * e[0]) / det
        corners.append(p + t * d)
    return np.float32(corners)


def snap(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """``quad`` (as :func:`window_corners` gives it) with each side moved onto the membrane's edge in
    the photo, for a window from a model's mask (a few photo pixels per model pixel, upscaled).
    Per point of a side, along its normal within SNAP_REACH: the innermost place where the photo
    darkens outward (the membrane is brighter than the frame or body around it; a line across the
    strip, darker inside, does not count) by SNAP_EDGE and by SNAP_RELATIVE of the most it does
    there; a line fitted through them. A side whose points do not find one straight edge (a flush
    membrane on a body of its colour, print, a ring) stays; so does the quad, where the moved sides
    would not keep it convex or near where it was."""
    img = image.astype(np.float32)
    sides = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)
    long, short = (sides[0] + sides[2]) / 2, (sides[1] + sides[3]) / 2
    centre = quad.mean(axis=0)
    lines, moved_sides = [], 0
    for k in range(4):
        p, q = quad[k], quad[(k + 1) % 4]
        d = (q - p) / max(sides[k], 1e-6)
        n = np.float32([d[1], -d[0]])
        if np.dot((p + q) / 2 - centre, n) < 0:
            n = -n  # outward
        reach = max(1.5, (SNAP_REACH[0] * short) if k % 2 == 0 else (SNAP_REACH[1] * long))
        t = np.arange(-reach - 1, reach + 1.01, 0.5, dtype=np.float32)
        s = np.linspace(*SNAP_SAMPLES, max(5, int(sides[k] * (SNAP_SAMPLES[1] - SNAP_SAMPLES[0]))))
        base = p[None] + s[:, None] * (q - p)[None]  # points x 2
        pts = base[:, None, :] + t[None, :, None] * n[None, None, :]  # points x offsets x 2
        x, y = pts[..., 0].astype(np.float32), pts[..., 1].astype(np.float32)
        values = cv2.remap(img, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).sum(-1)
        drop = values[:, :-4] - values[:, 4:]  # inside minus outside, 2 px apart (0.5 px steps)
        strongest = drop.max(axis=1)
        # the innermost place where the photo darkens outward by at least SNAP_RELATIVE of the most
        # it does: the membrane's edge, not a darker band or print further out
        peak = (drop[:, 1:-1] >= drop[:, :-2]) & (drop[:, 1:-1] >= drop[:, 2:])
        strong = peak & (drop[:, 1:-1] >= np.maximum(SNAP_EDGE, SNAP_RELATIVE * strongest[:, None]))
        found = strong.any(axis=1)
        if found.mean() < SNAP_POINTS:
            lines.append((p, d))
            continue
        at = t[3:-3][strong[found].argmax(axis=1)]
        moved = base[found] + at[:, None] * n[None]
        vx, vy, x0, y0 = cv2.fitLine(moved.astype(np.float32), cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
        off = np.abs((moved[:, 0] - x0) * vy - (moved[:, 1] - y0) * vx)
        if (off <= SNAP_STRAIGHT).sum() < SNAP_POINTS * len(s):  # not one straight edge: print, a ring
            lines.append((p, d))
            continue
        lines.append((np.float32([x0, y0]), np.float32([vx, vy])))
        moved_sides += 1
    if not moved_sides:
        return quad
    out = _corners(lines)
    if out is None or np.linalg.norm(out - quad, axis=1).max() > 2 * max(SNAP_REACH[0] * short,
                                                                          SNAP_REACH[1] * long, 1.5):
        return quad  # a side moved nearly parallel to a neighbour: their corner flies off
    return out if cv2.isContourConvex(np.round(out * 16).astype(np.int32)) else quad


def extend(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """``quad`` with each end moved out to where the membrane ends, for a model's mask that covers
    part of the window (a mask often stops at a line). The window's two long edges (the membrane
    brighter than what is around it), traced in the window's straightened surroundings, run on
    past an end the mask put short: the end moves to where both stop for EXTEND_GAP of the length
    (a line across the strip interrupts them for less). An edge counts where it is as strong as
    most of the window's middle has it, at the same place. Ends are never moved inwards (there a
    line and the window's end look alike), nor where the middle does not show both edges."""
    to_strip, height = _to_strip(quad)
    length = STRIP_LENGTH
    ox, oy = int(EXTEND_REACH * length), height // 2  # the window's place in its surroundings
    width = length + 2 * ox
    shift = np.float64([[1, 0, ox], [0, 1, oy], [0, 0, 1]])
    around = cv2.warpPerspective(image, shift @ to_strip, (width, height + 2 * oy), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE).astype(np.float32).sum(-1)
    core = slice(ox + int(EXTEND_CORE[0] * length), ox + int(EXTEND_CORE[1] * length))
    band = max(2, int(EXTEND_BAND * height))

    def edge(row: int, inward: int) -> np.ndarray:
        rows = np.arange(max(row - band, 1), min(row + band, around.shape[0] - 2) + 1)
        drop = around[rows + inward] - around[rows - inward]  # inside minus outside, 2 px apart
        strength, at = drop.max(axis=0), rows[drop.argmax(axis=0)]
        return ((strength >= max(SNAP_EDGE, EXTEND_RELATIVE * np.median(strength[core])))
                & (np.abs(at - np.median(at[core])) <= EXTEND_STRAIGHT))

    on = edge(oy, 1) & edge(oy + height, -1)
    if on[core].mean() < EXTEND_SHOWN:
        return quad
    gap = max(2, int(EXTEND_GAP * length))

    def end(i: int, step: int) -> int:  # the last column of the edges before they stop for `gap`
        last, missing = i, 0
        while 0 <= i < width and missing < gap:
            last, missing = (i, 0) if on[i] else (last, missing + 1)
            i += step
        return last

    start, stop = min(0, end(ox, -1) - ox), max(length, end(ox + length - 1, 1) + 1 - ox)
    if (start, stop) == (0, length):
        return quad
    ends = np.float32([[start, 0], [stop, 0], [stop, height], [start, height]])
    return cv2.perspectiveTransform(ends[None], np.linalg.inv(to_strip))[0].astype(np.float32)


def overlap(region: np.ndarray, quad: np.ndarray) -> float:
    """Intersection over union of a region (0/1) and a quadrilateral."""
    filled = np.zeros_like(region)
    cv2.fillPoly(filled, [np.round(quad).astype(np.int32)], 1)
    return float((filled & region).sum()) / max(1.0, float((filled | region).sum()))


def _to_strip(quad: np.ndarray) -> tuple[np.ndarray, int]:
    """The perspective transform from the photo onto the window's straightened strip (STRIP_LENGTH px
    along its long side, the first corner at the origin) and the strip's height (the window's aspect)."""
    sides = np.linalg.norm(quad - np.roll(quad, -1, axis=0), axis=1)
    aspect = (sides[0] + sides[2]) / max(sides[1] + sides[3], 1e-6)
    height = max(8, int(round(STRIP_LENGTH / aspect)))
    target = np.float32([[0, 0], [STRIP_LENGTH, 0], [STRIP_LENGTH, height], [0, height]])
    return cv2.getPerspectiveTransform(quad, target), height


def rectify(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The window warped to a STRIP_LENGTH px strip, its long side horizontal."""
    warp, height = _to_strip(quad)
    return cv2.warpPerspective(image, warp, (STRIP_LENGTH, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)


def _shear(strip: np.ndarray, slant: float) -> np.ndarray:
    h, w = strip.shape[:2]
    return cv2.warpAffine(strip, np.float32([[1, slant, -slant * h / 2], [0, 1, 0]]), (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def straighten(strip: np.ndarray, colour: int = GREEN) -> np.ndarray:
    """The strip with its lines across it at right angles. Lines cross a window at right angles, but
    a window whose corners are off (a predicted mask's) shows them slanted, each smeared over many
    places of the profile; the strip is sheared by the slant (of SLANTS) under which its strongest
    line is strongest, where that makes it STRAIGHTER than unsheared (else it stays as it is)."""
    n = strip.shape[1]
    def strongest(s: np.ndarray) -> float:
        return float(intensity_profile(s, colour=colour)[int(0.05 * n):int(0.95 * n)].max())
    straight = strongest(strip)
    best, slant = max((strongest(_shear(strip, k)), k) for k in SLANTS if k)
    return _shear(strip, slant) if best > max(STRAIGHTER[0] * straight, straight + STRAIGHTER[1]) else strip


def sample_end(image: np.ndarray, quad: np.ndarray) -> int | None:
    """Which end of the window (``quad`` as :func:`window_corners` gives it) faces the sample well:
    0 the first short side, 1 the other, None when no well is in sight. The photo around the window
    is straightened the same way, at WELL_PX px per window length on both axes, and the strongest
    circle of a Hough transform centred on the window's axis beyond either end is the well."""
    sides = np.linalg.norm(quad - np.roll(quad, -1, axis=0), axis=1)
    across = WELL_PX * (sides[1] + sides[3]) / max(sides[0] + sides[2], 1e-6)
    radius = (max(WELL_RADIUS[0] * WELL_PX, WELL_WIDTHS[0] * across),
              min(WELL_RADIUS[1] * WELL_PX, WELL_WIDTHS[1] * across))
    if radius[1] < radius[0]:  # a strip too thin for any well of its length
        return None
    reach = WELL_REACH[1] + WELL_RADIUS[1]
    x0, y0 = reach * WELL_PX, (WELL_RADIUS[1] + 0.2) * WELL_PX
    target = np.float32([[x0, y0], [x0 + WELL_PX, y0], [x0 + WELL_PX, y0 + across], [x0, y0 + across]])
    size = (int(2 * x0 + WELL_PX), int(2 * y0 + across))
    around = cv2.warpPerspective(image, cv2.getPerspectiveTransform(quad, target), size, flags=cv2.INTER_LINEAR)
    grey = cv2.GaussianBlur(cv2.cvtColor(around, cv2.COLOR_RGB2GRAY), (0, 0), 1.5)
    circles = cv2.HoughCircles(grey, cv2.HOUGH_GRADIENT, dp=1.5, minDist=10, param1=60, param2=30,
                               minRadius=int(radius[0]), maxRadius=int(np.ceil(radius[1])))
    axis = y0 + across / 2
    for cx, cy, _ in ([] if circles is None else circles[0]):  # strongest first
        beyond = max(x0 - cx, cx - x0 - WELL_PX) / WELL_PX
        if abs(cy - axis) <= 0.2 * across + 0.1 * WELL_PX and WELL_REACH[0] < beyond <= WELL_REACH[1]:
            return int(cx > x0)
    return None


def channel(strip: np.ndarray) -> int:
    """The colour channel to read: green (red and purple line dyes absorb it most) unless it is
    saturated over much of the strip (glare, overexposure, a colour cast), then the least saturated one."""
    saturated = [(_middle(strip)[:, :, c] >= WASHED_OUT).mean() for c in range(3)]
    return GREEN if saturated[GREEN] <= SATURATED_STRIP else int(np.argmin(saturated))


def intensity_profile(strip: np.ndarray, line_width: float = 0.1, colour: int = GREEN) -> np.ndarray:
    """Line intensity along the strip (0..1), from its ``colour`` channel; ``line_width`` (a share of
    the length) bounds the widest line, so the background is taken around it."""
    rows = _middle(strip)[:, :, colour].astype(np.float32)
    profile = cv2.GaussianBlur(np.median(rows, axis=0)[None], (0, 0), 1.0)
    k = int(line_width * profile.shape[1]) | 1
    kernel = np.ones((1, k), np.uint8)
    padded = cv2.copyMakeBorder(profile, 0, 0, k, k, cv2.BORDER_REFLECT)
    background = cv2.erode(cv2.dilate(padded, kernel), kernel)[:, k:-k]
    return np.clip(1 - profile[0] / np.maximum(background[0], 1.0), 0, 1)


def _middle(strip: np.ndarray) -> np.ndarray:
    """The strip's middle 60 % across (clear of the window's edges, which a mask misplaces)."""
    h = strip.shape[0]
    return strip[int(h * 0.2):max(int(h * 0.2) + 1, int(np.ceil(h * 0.8)))]


def _washed_out(strip: np.ndarray, at: float, tolerance: float, colour: int = GREEN) -> float:
    """The share of saturated values (>= WASHED_OUT) of channel ``colour`` around ``at`` in the middle of the strip."""
    n = strip.shape[1]
    lo, hi = max(0, int((at - tolerance) * n)), min(n, int(np.ceil((at + tolerance) * n)) + 1)
    return float((_middle(strip)[:, lo:hi, colour] >= WASHED_OUT).mean())


def _peak(profile: np.ndarray, at: float, tolerance: float) -> tuple[float, int]:
    """The strongest line centred within ``tolerance`` of ``at`` (a local maximum of the profile, so
    the flank of a line just outside does not count): (intensity, index); (0, index of ``at``) if none."""
    n = len(profile)
    lo, hi = max(1, int((at - tolerance) * n)), min(n - 1, int(np.ceil((at + tolerance) * n)) + 1)
    inner = profile[lo:hi]
    peaks = np.flatnonzero((inner >= profile[lo - 1:hi - 1]) & (inner >= profile[lo + 1:hi + 1])) if hi > lo else []
    if not len(peaks):
        return 0.0, min(n - 1, max(0, int(at * n)))
    i = lo + int(peaks[np.argmax(inner[peaks])])
    return float(profile[i]), i


def read(image: np.ndarray, mask: np.ndarray, layout) -> Reading:
    """Read the test in ``image`` (RGB uint8) within the window ``mask`` (0/1, scaled to the image's
    size if it differs), with the places and thresholds of ``layout`` (a ``ReadoutConfig``)."""
    h, w = image.shape[:2]
    mask = scale_mask(mask, (w, h))
    quad, why = window_corners(mask)
    if quad is None:
        return Reading("no read", why)
    if SNAP:
        quad = extend(image, snap(image, quad))
    strip = rectify(image, quad)
    colour = channel(strip)
    strip = straighten(strip, colour)
    profile = intensity_profile(strip, colour=colour)
    reach = layout.tolerance
    # Both ends tried: the one whose control place holds the stronger line.
    (control, c_at), flipped = max(((_peak(profile[::-1] if f else profile, layout.control_at, reach), f)
                                    for f in (False, True)), key=lambda e: e[0][0])
    end = sample_end(image, quad)
    if end is not None and bool(end) != flipped:
        # The well says the other end faces the sample. One line seen from either end looks alike
        # (an invalid test's test line from the far end sits near the control line's place), so
        # the well's end wins unless the line sits nearer the control line's place from this end
        # than the test line's from the well's end (a well taken for another circle).
        p = profile[::-1] if end else profile
        at_well = _peak(p, layout.control_at, reach)
        x = c_at / len(profile)
        if at_well[0] >= layout.control_min or control < layout.control_min or \
                abs(1 - x - layout.test_at) < abs(x - layout.control_at):
            (control, c_at), flipped = at_well, bool(end)
    if control < layout.control_min and end is not None:
        # No control line at its place: a predicted window's ends may be off, so from the sample
        # end the well tells, look further (never as far as the test's place).
        reach = max(layout.tolerance, min(WIDE * layout.tolerance,
                                          abs(layout.control_at - layout.test_at) - layout.tolerance))
        control, c_at = _peak(profile[::-1] if flipped else profile, layout.control_at, reach)
    well = end is not None and flipped == bool(end)
    p = profile[::-1] if flipped else profile
    valid = control >= layout.control_min
    (test, t_at), test_place = _test_line(p, c_at, valid, reach, layout.test_at, layout)
    test2 = None
    if layout.test2_at is not None:  # a three-line test: its second test line, found the same way
        (test2, t2_at), _ = _test_line(p, c_at, valid, reach, layout.test2_at, layout)
    strongest = max(test, test2 or 0.0)
    call = "invalid" if not valid else "positive" if strongest >= layout.test_min else "negative"
    strip = strip[:, ::-1] if flipped else strip
    # Where no line was found, a washed-out place (glare, overexposure) hides whether one is there.
    absent = (("control", (layout.control_at, reach)) if not valid
              else ("test", test_place) if call == "negative" else None)
    if absent and _washed_out(strip, *absent[1], colour) > MAX_WASHED_OUT:
        return Reading("no read", f"the {absent[0]} line's place is washed out (glare or overexposure); "
                       f"retake the photo out of direct light", round(control, 4), round(test, 4), None, flipped,
                       well, mark(strip, c_at, t_at, valid, call == "positive"))
    more = () if test2 is None else ((t2_at, test2 >= layout.test_min, "T2"),)
    marked = mark(strip, c_at, t_at, valid, test >= layout.test_min, more=more)
    return Reading(call, "ok", round(control, 4), round(test, 4), round(test / control, 4) if valid else None,
                   flipped, well, marked, None if test2 is None else round(test2, 4))


def _test_line(p: np.ndarray, c_at: int, valid: bool, reach: float, at: float, layout
               ) -> tuple[tuple[float, int], tuple[float, float]]:
    """A test line whose place is ``at`` (share of the window's length from the sample end), looked
    for where the control line found puts it (a predicted window's ends are less exact than the
    lines' distance): at that distance, and where it would be were only the sample end, or only the
    far end, exact and the length wrong; the strongest place counts. Without a control line, at its
    own place. ((intensity, index), the place searched)."""
    places = ([(c_at / len(p) + at - layout.control_at, layout.tolerance / 2)] if valid else [(at, reach)])
    if valid:
        c = c_at / len(p)
        places += [(c * at / layout.control_at, layout.tolerance / 2),
                   (1 - (1 - c) * (1 - at) / (1 - layout.control_at), layout.tolerance / 2)]
        places = [place for place in places if 0 < place[0] < 1] or places[:1]  # not beyond the window
    return max(((_peak(p, *place), place) for place in places), key=lambda f: f[0][0])


def mark(strip: np.ndarray, c_at: int, t_at: int, control: bool, test: bool, height: int = 48,
         more: tuple = ()) -> np.ndarray:
    """The strip scaled to ``height`` px with ticks above and below each line's place: green where
    a line was found, grey where not; C and T labels (``more``: other lines, (place, found, label))."""
    scale = height / strip.shape[0]
    body = cv2.resize(strip, (max(1, round(strip.shape[1] * scale)), height), interpolation=cv2.INTER_LINEAR)
    out = np.full((height + 28, body.shape[1], 3), 255, np.uint8)
    out[14:14 + height] = body
    for x, found, label in ((c_at, control, "C"), (t_at, test, "T"), *more):
        x = int(round((x + 0.5) * scale))
        colour = (0, 170, 0) if found else (150, 150, 150)
        cv2.line(out, (x, 0), (x, 11), colour, 2)
        cv2.line(out, (x, height + 16), (x, height + 27), colour, 2)
        cv2.putText(out, label, (x + 3, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, 1, cv2.LINE_AA)
    return out


# -- scoring against the truth of synthetic cassettes (synth.render_truth) ---------------------

def truth_row(truth: dict) -> dict:
    """The columns a photo's read-out truth adds to a table of readings (truth written before
    lfa_ray recorded ``readable`` counts as readable; the JPEG quality is None where not recorded)."""
    lines = truth["lines"]
    return {"true_call": truth["call"], "true_readable": truth.get("readable", True),
            "true_control": lines["control"]["strength"], "true_test": lines["test"]["strength"],
            "true_test_level": lines["test"]["level"], "jpeg_quality": truth.get("jpeg_quality")}


def right(table):
    """Per photo, whether the reading is right: the true call, or "no read" where the photo does
    not show what the call rests on (glare or overexposure washed a line's place out)."""
    return (table["call"] == table["true_call"]) | ((table["call"] == "no read") & ~_readable(table))


def _readable(table):
    """Whether the truth says each photo shows its lines (True where it does not say)."""
    import pandas as pd

    if "true_readable" not in table:
        return pd.Series(True, index=table.index)
    return table["true_readable"].fillna(True).astype(bool)


def _spearman(a, b) -> float | None:
    import pandas as pd

    a, b = pd.Series(list(a), dtype=float), pd.Series(list(b), dtype=float)
    if len(a) < 3 or a.nunique() < 2 or b.nunique() < 2:
        return None
    return float(a.rank().corr(b.rank()))  # Spearman: Pearson of the ranks (ties averaged)


def score(table) -> dict:
    """Call accuracy over every photo with truth (:func:`right`; ``strict_accuracy``: every "no
    read" wrong), the confusion table (true call x reported call) and the Spearman correlations of
    the T/C ratio with the true strength ratio and of the test intensity with the true strength
    (photos truly valid and read as valid)."""
    t = table[table["true_call"].notna()] if "true_call" in table else table.iloc[:0]
    if t.empty:
        return {}
    valid = t[(t["true_call"] != "invalid") & t["tc_ratio"].notna()]
    confusion = {true: {called: int(((t["true_call"] == true) & (t["call"] == called)).sum()) for called in CALLS}
                 for true in CALLS[:3]}
    unreadable = ~_readable(t)
    return {"photos": len(t), "call_accuracy": float(right(t).mean()),
            "strict_accuracy": float((t["call"] == t["true_call"]).mean()),
            "not_read": int((t["call"] == "no read").sum()), "unreadable": int(unreadable.sum()),
            "declined_unreadable": int((unreadable & (t["call"] == "no read")).sum()), "confusion": confusion,
            "tc_spearman": _spearman(valid["tc_ratio"], valid["true_test"] / valid["true_control"]),
            "test_spearman": _spearman(valid["test"], valid["true_test"]),
            "by_level": {level: float(right(g).mean()) for level, g in t.groupby("true_test_level")}}


def markdown(s: dict) -> list[str]:
    """``score``'s figures as markdown lines."""
    if not s:
        return []
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"
    lines = ["## Read-out", "", f"Call accuracy {s['call_accuracy']:.2%} over {s['photos']} photos "
             f"({s['not_read']} not read, {s['declined_unreadable']} of them of the {s['unreadable']} whose "
             f"lines the photo does not show; counting every one wrong: {s['strict_accuracy']:.2%}); "
             f"T/C ratio vs true strength ratio Spearman {fmt(s['tc_spearman'])}, "
             f"test intensity vs true strength {fmt(s['test_spearman'])}.", "",
             "| true \\ called | " + " | ".join(CALLS) + " |", "| --- " * (len(CALLS) + 1) + "|"]
    lines += [f"| {true} | " + " | ".join(str(n) for n in row.values()) + " |" for true, row in s["confusion"].items()]
    lines += ["", "Accuracy by test line: " + ", ".join(f"{k} {v:.2%}" for k, v in s["by_level"].items()) + ".", ""]
    return lines
