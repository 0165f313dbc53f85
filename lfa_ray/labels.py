"""Labels from annotation tools: ``python -m lfa_ray.data import FORMAT SRC OUT [--label window]``.

Reads the exports people have and writes a dataset in the generic layout (``OUT/images/NAME.ext``,
the photo's bytes as they were, and ``OUT/masks/NAME.png``, 0/255 at the photo's size as displayed):

- ``labelme``: LabelMe JSON files (a folder of them, or one): ``polygon``, ``rectangle``, ``circle``
  and ``mask`` shapes; the photo at ``imagePath`` beside the JSON file, else the one embedded in
  ``imageData``.
- ``coco``: a COCO instances file: polygons, RLE (compressed or not, decoded by pycocotools) and,
  where an annotation has no segmentation, its ``bbox``; photos by ``file_name``.
- ``cvat``: CVAT for images XML (1.1): ``polygon``, ``box`` (rotated too) and ``mask`` (its RLE).
- ``labelstudio``: a Label Studio JSON export (a list of tasks): ``polygonlabels``,
  ``rectanglelabels`` (rotated too) and ``brushlabels`` (Label Studio's RLE), coordinates in
  percent of the photo; the photo by the file name in ``data.image`` (upload prefixes removed).

The label to use is chosen by name (``label``); every shape of that label in a photo is filled
(their union), photos without one are reported and left out. Coordinates are continuous pixel
coordinates ((0, 0) is the top-left corner of the top-left pixel); a pixel is in the mask when at
least half of it lies inside a shape. Photos are found next to the annotation file (or in
``images``). A tool's coordinates are taken in the frame its export states the photo's size in:
the photo as displayed (EXIF orientation applied) or, where the stated size is that of its stored
pixels (a tool that ignored the EXIF tag), those pixels, the mask then turned like the photo.
Bad input (an unknown label, a shape outside its photo, a photo that is missing or does not
decode, a file that is not the format's) ends with one line naming the file, before anything is
written; ``OUT`` appears complete or not at all.
"""

from __future__ import annotations

import base64
import io
import json
import re
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from lfa_ray.errors import UserError
from lfa_ray.images import IMAGE_EXTS, header, turn
from lfa_ray.storage import new_folder

FORMATS = ("labelme", "coco", "cvat", "labelstudio")
SUPERSAMPLE = 4  # polygons are filled at 4x and box-averaged: a pixel is in from half covered
OUTSIDE = 2.0  # px: a shape's point further than this outside its photo is refused (tools round at the edge)
LISTED = 8  # photos without the label named in the report


@dataclass
class Shape:
    label: str
    where: str  # for messages: the file and the shape
    polygon: list[tuple[float, float]] | None = None  # corners in the frame's pixels
    mask: np.ndarray | None = None  # 0/1 at the frame's size (RLE and bitmap shapes)


@dataclass
class Labelled:
    """One photo's shapes as an export states them."""
    source: str  # the annotation file, for messages
    name: str  # the photo's file name as the export gives it
    image: Path | None  # the photo's file (None: not found)
    frame: tuple[int, int] | None  # (width, height) the coordinates refer to; None: the photo's as displayed
    shapes: list[Shape] = field(default_factory=list)
    embedded: bytes | None = None  # the photo's bytes when the export holds them (LabelMe imageData)


def polygon_mask(size: tuple[int, int], polygons: list[list[tuple[float, float]]]) -> np.ndarray:
    """0/1 mask of ``size`` (width, height): the pixels at least half inside any of ``polygons``."""
    w, h = size
    big = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    for poly in polygons:  # PIL fills a sample whose centre is inside: shift by half a sample
        draw.polygon([(x * SUPERSAMPLE - 0.5, y * SUPERSAMPLE - 0.5) for x, y in poly], fill=255)
    return (np.asarray(big.resize((w, h), Image.BOX)) >= 128).astype(np.uint8)


def rectangle(x0: float, y0: float, x1: float, y1: float, degrees: float = 0.0, about: str = "centre"
              ) -> list[tuple[float, float]]:
    """The corners of a box from (x0, y0) to (x1, y1) turned ``degrees`` clockwise (as the image is
    shown, y down) about its centre or its first corner (``about="corner"``, Label Studio's)."""
    pts = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.float64)
    if degrees:
        pivot = pts[0] if about == "corner" else pts.mean(axis=0)
        t = np.deg2rad(degrees)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        pts = (pts - pivot) @ rot.T + pivot
    return [(float(x), float(y)) for x, y in pts]


