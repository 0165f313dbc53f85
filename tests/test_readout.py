"""The read-out: synthetic ground truth, calls checked against it, photos it refuses to guess on,
and ``predict --readout`` / ``evaluate --readout`` on real files."""

import io
import json

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lfa_ray import cli, data, evaluate, readout, synth
from lfa_ray.config import ReadoutConfig, load_config
from lfa_ray.errors import UserError

from helpers import error_line, tiny_model

LAYOUT = ReadoutConfig()


# The read-out's checks on photos of the classic cassette, taken to be read (close-ups); on the other
# kinds and on far shots it is measured (benchmarks/readout.py, docs/PERFORMANCE.md), not asserted
CLASSIC = {"family": "classic"}


def render(seed, index, **kw):
    return synth.render(seed, index, **CLASSIC, **kw)


def render_truth(seed, index, **kw):
    return synth.render_truth(seed, index, **CLASSIC, **kw)


def write_synthetic(out, n, **kw):
    return synth.write_synthetic(out, n, **CLASSIC, **kw)


def test_synthetic_truth_describes_the_drawing_and_invalid_cassettes_lack_only_the_control_line(tmp_path):
    root = write_synthetic(tmp_path / "d", 12, seed=3, invalid_share=0.5)
    truths = [json.loads((root / "train_masks" / f"cassette_{i:05d}_readout.json").read_text()) for i in range(12)]
    assert {t["call"] for t in truths} == {"invalid", "positive", "negative"}
    for i, t in enumerate(truths):
        control, test = t["lines"]["control"], t["lines"]["test"]
        assert t["call"] == ("invalid" if control["strength"] == 0 else "positive" if test["strength"] else "negative")
        assert abs(control["at"] - 0.72) < 0.02 and abs(test["at"] - 0.38) < 0.03
        valid_image, masks = render(3, i)  # the same photo drawn without invalid cassettes
        image, masks_again, _ = render_truth(3, i, invalid_share=0.5)
        saved = io.BytesIO()  # the photo was saved at the JPEG quality its truth records
        Image.fromarray(image).save(saved, format="jpeg", quality=t["jpeg_quality"])
        assert saved.getvalue() == (root / "train_images" / f"cassette_{i:05d}.jpg").read_bytes()
        assert (masks["window"] == masks_again["window"]).all()
        assert (masks_again["lines"] <= masks["lines"]).all()  # the lines mask loses the control line
        changed = np.abs(image.astype(int) - valid_image).max(axis=-1) > 0
        if t["call"] == "invalid":  # only pixels at (and blurred around) the control line differ
            removed = cv2.dilate(masks["lines"] - masks_again["lines"], np.ones((15, 15), np.uint8))  # blur: <= 7 px
            assert changed.any() and not (changed & (removed == 0)).any()
            assert removed[round(control["centre"][1]), round(control["centre"][0])]
        else:
            assert not changed.any()


def test_the_truth_says_which_lines_the_photo_shows():
    """A line is visible where its contrast survives the photo's clip at white over a third of its
    length or more: a drawn line the truth calls washed out is mostly saturated in every channel;
    one it calls visible is unclipped over a third of its pixels or more."""
    hidden = shown = 0
    for i in range(120):
        image, masks, truth = render_truth(202, i, invalid_share=0.15)
        ys, xs = np.nonzero(masks["lines"])
        for name, line in truth["lines"].items():
            others = [np.hypot(xs - o["centre"][0], ys - o["centre"][1]) for o in truth["lines"].values()]
            mine = np.hypot(xs - line["centre"][0], ys - line["centre"][1]) <= np.min(others, axis=0)
            if line["strength"] == 0 or not mine.any():  # absent, or covered
                continue
            clipped = (image[ys[mine], xs[mine]].min(axis=1) >= 245).mean()
            if line["visible"]:
                shown += 1
                assert clipped <= 2 / 3, (i, name, clipped)
            else:
                hidden += 1
                assert clipped >= 0.5, (i, name, clipped)
        control, test = (truth["lines"][n]["visible"] for n in ("control", "test"))
        assert truth["readable"] == (control and (truth["call"] == "invalid" or test))
    assert hidden >= 3 and shown >= 100, (hidden, shown)


