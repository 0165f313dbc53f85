"""``lfa_ray.data import``: real export files of LabelMe, COCO, CVAT and Label Studio, written in each
tool's documented schema, read into a dataset lfa_ray trains on; bad exports refused in one line."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from lfa_ray import cli, data
from lfa_ray.labels import brush_mask, import_labels, polygon_mask

from helpers import error_line

W, H = 64, 48  # the photos' size as displayed
BOX = (10.0, 20.0, 30.0, 44.0)  # a window: x0, y0, x1, y1 in continuous pixel coordinates
KITE = [(40.0, 4.0), (60.0, 14.0), (44.0, 30.0)]  # a triangle of another label


def photo(path: Path, seed: int = 0, orientation: int = 1, size: tuple[int, int] = (W, H)) -> Path:
    """A photo of ``size`` as displayed; with an EXIF ``orientation`` its stored pixels are turned."""
    rng = np.random.default_rng(seed)
    w, h = size if orientation not in (5, 6, 7, 8) else size[::-1]
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=95, exif=exif)
    return path


def box_mask(x0: float, y0: float, x1: float, y1: float, size=(W, H)) -> np.ndarray:
    """The pixels at least half inside an axis-aligned box: whole pixels from round(x0) to round(x1)."""
    m = np.zeros(size[::-1], np.uint8)
    m[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))] = 1
    return m


def read_mask(out: Path, stem: str) -> np.ndarray:
    return (np.asarray(Image.open(out / "masks" / f"{stem}.png")) > 0).astype(np.uint8)


def labelme(folder: Path, name: str, shapes: list[dict], image_path: str | None, size=(W, H),
            image_data: bytes | None = None) -> Path:
    doc = {"version": "5.5.0", "flags": {}, "shapes": [
        {"label": s["label"], "points": s["points"], "group_id": None, "description": "",
         "shape_type": s.get("shape_type", "polygon"), "flags": {}, "mask": s.get("mask")} for s in shapes],
        "imagePath": image_path, "imageData": base64.b64encode(image_data).decode() if image_data else None,
        "imageHeight": size[1], "imageWidth": size[0]}
    f = folder / f"{name}.json"
    f.write_text(json.dumps(doc))
    return f


def test_labelme_polygons_rectangles_circles_and_embedded_photos(tmp_path):
    src = tmp_path / "labelme"
    photo(src / "a.jpg", 1)
    photo(src / "b.jpg", 2)
    x0, y0, x1, y1 = BOX
    labelme(src, "a", [{"label": "window", "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]},
                       {"label": "cassette", "points": [list(p) for p in KITE]}], "a.jpg")
    labelme(src, "b", [{"label": "window", "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle"},
                       {"label": "window", "points": [[50, 30], [54, 30]], "shape_type": "circle"}], "b.jpg")
    embedded = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), 200, np.uint8)).save(embedded, format="png")
    labelme(src, "c", [{"label": "window", "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle"}],
            "elsewhere/c.png", image_data=embedded.getvalue())  # the photo only inside the JSON
    labelme(src, "d", [{"label": "cassette", "points": [list(p) for p in KITE]}], "a.jpg")  # no window

    r = import_labels("labelme", src, tmp_path / "out")
    out = tmp_path / "out"
    assert (r.photos, r.shapes, r.unlabelled) == (3, 4, ["a.jpg"])  # d.json's photo has no window
    assert (out / "images" / "a.jpg").read_bytes() == (src / "a.jpg").read_bytes()  # the photo's bytes as they were
    assert (read_mask(out, "a") == box_mask(*BOX)).all()  # the kite of the other label is not in it
    b = read_mask(out, "b")
    assert (b[:, :40] == box_mask(*BOX)[:, :40]).all()
    circle = b[:, 40:]
    assert abs(circle.sum() - np.pi * 16) <= 6 and circle[30, 10] == 1  # radius 4 around (50, 30)
    assert (read_mask(out, "c") == box_mask(*BOX)).all()
    assert np.asarray(Image.open(out / "images" / "c.png")).shape == (H, W, 3)
    checked = data.check(out)  # a dataset lfa_ray trains on: every photo has its mask, sizes match
    assert checked["train"] + checked["val"] == 3


def test_coco_polygons_rle_compressed_and_not_and_bounding_boxes(tmp_path):
    src = tmp_path / "coco"
    for i in range(4):
        photo(src / "images" / f"p{i}.jpg", i)
    truth = box_mask(*BOX)
    compressed = coco_mask.encode(np.asfortranarray(truth))
    compressed["counts"] = compressed["counts"].decode()  # as COCO JSON stores it
    flat = truth.flatten(order="F")  # uncompressed RLE: run lengths, column by column, from background
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]]))).tolist()
    counts = np.diff([0] + changes).tolist()
    x0, y0, x1, y1 = BOX
    doc = {"info": {}, "licenses": [],
           "images": [{"id": i + 1, "file_name": f"p{i}.jpg", "width": W, "height": H} for i in range(4)],
           "categories": [{"id": 1, "name": "window", "supercategory": ""}, {"id": 2, "name": "cassette"}],
           "annotations": [
               {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [x0, y0, x1 - x0, y1 - y0],
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "area": (x1 - x0) * (y1 - y0)},
               {"id": 2, "image_id": 2, "category_id": 1, "iscrowd": 1, "segmentation": compressed, "bbox": []},
               {"id": 3, "image_id": 3, "category_id": 1, "iscrowd": 1, "bbox": [],
                "segmentation": {"size": [H, W], "counts": counts}},
               {"id": 4, "image_id": 4, "category_id": 1, "iscrowd": 0, "segmentation": [],
                "bbox": [x0, y0, x1 - x0, y1 - y0]},
               {"id": 5, "image_id": 4, "category_id": 2, "iscrowd": 0,
                "segmentation": [[v for p in KITE for v in p]], "bbox": []}]}
    (src / "annotations").mkdir()
    (src / "annotations" / "instances.json").write_text(json.dumps(doc))
    assert counts[0] > 0 and sum(counts) == W * H
    r = import_labels("coco", src / "annotations" / "instances.json", tmp_path / "out")
    assert r.photos == 4 and not r.unlabelled
    for i in range(4):
        assert (read_mask(tmp_path / "out", f"p{i}") == truth).all(), i


def test_cvat_polygons_rotated_boxes_and_masks(tmp_path):
    src = tmp_path / "cvat"
    for i in range(3):
        photo(src / "images" / f"p{i}.jpg", i)
    truth = box_mask(*BOX)
    x0, y0, x1, y1 = BOX
    part = truth[20:44, 8:32]  # the mask's box, with a column of background on each side
    flat = part.flatten()  # CVAT: run lengths row by row over the box, from background
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]]))).tolist()
    rle = ",".join(str(v) for v in np.diff([0] + changes))
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><id>1</id><name>lfa</name><size>3</size><mode>annotation</mode>
    <labels><label><name>window</name><type>any</type></label><label><name>cassette</name></label></labels>
  </task></meta>
  <image id="0" name="p0.jpg" width="{W}" height="{H}">
    <polygon label="window" source="manual" occluded="0" points="{x0},{y0};{x1},{y0};{x1},{y1};{x0},{y1}" z_order="0"/>
    <polygon label="cassette" source="manual" occluded="0" points="40,4;60,14;44,30" z_order="0"/>
  </image>
  <image id="1" name="p1.jpg" width="{W}" height="{H}">
    <box label="window" source="manual" occluded="0" xtl="{(x0 + x1) / 2 - 12}" ytl="{(y0 + y1) / 2 - 10}"
         xbr="{(x0 + x1) / 2 + 12}" ybr="{(y0 + y1) / 2 + 10}" rotation="90.0" z_order="0"/>
  </image>
  <image id="2" name="p2.jpg" width="{W}" height="{H}">
    <mask label="window" source="manual" occluded="0" rle="{rle}" left="8" top="20" width="24" height="24"
          z_order="0"/>
  </image>
</annotations>"""
    (src / "annotations.xml").write_text(xml)
    r = import_labels("cvat", src / "annotations.xml", tmp_path / "out")
    assert r.photos == 3
    assert (read_mask(tmp_path / "out", "p0") == truth).all()
    assert (read_mask(tmp_path / "out", "p1") == truth).all()  # 24 x 20 turned a quarter: 20 x 24 as the window
    assert (read_mask(tmp_path / "out", "p2") == truth).all()


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a 0/1 mask, written to the rle-pack layout it documents: 32 bits of
    value count, 5 bits word size - 1, four 4-bit run-length sizes - 1, then per run a repeat flag,
    a 2-bit size index, the run length - 1 and the value (here: every run a repeat, 8-bit words)."""
    values = np.repeat(mask.astype(np.uint8).flatten() * 255, 4)  # RGBA per pixel
    bits = [f"{len(values):032b}", f"{7:05b}"] + [f"{15:04b}"] * 4
    i = 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i] and j - i < 2 ** 16:
            j += 1
        bits += ["1", "00", f"{j - i - 1:016b}", f"{values[i]:08b}"]
        i = j
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[k:k + 8], 2) for k in range(0, len(stream), 8)]


def test_label_studio_polygons_rotated_rectangles_brushes_and_upload_names(tmp_path):
    src = tmp_path / "ls"
    for i in range(3):
        photo(src / f"p{i}.jpg", i)
    truth = box_mask(*BOX)
    x0, y0, x1, y1 = BOX
    pct = [[x / W * 100, y / H * 100] for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    assert (brush_mask(brush_rle(truth), W, H, "test") == truth).all()

    def task(i: int, image: str, result: list) -> dict:
        return {"id": i, "data": {"image": image}, "annotations": [
            {"id": 10 + i, "completed_by": 1, "was_cancelled": False, "result": [
                {"original_width": W, "original_height": H, "image_rotation": 0, "from_name": "label",
                 "to_name": "image", "type": r["type"], "value": r["value"], "id": f"r{i}"} for r in result]}]}

    tasks = [
        task(1, "/data/upload/1/0a1b2c3d-p0.jpg", [
            {"type": "polygonlabels", "value": {"points": pct, "closed": True, "polygonlabels": ["window"]}},
            {"type": "polygonlabels", "value": {"points": [[x / W * 100, y / H * 100] for x, y in KITE],
                                                "polygonlabels": ["cassette"]}}]),
        # a rectangle 24 wide, 20 tall at (x0 + 20, y0) turned 90 degrees clockwise about that corner
        task(2, "/data/local-files/?d=photos/p1.jpg", [
            {"type": "rectanglelabels", "value": {"x": (x0 + 20) / W * 100, "y": y0 / H * 100, "width": 24 / W * 100,
                                                  "height": 20 / H * 100, "rotation": 90,
                                                  "rectanglelabels": ["window"]}}]),
        task(3, "s3://bucket/p2.jpg", [
            {"type": "brushlabels", "value": {"format": "rle", "rle": brush_rle(truth), "brushlabels": ["window"]}}]),
        {"id": 4, "data": {"image": "/data/upload/1/ffffffff-p0.jpg"}, "annotations": []},
    ]
    (src / "export.json").write_text(json.dumps(tasks))
    r = import_labels("labelstudio", src / "export.json", tmp_path / "out")
    assert r.photos == 3 and r.unlabelled == ["ffffffff-p0.jpg"]
    for i in range(3):
        assert (read_mask(tmp_path / "out", f"p{i}") == truth).all(), i


@pytest.mark.parametrize("frame", ["displayed", "stored"])
def test_a_turned_phone_photo_gets_its_mask_as_displayed(tmp_path, frame):
    """A photo stored 48 x 64 with EXIF orientation 6 is shown 64 x 48: labels drawn on the photo as
    shown, or by a tool that ignored the tag on its stored pixels, give the same mask as displayed."""
    src = tmp_path / "lm"
    photo(src / "phone.jpg", 3, orientation=6)
    x0, y0, x1, y1 = BOX
    if frame == "displayed":
        pts, size = [[x0, y0], [x1, y1]], (W, H)
    else:  # orientation 6 shows the stored pixels (64 tall) turned 90 degrees clockwise: shown (x, y) = (64 - ys, xs)
        pts, size = [[y0, W - x1], [y1, W - x0]], (H, W)
    labelme(src, "phone", [{"label": "window", "points": pts, "shape_type": "rectangle"}], "phone.jpg", size=size)
    import_labels("labelme", src, tmp_path / "out")
    mask = read_mask(tmp_path / "out", "phone")
    assert mask.shape == (H, W) and (mask == box_mask(*BOX)).all()
    pair = data.discover(tmp_path / "out").pairs[0]
    shown, m = data.decode_pair(pair)
    assert shown.size == (W, H) and (m == mask).all()


def test_bad_exports_are_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    src = tmp_path / "lm"
    photo(src / "a.jpg")
    x0, y0, x1, y1 = BOX
    labelme(src, "a", [{"label": "window", "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle"}], "a.jpg")
    out = tmp_path / "out"

    def refused(*args) -> str:
        assert cli.data(["import", *map(str, args)]) == 2
        assert not out.exists()
        return error_line(capsys)

    line = refused("labelme", src, out, "--label", "windw")
    assert "windw" in line and "'window'" in line and str(src) in line  # the labels there, and the fix
    labelme(src, "b", [{"label": "window", "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle"}], "gone.jpg")
    line = refused("labelme", src, out)
    assert "gone.jpg" in line and "b.json" in line
    (src / "b.json").unlink()
    photo(src / "c.jpg")
    labelme(src, "c", [{"label": "window", "points": [[x0, y0], [W + 20, y0], [W + 20, y1]]}], "c.jpg")
    line = refused("labelme", src, out)
    assert "c.json" in line and f"{W + 20}" in line and "outside" in line
    labelme(src, "c", [{"label": "window", "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle"}], "a.jpg")
    assert "two photos are named 'a'" in refused("labelme", src, out)
    (src / "c.json").unlink()
    (src / "d.json").write_text("{not json")
    assert "d.json" in refused("labelme", src, out)
    (src / "d.json").unlink()
    assert "not a COCO" in refused("coco", src / "a.json", out)
    assert "not found" in refused("cvat", src / "missing.xml", out)

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.data(["import", "labelme", str(src), str(out)]) == 2
    assert "exists" in error_line(capsys) and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert cli.data(["import", "labelme", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "imported 1 photos" in printed and f"python -m lfa_ray.data check {out}" in printed


def test_polygon_fill_takes_pixels_at_least_half_inside():
    m = polygon_mask((10, 10), [[(2.0, 2.0), (6.2, 2.0), (6.2, 5.8), (2.0, 5.8)]])
    # columns 2..5 are wholly inside, column 6 a fifth; rows 2..4 wholly, row 5 four fifths
    assert m.sum() == 4 * 4 and m[2:6, 2:6].all()
