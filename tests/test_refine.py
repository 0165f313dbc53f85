"""``lfa_ray.refine``: the window segmented again in a crop around it, and the crops a refining
model trains on (``lfa_ray.data crops``), on real files."""

import re

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lfa_ray import cli, data, infer, readout
from lfa_ray.config import load_config
from lfa_ray.images import read_mask, read_photo
from lfa_ray.runlog import read_metrics

from helpers import error_line, set_args, tiny_model, tiny_overrides


class Bright(torch.nn.Module):
    """A segmenter whose answer is known: logits positive where the photo is bright. It stands in
    for a refining model, so the test checks the crops' geometry (where they are cut, how their
    masks go back into the photo), not what a model learned."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(dim=1, keepdim=True) - 0.5) * 20


def _window(w=320, h=240, centre=(150, 120), size=(120, 30), angle=20.0):
    """A dark photo with one bright rotated strip (the window) and its 0/1 mask."""
    mask = np.zeros((h, w), np.uint8)
    corners = cv2.boxPoints((centre, size, angle)).astype(np.float32)
    cv2.fillPoly(mask, [np.round(corners * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    image = np.where(mask[..., None] > 0, 230, 40).astype(np.uint8).repeat(3, axis=2)
    return image, mask, corners


def _dice(a, b):
    return 2 * float((a & b).sum()) / max(1, float(a.sum() + b.sum()))


def test_a_window_cut_short_and_off_is_found_again_in_its_crop():
    image, truth, corners = _window()
    # a window model's mask that stopped at a line past halfway along the strip, two pixels off
    rough = np.zeros_like(truth)
    part = corners.copy()  # boxPoints: corners 1-2 and 3-0 are the long sides here
    part[[2, 3]] = corners[[1, 0]] + 0.55 * (corners[[2, 3]] - corners[[1, 0]])
    cv2.fillPoly(rough, [np.round(part + 2).astype(np.int32)], 1)
    assert _dice(rough, truth) < 0.7
    [refined] = infer.refine(Bright(), 64, [image], [rough], torch.device("cpu"))
    assert refined.shape == truth.shape and _dice(refined, truth) > 0.95
    # the first crop (1.5 x the mask's long side) cannot hold all of it: the second, around what the first found, does
    infer.PASSES, passes = 1, infer.PASSES
    try:
        [once] = infer.refine(Bright(), 64, [image], [rough], torch.device("cpu"))
    finally:
        infer.PASSES = passes
    assert _dice(rough, truth) < _dice(once, truth) < _dice(refined, truth)


def test_of_a_masks_regions_the_one_refined_most_like_a_window_is_kept():
    image, truth, corners = _window(centre=(90, 120))
    blob = np.zeros_like(truth)
    blob[80:160, 210:290] = 1  # something bright and square beside the window, larger than its mask
    image[blob > 0] = 230
    rough = blob.copy()
    part = corners.copy()
    part[[2, 3]] = corners[[1, 0]] + 0.6 * (corners[[2, 3]] - corners[[1, 0]])
    cv2.fillPoly(rough, [np.round(part).astype(np.int32)], 1)
    assert len(readout.regions(rough, infer.REGION_SHARE)) == 2
    [refined] = infer.refine(Bright(), 64, [image], [rough], torch.device("cpu"))
    assert _dice(refined, truth) > 0.95 and not (refined & blob).any()
    share = infer.REGION_SHARE
    infer.REGION_SHARE = 1.0  # only the largest region: the blob, refined into a square
    try:
        [largest_only] = infer.refine(Bright(), 64, [image], [rough], torch.device("cpu"))
    finally:
        infer.REGION_SHARE = share
    assert _dice(largest_only, blob) > 0.95 and not (largest_only & truth).any()


def test_a_photo_decoded_reduced_keeps_its_mask_at_the_displayed_size():
    image, truth, _ = _window(w=640, h=480, centre=(300, 240), size=(240, 60))
    small = cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA)  # decoded at half size
    rough = cv2.erode(truth, np.ones((15, 15), np.uint8))
    empty = np.zeros_like(truth)
    refined, still_empty = infer.refine(Bright(), 64, [small, small], [rough, empty], torch.device("cpu"))
    assert refined.shape == truth.shape and _dice(refined, truth) > 0.95 > _dice(rough, truth)
    assert not still_empty.any()  # no window found: nothing to crop around


def test_crops_keep_the_sources_split_and_frame_each_window(synth_dir, tmp_path, capsys):
    out = tmp_path / "crops"
    argv = ["crops", str(out), "--source", str(synth_dir), "--per-photo", "2", "--test-fraction", "0.1"]
    assert cli.data(argv) == 0
    assert "train a refining model on them" in capsys.readouterr().out
    splits = data.resolve_splits(synth_dir, 0.2, 42, 0.1)  # as training splits the source
    shown = {p.name for p in data.discover(synth_dir).pairs if read_mask(p.mask).any()}  # a window in sight
    assert len(shown) >= 115
    for attr in ("train", "val", "test"):
        names = sorted(f.stem for f in (out / f"{attr}_images").iterdir())
        assert names == sorted(f"{p.name}_{k}" for p in getattr(splits, attr) if p.name in shown for k in range(2))
    found = data.discover(out)
    # crops come in many sizes: data check names the most common and counts the others
    assert cli.data(["check", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "image sizes" in x)
    shown, other = re.findall(r"x\d+ \((\d+)\)", line), re.search(r"and (\d+) other sizes \((\d+) images\)", line)
    total = len(found.pairs) + len(found.val) + len(found.test)
    assert len(shown) == cli.SIZES_SHOWN and sum(map(int, shown)) + int(other[2]) == total
    for pair in found.pairs[:40]:
        photo, mask = read_photo(pair.image), read_mask(pair.mask)
        assert photo.size == mask.shape[::-1] and photo.size[0] == photo.size[1]
        # the window fills the share of the crop the jitter allows: its long side 1/4.0 .. 1/1.2 of the crop
        # (less where the crop cuts an end off)
        ys, xs = np.nonzero(mask)
        (_, _), (a, b), _ = cv2.minAreaRect(np.stack([xs, ys], 1).astype(np.float32))
        assert 0.2 < max(a, b) / photo.size[0] < 0.9
    # the same seed draws the same crops; another seed others
    again, other = tmp_path / "again", tmp_path / "other"
    assert cli.data(argv[:1] + [str(again)] + argv[2:]) == 0
    assert cli.data(argv[:1] + [str(other)] + argv[2:] + ["--seed", "1"]) == 0
    first = sorted((out / "train_images").iterdir())[0].name
    assert (out / "train_images" / first).read_bytes() == (again / "train_images" / first).read_bytes()
    assert (out / "train_images" / first).read_bytes() != (other / "train_images" / first).read_bytes()


@pytest.mark.parametrize("args, fragment", [
    (["--per-photo", "0"], "--per-photo must be at least 1"),
    (["--source", "/no/such/data"], "data folder not found"),
])
def test_bad_crops_input_exits_2_and_leaves_out_alone(synth_dir, tmp_path, capsys, args, fragment):
    out = tmp_path / "crops"
    argv = ["crops", str(out), "--source", str(synth_dir), *args]
    assert cli.data(argv) == 2 and fragment in error_line(capsys)
    assert not out.exists()
    out.mkdir()
    (out / "kept.txt").write_text("mine")
    assert cli.data(["crops", str(out), "--source", str(synth_dir)]) == 2
    assert "exists and is not an empty folder" in error_line(capsys)
    assert [f.name for f in out.iterdir()] == ["kept.txt"] and (out / "kept.txt").read_text() == "mine"


def test_predict_and_evaluate_refine_with_a_second_model(small_dir, tmp_path, capsys):
    model, _ = tiny_model(tmp_path, small_dir, **{"data.test_fraction": 0.25})
    photos = small_dir / "train_images"
    assert cli.predict(["--checkpoint", str(model), "--refine", str(model), str(photos), "--out",
                        str(tmp_path / "p"), "--readout"]) == 0
    assert len(pd.read_csv(tmp_path / "p" / "readout.csv")) == 24
    assert Image.open(tmp_path / "p" / "cassette_00000_mask.png").size == Image.open(
        photos / "cassette_00000.jpg").size
    assert cli.evaluate(["--checkpoint", str(model), "--refine", str(model), "--out", str(tmp_path / "e")]) == 0
    assert "refined by" in capsys.readouterr().out
    assert "windows refined in a crop" in (tmp_path / "e" / "summary.md").read_text()
    assert cli.predict(["--checkpoint", str(model), "--refine", "/no/such/model", str(photos),
                        "--out", str(tmp_path / "q")]) == 2
    assert error_line(capsys).startswith("error: --refine: ") and not (tmp_path / "q").exists()


@pytest.mark.slow
def test_a_run_trains_its_refining_model_and_predict_uses_it(ray_cluster, synth_dir, small_dir, tmp_path, capsys):
    """``train`` trains the window model, then its refining model on crops of the same photos (in
    the run's split), into ``RUN/refine/``; predict and evaluate use it unless told ``--refine none``;
    a run cut short in its refining model continues there; a warm start takes both models."""
    sets = {"data.image_size": 48, "model.features": "[8,16,32]", "train.epochs": 4, "train.lr": 3e-3,
            "refine.image_size": 32, "refine.epochs": 8, "refine.per_photo": 2}
    assert cli.train(set_args(tiny_overrides(synth_dir, tmp_path, **sets)) + ["--name", "two"]) == 0
    run = tmp_path / "two"
    out = capsys.readouterr().out
    assert f"refined by {run / 'refine' / 'model.pt'}" in out and "training the refining model (32 px" in out
    rcfg = load_config(run / "refine" / "config.yaml")
    assert (rcfg.data.image_size, rcfg.train.epochs, rcfg.refine.image_size) == (32, 8, None)
    crops = data.discover(rcfg.data.path)  # the run's photos, cropped in the run's split
    run_split = data.resolve_splits(synth_dir, 0.2, 42, 0.1)
    shown = {p.name for p in data.discover(synth_dir).pairs if read_mask(p.mask).any()}
    for part in ("val", "test"):  # two crops of each photo that shows a window
        assert sorted(p.name for p in getattr(crops, part)) == sorted(
            f"{p.name}_{k}" for p in getattr(run_split, part) if p.name in shown for k in range(2))
    refined = read_metrics(run / "refine" / "metrics.csv")
    assert [r["epoch"] for r in refined] == list(range(1, 9))
    assert max(r["val_dice"] for r in refined) > 0.5, refined  # it learnt the window in a crop (all-crop guess: 0.15)

    photos = small_dir / "train_images"
    capsys.readouterr()
    assert cli.predict(["--checkpoint", str(run), str(photos), "--out", str(tmp_path / "p2")]) == 0
    assert f"refined by {run / 'refine' / 'model.pt'}" in capsys.readouterr().out
    assert cli.predict(["--checkpoint", str(run), "--refine", "none", str(photos), "--out", str(tmp_path / "p1")]) == 0
    assert "refined by" not in capsys.readouterr().out
    masks = [[np.asarray(Image.open(tmp_path / d / f"{p.stem}_mask.png")) for p in sorted(photos.iterdir())]
             for d in ("p1", "p2")]
    assert sum(a.any() for a in masks[0]) >= 12  # the window model finds something in most photos ...
    assert sum((a != b).any() for a, b in zip(*masks, strict=True)) >= 12  # ... and the second stage redraws it
    assert cli.evaluate(["--checkpoint", str(run), "--out", str(tmp_path / "e")]) == 0
    assert f"refined by {run / 'refine' / 'model.pt'}" in capsys.readouterr().out

    # cut short after its window model: --resume-from finishes the refining model, the window model stays
    window_rows = read_metrics(run / "metrics.csv")
    (run / "refine" / "model.pt").unlink()
    assert cli.train(["--resume-from", str(run)]) == 0
    assert (run / "refine" / "model.pt").is_file() and read_metrics(run / "metrics.csv") == window_rows

    # a warm start from the run starts each model from its counterpart
    warm = {**sets, "train.init_from": str(run), "train.epochs": 1}
    assert cli.train(set_args(tiny_overrides(small_dir, tmp_path, **warm)) + ["--name", "warm"]) == 0
    assert load_config(tmp_path / "warm" / "refine" / "config.yaml").train.init_from == str(run / "refine" / "model.pt")