def test_a_declined_photo_counts_right_only_where_its_lines_do_not_show():
    table = pd.DataFrame({"call": ["positive", "no read", "no read", "negative", "invalid"],
                          "true_call": ["positive", "positive", "negative", "negative", "negative"],
                          "true_readable": [True, False, True, False, True],
                          "true_test_level": ["strong", "faint", "absent", "absent", "absent"],
                          "tc_ratio": [0.5, None, None, 0.01, None], "test": [0.4, None, None, 0.0, None],
                          "true_control": [0.8] * 5, "true_test": [0.6, 0.1, 0, 0, 0]})
    assert readout.right(table).tolist() == [True, True, False, True, False]
    s = readout.score(table)
    assert s["call_accuracy"] == 0.6 and s["strict_accuracy"] == 0.4
    assert (s["not_read"], s["unreadable"], s["declined_unreadable"]) == (2, 2, 1)
    older = table.drop(columns="true_readable")  # truth written before readable was recorded: strict
    assert readout.right(older).tolist() == [True, False, False, True, False]


def _reads(n: int, seed: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        image, masks, truth = render_truth(seed, i, invalid_share=0.2)
        rows.append({**readout.read(image, masks["window"], LAYOUT).row(), **readout.truth_row(truth)})
    return pd.DataFrame(rows)


def test_read_out_calls_synthetic_cassettes_from_their_true_windows():
    table = _reads(80, seed=5)
    s = readout.score(table)
    read = table[table["call"] != "no read"]
    assert s["not_read"] <= 0.2 * len(table)
    assert (read["call"] == read["true_call"]).mean() >= 0.95, table[read["call"] != read["true_call"]]
    assert s["tc_spearman"] > 0.85 and s["test_spearman"] > 0.85
    assert s["confusion"]["invalid"]["invalid"] > 5 and s["confusion"]["positive"]["positive"] > 10


def test_a_photo_turned_around_reads_the_same():
    read = 0
    for i in range(8):
        image, masks, _ = render_truth(9, i)
        a = readout.read(image, masks["window"], LAYOUT)
        b = readout.read(np.rot90(image, 2).copy(), np.rot90(masks["window"], 2).copy(), LAYOUT)
        assert a.call == b.call and a.status == b.status
        if a.status == "ok":
            read += 1
            assert a.flipped != b.flipped and a.control == pytest.approx(b.control, abs=0.05)
    assert read >= 5


def test_window_corners_follow_the_windows_sides_through_rounded_corners_and_bumps():
    """Corners within a share of the window's short side of the true ones: on the drawn masks, and
    on masks with rounded corners and a bump on a long side (as a predicted window looks)."""
    worst = {"drawn": [], "rough": []}
    for i in range(30):
        _, masks, truth = render_truth(7, i)
        true = np.float32(truth["window"])
        short = np.linalg.norm(true[1] - true[2])
        k = max(3, int(0.4 * short)) | 1
        rough = cv2.morphologyEx(masks["window"], cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        cv2.circle(rough, tuple(int(v) for v in (true[0] + true[1]) / 2), int(0.3 * short), 1, -1)
        for name, mask in (("drawn", masks["window"]), ("rough", rough)):
            quad, why = readout.window_corners(mask)
            assert quad is not None, why
            worst[name].append(max(np.linalg.norm(quad - corner, axis=1).min() for corner in true) / short)
    assert max(worst["drawn"]) < 0.15, worst["drawn"]
    assert np.median(worst["rough"]) < 0.15 and max(worst["rough"]) < 0.3, worst["rough"]


def _corner_error(quad: np.ndarray, corners: np.ndarray) -> float:
    """Mean distance (px) from each true corner to the nearest corner of ``quad``."""
    return float(np.mean([np.linalg.norm(quad - c, axis=1).min() for c in corners]))


def _rendered_window(seed: int, i: int) -> tuple[np.ndarray, dict, np.ndarray, np.ndarray]:
    """A rendered cassette: the photo, its masks, its true corners and the quad its true mask gives."""
    image, masks, truth = render_truth(seed, i)
    quad, why = readout.window_corners(masks["window"])
    assert quad is not None, why
    return image, masks, np.float32(truth["window"]), quad


def test_a_windows_sides_are_snapped_onto_the_membranes_edges():
    """A window whose corners are a few pixels off (a model's mask, upscaled) is moved onto the
    membrane's edges in the photo: the corner error falls to a third; a true window stays where it
    is (but for a rare one moved onto a stronger edge beyond a faint one); where the photo shows no
    edge (membrane and surroundings alike) the window stays too."""
    rng = np.random.default_rng(0)
    before, after, true = [], [], []
    for i in range(30):
        image, _, corners, quad = _rendered_window(7, i)
        off = quad + rng.normal(0, 3, quad.shape).astype(np.float32)
        before.append(_corner_error(off, corners))
        after.append(_corner_error(readout.snap(image, off), corners))
        true.append(_corner_error(readout.snap(image, quad), corners) - _corner_error(quad, corners))
    assert np.median(after) < np.median(before) / 3 and np.mean(after) < np.mean(before) / 2, (before, after)
    assert np.median(np.abs(true)) < 0.3 and np.mean(np.abs(true) > 2) < 0.05, true
    image, masks, truth = render_truth(7, 0)
    quad, _ = readout.window_corners(masks["window"])
    membrane = np.median(image[masks["window"] > 0], axis=0).astype(np.uint8)
    plain = np.broadcast_to(membrane, image.shape).copy()
    off = quad + np.float32([[2, 1], [-1, 2], [1, -2], [-2, -1]])
    assert np.array_equal(readout.snap(plain, off), off)


def test_a_window_cut_short_is_extended_to_the_membranes_end():
    """A window whose mask stops 20-40 % short of one end (at a line, in glare) is extended along
    the membrane's long edges to its true end; a true window keeps its ends (to a pixel); a photo
    without edges leaves it as it is."""
    rng = np.random.default_rng(0)
    before, after, kept = [], [], []
    for i in range(30):
        image, _, corners, quad = _rendered_window(8, i)
        cut, k = quad.copy(), rng.uniform(0.6, 0.8)
        end, other = ((1, 2), (0, 3)) if i % 2 else ((0, 3), (1, 2))
        cut[list(end)] = quad[list(other)] + k * (quad[list(end)] - quad[list(other)])
        before.append(_corner_error(cut, corners))
        after.append(_corner_error(readout.extend(image, cut), corners))
        kept.append(np.linalg.norm(readout.extend(image, quad) - quad, axis=1).max())
    assert np.median(after) < np.median(before) / 4 and np.mean(np.array(after) < 2) >= 2 / 3, (before, after)
    assert np.mean(np.array(kept) <= 1.5) >= 0.95, kept
    image, masks, _, quad = _rendered_window(8, 0)
    plain = np.broadcast_to(np.median(image[masks["window"] > 0], axis=0).astype(np.uint8), image.shape).copy()
    assert np.array_equal(readout.extend(plain, quad), quad)


def _true_end(quad: np.ndarray, truth: dict) -> int:
    """Which end of ``quad`` (as window_corners orders it) the truth says faces the sample well."""
    near = np.mean(np.array(truth["window"], np.float32)[[0, 3]], axis=0)
    return int(np.linalg.norm(quad[[1, 2]].mean(0) - near) < np.linalg.norm(quad[[0, 3]].mean(0) - near))


def test_the_sample_well_tells_which_end_of_the_window_faces_the_sample():
    answered = right = 0
    for i in range(60):
        image, masks, truth = render_truth(6, i)
        turned = [[image.shape[1] - 1 - x, image.shape[0] - 1 - y] for x, y in truth["window"]]
        for photo, mask, window in ((image, masks["window"], truth["window"]),
                                    (np.rot90(image, 2).copy(), np.rot90(masks["window"], 2).copy(), turned)):
            quad, _ = readout.window_corners(mask)
            end = readout.sample_end(photo, quad)
            answered += end is not None
            right += end == _true_end(quad, {"window": window})
    assert answered >= 0.8 * 120 and right >= 0.97 * answered, (answered, right)
    # Nothing around the window but the membrane's colour: no well, no guess.
    image, masks, truth = render_truth(6, 0)
    quad, _ = readout.window_corners(masks["window"])
    plain = np.where(masks["window"][..., None] > 0, image, np.uint8(200))
    assert readout.sample_end(plain, quad) is None


def test_a_window_cut_short_at_the_control_end_is_read_with_the_sample_end_the_well_tells(monkeypatch):
    """Without the well in sight (and with ends left where the mask has them: :func:`readout.extend`
    would find the membrane's end) the control line is out of its place."""
    tried = 0
    for i in range(40):
        image, masks, truth = render_truth(6, i)
        if truth["call"] == "invalid" or readout.read(image, masks["window"], LAYOUT).call != truth["call"]:
            continue
        c = np.array(truth["window"], np.float32)  # sample end first: c0, c3 near; c1, c2 far
        short = np.zeros_like(masks["window"])
        cv2.fillPoly(short, [np.round([c[0], c[0] + 0.8 * (c[1] - c[0]), c[3] + 0.8 * (c[2] - c[3]), c[3]]
                                      ).astype(np.int32)], 1)
        plain = np.where(masks["window"][..., None] > 0, image, np.uint8(200))  # no well in sight
        quad, _ = readout.window_corners(short)
        if readout.sample_end(image, quad) is None:
            continue
        tried += 1
        # the control line sits at 0.9 of the short window's length, beyond readout.tolerance of 0.72
        reading = readout.read(image, short, LAYOUT)
        assert reading.call == truth["call"] and reading.well, (i, reading.row())
        with monkeypatch.context() as m:
            m.setattr(readout, "extend", lambda image, quad: quad)
            assert readout.read(plain, short, LAYOUT).call in ("invalid", "no read")
    assert tried >= 5


def test_an_invalid_tests_lone_line_is_its_test_line_where_the_well_shows_the_sample_end():
    """An invalid cassette shows only its test line (0.38 from the sample end: 0.62 from the far end).
    With the window 6 % short at the sample end, that line sits 0.66 from the far end, within the
    tolerance of the control line's place (0.72): from the lines alone it passes for a control line
    (the photo read as valid). The well says which end faces the sample, and from there the line
    is where a test line belongs."""
    read = right = 0
    for i in range(60):
        image, masks, truth = render_truth(12, i, invalid_share=1.0)
        if truth["lines"]["test"]["strength"] < 0.4:
            continue
        c = np.float32(truth["window"])  # sample end first: corners 0 and 3
        cut = np.float32([c[0] + 0.06 * (c[1] - c[0]), c[1], c[2], c[3] + 0.06 * (c[2] - c[3])])
        mask = np.zeros_like(masks["window"])
        cv2.fillPoly(mask, [np.round(cut).astype(np.int32)], 1)
        quad, _ = readout.window_corners(mask)
        if quad is None or readout.sample_end(image, quad) is None:
            continue
        read += 1
        right += readout.read(image, mask, LAYOUT).call == "invalid"
    assert read >= 8 and right >= 0.9 * read, (read, right)


def test_slanted_lines_are_straightened():
    """A window whose corners slide along its long sides (a predicted mask's parallelogram) slants
    the lines across the strip, smearing each over many places of the profile: straightened, the
    control line reads about as strong as in the true window; a true window's strip is left alone."""
    tried = 0
    for i in range(20):
        image, masks, truth = render_truth(13, i)
        if truth["call"] == "invalid":
            continue
        c = np.float32(truth["window"])
        along = (c[1] - c[0]) / np.linalg.norm(c[1] - c[0])
        width = np.linalg.norm(c[3] - c[0])
        slid = np.float32([c[0] + width * along, c[1] + width * along, c[2], c[3]])
        true_strip = readout.rectify(image, c)
        colour = readout.channel(true_strip)
        if readout.intensity_profile(true_strip, colour=colour).max() < 0.2:
            continue  # a control line too faint to measure a loss on
        tried += 1
        assert readout.straighten(true_strip, colour) is true_strip
        slanted = readout.rectify(image, slid)
        strongest = [readout.intensity_profile(s, colour=colour).max()
                     for s in (true_strip, slanted, readout.straighten(slanted, colour))]
        assert strongest[1] < 0.75 * strongest[0] and strongest[2] > 0.85 * strongest[0], strongest
    assert tried >= 8


def test_a_window_too_long_at_the_sample_end_still_finds_the_test_line():
    """A predicted window running 20-30 % past the sample end: the control line sits within its
    tolerance, the test line (at its distance from the control line) does not; it is found where
    the far end, exact, puts it."""
    read = right = 0
    for i in range(80):
        image, masks, truth = render_truth(8, i)
        if truth["call"] != "positive" or readout.read(image, masks["window"], LAYOUT).call != "positive":
            continue
        c = np.float32(truth["window"])  # sample end first: corners 0 and 3
        for more in (0.2, 0.3):
            longer = np.float32([c[0] + more * (c[0] - c[1]), c[1], c[2], c[3] + more * (c[3] - c[2])])
            mask = np.zeros_like(masks["window"])
            cv2.fillPoly(mask, [np.round(longer).astype(np.int32)], 1)
            read += 1
            right += readout.read(image, mask, LAYOUT).call == "positive"
    assert read >= 40 and right >= 0.95 * read, (read, right)
    profile = np.zeros(160)
    profile[20] = 0.5
    assert readout._peak(profile, 0.12, 0.035) == (0.5, 20)
    for beyond in (-0.6, -0.03, 1.03, 1.8):  # a place off the strip holds no line, and says so
        assert readout._peak(profile, beyond, 0.035)[0] == 0.0


def test_a_photo_overexposed_in_green_is_read_in_the_channel_that_still_shows_the_lines():
    read = 0
    for i in range(30):
        image, masks, truth = render_truth(8, i)
        if truth["call"] != "positive" or readout.read(image, masks["window"], LAYOUT).call != "positive":
            continue
        # overexposed with a warm cast: red and green clip over the membrane, blue does not
        hot = np.clip(image.astype(np.float32) * [1.8, 1.8, 1.0], 0, 255).astype(np.uint8)
        quad, _ = readout.window_corners(masks["window"])
        strip = readout.rectify(hot, quad)
        if (readout._middle(strip)[..., 1] >= readout.WASHED_OUT).mean() < 0.5:
            continue  # not washed out enough to tell
        read += 1
        assert readout.channel(strip) == 2
        reading = readout.read(hot, masks["window"], LAYOUT)
        assert reading.call == "positive" and reading.status == "ok", reading.row()
    assert read >= 3


def test_read_out_says_why_it_cannot_read_instead_of_guessing():
    image, masks, truth = next(r for r in (render_truth(4, i) for i in range(20)) if r[2]["call"] == "negative")
    assert readout.read(image, masks["window"], LAYOUT).call == "negative"
    blank = np.zeros_like(masks["window"])
    tiny, disc, ell = blank.copy(), blank.copy(), blank.copy()
    tiny[10:12, 10:14] = 1
    line, dot = blank.copy(), blank.copy()  # regions whose rectangle has no width
    line[50, 10:40] = 1
    dot[50, 10] = 1
    yy, xx = np.mgrid[:blank.shape[0], :blank.shape[1]]
    disc[(yy - 80) ** 2 + (xx - 80) ** 2 < 30 ** 2] = 1
    ell[40:120, 40:60] = 1
    ell[100:120, 40:140] = 1
    for mask, why in [(blank, "no window found"), (tiny, "too small"), (line, "too small"), (dot, "too small"),
                      (disc, "nearly square"), (ell, "not a strip")]:
        r = readout.read(image, mask, LAYOUT)
        assert r.call == "no read" and why in r.status and r.control is None
    # overexposed: the membrane saturates, so a missing line may be one that does not show
    washed = np.clip(image.astype(np.float32) * 2.5, 0, 255).astype(np.uint8)
    r = readout.read(washed, masks["window"], LAYOUT)
    assert r.call == "no read" and "washed out" in r.status


def test_layouts_whose_lines_cannot_be_told_apart_are_refused():
    with pytest.raises(Exception, match="readout.control_at"):
        load_config(None, ["readout.control_at=0.6", "readout.test_at=0.38"])  # mirrored test place: 0.62
    assert load_config(None, ["readout.control_at=0.25", "readout.test_at=0.6"]).readout.control_at == 0.25


def test_packed_data_keeps_the_truth(tmp_path):
    root = write_synthetic(tmp_path / "d", 4, seed=2)
    packed = tmp_path / "d.parquet"
    data.pack(root, packed)
    folder, rows = data.discover(root).pairs, data.discover(packed).pairs
    assert {p.name: json.loads(p.readout.read_bytes()) for p in folder} == \
        {p.name: json.loads(p.readout.read_bytes()) for p in rows}


def test_predict_and_evaluate_read_out_every_photo(tmp_path, capsys):
    root = write_synthetic(tmp_path / "d", 6, seed=8, invalid_share=0.3)
    model, _ = tiny_model(tmp_path, root)
    out = tmp_path / "pred"
    assert cli.predict(["--checkpoint", str(model), "--readout", "--set", "readout.test_min=0.05",
                        str(root / "train_images"), "--out", str(out)]) in (None, 0)
    table = pd.read_csv(out / "readout.csv")
    assert sorted(table["name"]) == sorted(f"cassette_{i:05d}.jpg" for i in range(6))
    assert set(table["call"]) <= set(readout.CALLS) and table["status"].notna().all()
    for row in table.itertuples():  # a strip image for every photo whose window was found
        assert (out / row.name.replace(".jpg", "_readout.png")).is_file() == pd.notna(row.control)
    ev = tmp_path / "ev"
    assert cli.evaluate(["--checkpoint", str(model), "--data", str(root), "--readout", "--out", str(ev)]) in (None, 0)
    per_image = pd.read_csv(ev / "per_image.csv")
    assert {"call", "true_call", "control", "test", "tc_ratio"} <= set(per_image.columns)
    assert "## Read-out" in (ev / "summary.md").read_text() and "call accuracy" in capsys.readouterr().out
    # the gallery: all 6 photos (fewer than --worst's 12), 4 tiles a row, each under its label
    assert Image.open(ev / "worst.png").size == (4 * evaluate.TILE, 2 * (evaluate.TILE + 24))


@pytest.mark.parametrize("args, fragment", [
    (["--readout", "--set", "train.lr=1"], "take only readout.* keys"),
    (["--readout", "--set", "readout.tolerance=2"], "readout.tolerance"),
])
def test_bad_readout_settings_exit_2_with_one_line(tmp_path, capsys, args, fragment):
    root = write_synthetic(tmp_path / "d", 2, seed=8)
    model, _ = tiny_model(tmp_path, root)
    assert cli.predict(["--checkpoint", str(model), *args, str(root / "train_images"), "--out",
                        str(tmp_path / "p")]) == 2
    assert fragment in error_line(capsys)


def test_a_three_line_tests_second_test_line_is_read_and_makes_it_positive():
    """IgG/IgM, Pf/Pv: with ``readout.test2_at`` the read-out also reads a second test line, reports
    its intensity, and calls the test positive when either test line reaches ``test_min``."""
    image = np.full((120, 240, 3), 120, np.uint8)
    image[40:80, 20:220] = 235  # the membrane, its sample end on the left
    mask = np.zeros((120, 240), np.uint8)
    mask[40:80, 20:220] = 1
    for at, strength in ((0.72, 0.6), (0.2, 0.3)):  # control line, second test line; no first test line
        x = int(20 + 200 * at)
        image[40:80, x - 2:x + 2] = (image[40:80, x - 2:x + 2] * (1 - strength) + np.array([140, 20, 80]) * strength)
    two = readout.read(image, mask, LAYOUT)
    assert two.call == "negative" and "test2" not in two.row()  # a two-line layout does not look there
    layout = load_config(None, ["readout.test2_at=0.2"]).readout
    three = readout.read(image, mask, layout)
    assert three.call == "positive" and three.test < layout.test_min <= three.test2
    row = three.row()
    assert row["test2"] == three.test2 and row["t2c_ratio"] == pytest.approx(three.test2 / three.control, abs=1e-3)
    with pytest.raises(UserError, match="readout.test2_at"):  # too near the first test line to tell apart
        load_config(None, ["readout.test2_at=0.4"])