def _circle(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    return [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a in t]


# -- readers, one per format -----------------------------------------------------------------

def _json(path: Path, fmt: str) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not a {fmt} export (not readable JSON: {str(exc).splitlines()[0]})") from None


def _find(name: str, folders: list[Path]) -> Path | None:
    """The photo ``name`` (a path as the export wrote it) in the first of ``folders`` that has it,
    by its relative path, else by its file name."""
    rel = Path(name)
    for folder in folders:
        for candidate in (folder / rel, folder / rel.name):
            if candidate.is_file():
                return candidate
    return None


def _points(raw, where: str) -> list[tuple[float, float]]:
    try:
        pts = [(float(x), float(y)) for x, y in raw]
    except (TypeError, ValueError):
        raise UserError(f"{where}: points must be [x, y] pairs, got {str(raw)[:60]}") from None
    return pts


def read_labelme(src: Path, images: list[Path]) -> list[Labelled]:
    files = sorted(src.glob("*.json")) if src.is_dir() else [src]
    if not files:
        raise UserError(f"{src}: no LabelMe .json files in this folder")
    out = []
    for f in files:
        doc = _json(f, "LabelMe")
        if not isinstance(doc, dict) or "shapes" not in doc:
            raise UserError(f"{f}: not a LabelMe file (no 'shapes'); export LabelMe JSON or pick another FORMAT")
        name = doc.get("imagePath") or f"{f.stem}.jpg"
        embedded = base64.b64decode(doc["imageData"]) if doc.get("imageData") else None
        frame = (int(doc["imageWidth"]), int(doc["imageHeight"])) if doc.get("imageWidth") else None
        item = Labelled(str(f), name, _find(name, [f.parent, *images]), frame, embedded=embedded)
        for k, s in enumerate(doc["shapes"]):
            where = f"{f}: shape {k + 1} ({s.get('label')!r}, {s.get('shape_type', 'polygon')})"
            kind = s.get("shape_type") or "polygon"
            pts = _points(s.get("points", []), where)
            shape = Shape(str(s.get("label")), where)
            if kind == "polygon":
                shape.polygon = pts
            elif kind == "rectangle" and len(pts) == 2:
                (x0, y0), (x1, y1) = pts
                shape.polygon = rectangle(x0, y0, x1, y1)
            elif kind == "circle" and len(pts) == 2:
                (cx, cy), (px, py) = pts
                shape.polygon = _circle(cx, cy, float(np.hypot(px - cx, py - cy)))
            elif kind == "mask" and len(pts) == 2 and s.get("mask"):
                shape.mask = _labelme_mask(s["mask"], pts, frame, where)
            else:
                shape.polygon = None
                shape.where += f": a {kind} is not a region; draw the window as a polygon or rectangle"
            item.shapes.append(shape)
        out.append(item)
    return out


def _labelme_mask(data: str, pts: list, frame: tuple[int, int] | None, where: str) -> np.ndarray:
    if frame is None:
        raise UserError(f"{where}: a mask shape needs imageWidth and imageHeight in the file")
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        part = np.asarray(im.convert("L")) > 0
    (x0, y0), _ = pts
    full = np.zeros((frame[1], frame[0]), np.uint8)
    x0, y0 = int(round(x0)), int(round(y0))
    h, w = part.shape
    full[max(0, y0):y0 + h, max(0, x0):x0 + w] = part[max(0, -y0):, max(0, -x0):][:full.shape[0] - max(0, y0),
                                                                                  :full.shape[1] - max(0, x0)]
    return full


def read_coco(src: Path, images: list[Path]) -> list[Labelled]:
    doc = _json(src, "COCO")
    if not isinstance(doc, dict) or not {"images", "annotations", "categories"} <= set(doc):
        raise UserError(f"{src}: not a COCO instances file (needs images, annotations and categories)")
    names = {c["id"]: str(c["name"]) for c in doc["categories"]}
    folders = [*images, src.parent, src.parent / "images", src.parent.parent / "images", src.parent.parent]
    items = {}
    for im in doc["images"]:
        items[im["id"]] = Labelled(str(src), im["file_name"], _find(im["file_name"], folders),
                                   (int(im["width"]), int(im["height"])))
    for k, a in enumerate(doc["annotations"]):
        item = items.get(a.get("image_id"))
        label = names.get(a.get("category_id"), f"category {a.get('category_id')}")
        where = f"{src}: annotation {a.get('id', k + 1)} ({label!r}, image {a.get('image_id')})"
        if item is None:
            raise UserError(f"{where}: no image with that id in 'images'")
        seg = a.get("segmentation")
        if isinstance(seg, list) and seg:
            for flat in seg:
                pairs = zip(flat[0::2], flat[1::2], strict=False)
                item.shapes.append(Shape(label, where, polygon=_points(pairs, where)))
        elif isinstance(seg, dict):
            item.shapes.append(Shape(label, where, mask=_coco_rle(seg, item.frame, where)))
        elif a.get("bbox"):
            x, y, w, h = (float(v) for v in a["bbox"])
            item.shapes.append(Shape(label, where, polygon=rectangle(x, y, x + w, y + h)))
    return list(items.values())


def _coco_rle(seg: dict, frame: tuple[int, int], where: str) -> np.ndarray:
    from pycocotools import mask as coco_mask

    try:
        h, w = (int(v) for v in seg["size"])
        rle = seg if isinstance(seg["counts"], (str, bytes)) else coco_mask.frPyObjects(seg, h, w)
        if isinstance(rle.get("counts"), str):
            rle = {"size": [h, w], "counts": rle["counts"].encode()}
        m = coco_mask.decode(rle)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: not a COCO RLE segmentation (needs size [h, w] and counts)") from None
    if (w, h) != frame:
        raise UserError(f"{where}: its RLE is {w}x{h} but the image is {frame[0]}x{frame[1]}")
    return m.astype(np.uint8)


def read_cvat(src: Path, images: list[Path]) -> list[Labelled]:
    try:
        root = ET.parse(src).getroot()
    except (ET.ParseError, OSError) as exc:
        raise UserError(f"{src}: not a CVAT XML export ({exc})") from None
    if root.tag != "annotations":
        raise UserError(f"{src}: not a CVAT for images export (the root is <{root.tag}>, not <annotations>)")
    folders = [*images, src.parent / "images", src.parent]
    out = []
    for im in root.iter("image"):
        name = im.get("name", "")
        item = Labelled(str(src), name, _find(name, folders), (int(im.get("width")), int(im.get("height"))))
        for k, el in enumerate(im):
            label = el.get("label", "")
            where = f"{src}: image {name!r}, {el.tag} {k + 1} ({label!r})"
            shape = Shape(label, where)
            try:
                if el.tag == "polygon":
                    shape.polygon = [tuple(float(v) for v in p.split(",")) for p in el.get("points").split(";")]
                elif el.tag == "box":
                    x0, y0, x1, y1 = (float(el.get(a)) for a in ("xtl", "ytl", "xbr", "ybr"))
                    shape.polygon = rectangle(x0, y0, x1, y1, float(el.get("rotation", 0)))
                elif el.tag == "mask":
                    shape.mask = _cvat_mask(el, item.frame)
                elif el.tag in ("polyline", "points", "skeleton", "ellipse", "cuboid"):
                    shape.where += f": a {el.tag} is not supported as a region; draw the window as a polygon"
                else:
                    continue  # tags and attributes
            except (TypeError, ValueError):
                raise UserError(f"{where}: its coordinates do not parse") from None
            item.shapes.append(shape)
        out.append(item)
    return out


def _cvat_mask(el: ET.Element, frame: tuple[int, int]) -> np.ndarray:
    """CVAT's mask RLE: run lengths alternating from background, row by row over its box."""
    left, top, w, h = (int(float(el.get(a))) for a in ("left", "top", "width", "height"))
    counts = [int(v) for v in el.get("rle").split(",")]
    flat = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8)
    if flat.size != w * h:
        raise ValueError("rle length")
    full = np.zeros((frame[1], frame[0]), np.uint8)
    full[top:top + h, left:left + w] = flat.reshape(h, w)[:frame[1] - top, :frame[0] - left]
    return full


UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio prefixes uploaded files with 8 hex digits


def read_labelstudio(src: Path, images: list[Path]) -> list[Labelled]:
    doc = _json(src, "Label Studio")
    if not isinstance(doc, list) or any(not isinstance(t, dict) or "data" not in t for t in doc):
        raise UserError(f"{src}: not a Label Studio JSON export (a list of tasks with 'data' and 'annotations'); "
                        f"export as JSON, not JSON-MIN or CSV")
    folders = [*images, src.parent, src.parent / "images"]
    out = []
    for t in doc:
        url = next((v for v in t["data"].values() if isinstance(v, str)), "")
        name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
        if "?d=" in url:  # local storage: /data/local-files/?d=folder/photo.jpg
            name = Path(urllib.parse.unquote(url.split("?d=", 1)[1])).name
        found = _find(name, folders) or _find(UPLOAD_PREFIX.sub("", name), folders)
        item = Labelled(str(src), name, found, None)
        done = [a for a in t.get("annotations", []) if not a.get("was_cancelled")]
        for k, r in enumerate(done[0]["result"] if done else []):
            value = r.get("value", {})
            labels = next((v for key, v in value.items() if key.endswith("labels") and isinstance(v, list)), [])
            where = f"{src}: task {t.get('id')}, result {k + 1} ({', '.join(map(str, labels))}, {r.get('type')})"
            w, h = r.get("original_width"), r.get("original_height")
            if w is None or h is None:
                raise UserError(f"{where}: no original_width/original_height; export from Label Studio 1.0 or later")
            item.frame = (int(w), int(h))
            sx, sy = w / 100.0, h / 100.0
            for label in labels:
                shape = Shape(str(label), where)
                if "points" in value:
                    shape.polygon = [(x * sx, y * sy) for x, y in _points(value["points"], where)]
                elif "width" in value and "height" in value and "x" in value:
                    x0, y0 = value["x"] * sx, value["y"] * sy
                    shape.polygon = rectangle(x0, y0, x0 + value["width"] * sx, y0 + value["height"] * sy,
                                              float(value.get("rotation", 0)), about="corner")
                elif value.get("format") == "rle":
                    shape.mask = brush_mask(value["rle"], int(w), int(h), where)
                else:
                    shape.where += f": a {r.get('type')} is not a region; label the window with polygons or rectangles"
                item.shapes.append(shape)
        out.append(item)
    return out


def brush_mask(rle: list[int], width: int, height: int, where: str) -> np.ndarray:
    """Label Studio's brush RLE (thi.ng rle-pack over the RGBA pixels): the mask where alpha > 0."""
    bits = "".join(f"{b:08b}" for b in bytes(int(v) & 0xFF for v in rle))
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise ValueError("short")
        pos += n
        return int(bits[pos - n:pos], 2)

    try:
        num, word = read(32), read(5) + 1
        sizes = [read(4) + 1 for _ in range(4)]
        out = np.zeros(num, np.uint8)
        i = 0
        while i < num:
            repeat = read(1)
            j = i + 1 + read(sizes[read(2)])
            if repeat:
                out[i:j] = read(word)
            else:
                for k in range(i, j):
                    out[k] = read(word)
            i = j
    except ValueError:
        raise UserError(f"{where}: its brush RLE does not decode") from None
    if num != width * height * 4:
        raise UserError(f"{where}: its brush RLE holds {num // 4} pixels, not {width}x{height}")
    return (out.reshape(height, width, 4)[..., 3] > 0).astype(np.uint8)


READERS = {"labelme": read_labelme, "coco": read_coco, "cvat": read_cvat, "labelstudio": read_labelstudio}


# -- writing the dataset ----------------------------------------------------------------------

@dataclass
class Imported:
    photos: int
    shapes: int
    unlabelled: list[str]  # photos without a shape of the label, left out
    out: Path


def _photo_bytes(item: Labelled) -> tuple[bytes, str]:
    if item.image is not None:
        return item.image.read_bytes(), item.image.name
    if item.embedded is not None:
        with Image.open(io.BytesIO(item.embedded)) as im:
            ext = ".png" if im.format == "PNG" else ".jpg"
        return item.embedded, Path(item.name).stem + ext
    raise UserError(f"{item.source}: photo {item.name!r} not found (looked beside the annotation file); "
                    f"pass --images DIR")


def _mask(item: Labelled, shapes: list[Shape], data: bytes) -> np.ndarray:
    """The union of ``shapes`` at the photo's size as displayed."""
    try:
        stored, displayed, orientation = header(data)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UserError(f"{item.image or item.source}: photo {item.name!r} cannot be decoded as an image") from None
    frame = item.frame or displayed
    on_stored = frame != displayed and frame == stored  # drawn by a tool that ignored the EXIF orientation
    if frame != displayed and not on_stored:
        raise UserError(f"{item.source}: {item.name!r} is labelled as {frame[0]}x{frame[1]} but the photo is "
                        f"{displayed[0]}x{displayed[1]}; export the labels of this photo")
    w, h = frame
    polygons = []
    mask = np.zeros((h, w), np.uint8)
    for s in shapes:
        if s.polygon is None and s.mask is None:
            raise UserError(s.where)
        if s.polygon is not None:
            pts = np.array(s.polygon, np.float64)
            if len(pts) < 3:
                raise UserError(f"{s.where}: a region needs at least 3 points, got {len(pts)}")
            worst = np.max(np.maximum(-pts, pts - [w, h]))
            if worst > OUTSIDE:
                x, y = pts[np.argmax(np.max(np.maximum(-pts, pts - [w, h]), axis=1))]
                raise UserError(f"{s.where}: point ({x:.1f}, {y:.1f}) lies outside the {w}x{h} photo; fix the label")
            polygons.append(s.polygon)
        else:
            if s.mask.shape != (h, w):
                raise UserError(f"{s.where}: its mask is {s.mask.shape[1]}x{s.mask.shape[0]}, the photo {w}x{h}")
            mask |= s.mask
    if polygons:
        mask |= polygon_mask((w, h), polygons)
    return turn(mask, orientation) if on_stored else mask


def import_labels(fmt: str, src: str | Path, out: str | Path, label: str = "window",
                  images: str | Path | None = None) -> Imported:
    """Read ``src`` (an export of ``fmt``) and write the photos with a ``label`` shape and their masks
    into ``out`` (module docstring). Everything is checked before anything is written."""
    src, out = Path(src), Path(out)
    if fmt not in READERS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not src.exists():
        raise UserError(f"{src}: not found; pass the {fmt} export (file or folder)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder; choose a new OUT")
    folders = [Path(images)] if images else []
    if images and not folders[0].is_dir():
        raise UserError(f"--images {images}: not a folder")
    items = READERS[fmt](src, folders)
    seen = sorted({s.label for item in items for s in item.shapes})
    if label not in seen:
        raise UserError(f"{src}: no shape labelled {label!r}; labels there: {', '.join(map(repr, seen)) or 'none'}; "
                        f"pass --label NAME")
    written, unlabelled, stems = [], [], {}
    for item in items:
        shapes = [s for s in item.shapes if s.label == label]
        if not shapes:
            unlabelled.append(item.name)
            continue
        data, file_name = _photo_bytes(item)
        if Path(file_name).suffix.lower() not in IMAGE_EXTS:
            raise UserError(f"{item.image or item.source}: {file_name!r} is not a photo lfa_ray reads "
                            f"({' '.join(sorted(IMAGE_EXTS))})")
        stem = Path(file_name).stem
        if stem in stems:
            raise UserError(f"{item.source}: two photos are named {stem!r} ({stems[stem]} and {item.name}); "
                            f"rename one")
        stems[stem] = item.name
        written.append((file_name, data, _mask(item, shapes, data), len(shapes)))
    with new_folder(out) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for file_name, data, mask, _ in written:
            (tmp / "images" / file_name).write_bytes(data)
            Image.fromarray(mask * 255).save(tmp / "masks" / f"{Path(file_name).stem}.png")
    return Imported(len(written), sum(n for *_, n in written), unlabelled, out)


def report(r: Imported, label: str, fmt: str, src: str) -> str:
    text = f"imported {r.photos} photos ({r.shapes} {label!r} shapes) from {src} ({fmt}) to {r.out}"
    if r.unlabelled:
        names = ", ".join(r.unlabelled[:LISTED]) + (f" and {len(r.unlabelled) - LISTED} more"
                                                    if len(r.unlabelled) > LISTED else "")
        text += f"\n{len(r.unlabelled)} photos without a {label!r} shape left out: {names}"
    return text + f"\ncheck it: python -m lfa_ray.data check {r.out}"
