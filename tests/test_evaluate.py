"""``lfa_ray.evaluate``: scores checked against known values, the CLI on real files, bad input."""

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from lfa_ray import cli, data, evaluate, infer, predict
from lfa_ray.checkpoint import load_model
from lfa_ray.images import read_mask

from helpers import error_line, tiny_model


def test_scores_match_hand_computed_values():
    truth = np.zeros((40, 40), np.uint8)
    truth[10:20, 10:30] = 1  # 200 px
    pred = np.zeros_like(truth)
    pred[10:20, 10:20] = 1  # 100 px, all inside
    s = evaluate.scores(pred, truth)
    assert s["dice"] == pytest.approx(2 * 100 / 300) and s["iou"] == pytest.approx(0.5)
    assert evaluate.scores(truth, truth) == {"dice": 1.0, "iou": 1.0, "boundary_f1": 1.0}
    empty = np.zeros_like(truth)
    assert evaluate.scores(empty, empty) == {"dice": 1.0, "iou": 1.0, "boundary_f1": 1.0}
    assert evaluate.scores(empty, truth) == {"dice": 0.0, "iou": 0.0, "boundary_f1": 0.0}
    shifted = np.roll(truth, 1, axis=1)  # one pixel off: within tolerance, though Dice drops
    assert evaluate.boundary_f1(shifted, truth, tolerance=1.0) == 1.0
    far = np.roll(truth, 8, axis=0)  # the outlines meet only at the shared columns' ends
    assert evaluate.boundary_f1(far, truth, tolerance=1.0) < 0.5


def test_evaluate_scores_the_models_own_test_split_at_each_photos_size(small_dir, tmp_path, capsys):
    model, cfg = tiny_model(tmp_path, small_dir, **{"data.test_fraction": 0.25})
    out = tmp_path / "ev"
    assert cli.evaluate(["--checkpoint", str(model), "--out", str(out), "--worst", "3"]) == 0
    assert "Dice mean" in capsys.readouterr().out
    table = pd.read_csv(out / "per_image.csv")
    test = data.splits_for(cfg, small_dir).test
    assert sorted(table["name"]) == sorted(p.name for p in test) and len(test) == 6
    sizes = {p.name: Image.open(p.image.local).size for p in test}  # the photos' own sizes, not 32 px
    assert [tuple(wh) for wh in table[["width", "height"]].values] == [sizes[n] for n in table["name"]]
    assert len(set(sizes.values())) > 1  # portrait and landscape photos of several aspect ratios
    # the CSV's Dice is what predict's mask scores against the true mask
    first = next(p for p in test if p.name == table["name"][0])
    predict.run(str(model), str(first.image.local), str(tmp_path / "pred"))
    mask = np.asarray(Image.open(tmp_path / "pred" / f"{first.name}_mask.png")) > 0
    assert table["dice"][0] == pytest.approx(evaluate.scores(mask, read_mask(first.mask))["dice"], abs=1e-4)
    assert "| dice |" in (out / "summary.md").read_text()
    assert Image.open(out / "worst.png").size[0] == 3 * evaluate.TILE


def test_flip_tta_masks_do_not_depend_on_how_the_photo_was_flipped(small_dir, tmp_path, capsys):
    model_file, cfg = tiny_model(tmp_path, small_dir)
    model, size, _ = load_model(model_file, torch.device("cpu"))
    image = np.asarray(Image.open(next((small_dir / "train_images").iterdir())).convert("RGB"))
    cpu = torch.device("cpu")
    with torch.no_grad():  # centre the untrained model's logits on 0, so its mask has edges to differ at
        logits = model(infer.model_input([image], size).to(memory_format=torch.channels_last))
        model.final_conv.bias -= logits.median()
    plain, tta = (infer.predict(model, [image], size, cpu, tta=t)[0] for t in (False, True))
    assert 0.1 < tta.mean() < 0.9
    mirrored = infer.predict(model, [image[:, ::-1].copy()], size, cpu, tta=True)[0]
    upside_down = infer.predict(model, [image[::-1].copy()], size, cpu, tta=True)[0]
    # averaged over the four flips (each undone), the mask of a flipped photo is the flipped mask
    assert (mirrored[:, ::-1] == tta).mean() > 0.999 and (upside_down[::-1] == tta).mean() > 0.999
    assert (plain != tta).any()  # an untrained model is far from flip-symmetric: TTA changes its mask
    assert cli.evaluate(["--checkpoint", str(model_file), "--data", str(small_dir), "--tta",
                         "--out", str(tmp_path / "ev")]) == 0
    assert "flip TTA" in (tmp_path / "ev" / "summary.md").read_text()


def test_evaluate_on_other_data_takes_its_test_folder_or_all_of_it(small_dir, tmp_path, capsys):
    model, _ = tiny_model(tmp_path, small_dir)
    other = tmp_path / "other"
    (other / "train_images").mkdir(parents=True)
    (other / "train_masks").mkdir()
    for p in data.discover(small_dir).pairs[:5]:
        (other / "train_images" / p.image.name).write_bytes(p.image.read_bytes())
        (other / "train_masks" / p.mask.name).write_bytes(p.mask.read_bytes())
    assert cli.evaluate(["--checkpoint", str(model), "--data", str(other), "--out", str(tmp_path / "all")]) == 0
    assert len(pd.read_csv(tmp_path / "all" / "per_image.csv")) == 5 and "(all of" in capsys.readouterr().out
    (other / "train_images").rename(other / "test_images")  # now the same photos are an explicit test set ...
    (other / "train_masks").rename(other / "test_masks")
    for p in data.discover(small_dir).pairs[5:8]:  # ... beside three training photos
        (other / "train_images").mkdir(exist_ok=True)
        (other / "train_masks").mkdir(exist_ok=True)
        (other / "train_images" / p.image.name).write_bytes(p.image.read_bytes())
        (other / "train_masks" / p.mask.name).write_bytes(p.mask.read_bytes())
    assert cli.evaluate(["--checkpoint", str(model), "--data", str(other), "--out", str(tmp_path / "t")]) == 0
    assert len(pd.read_csv(tmp_path / "t" / "per_image.csv")) == 5 and "(test of" in capsys.readouterr().out


@pytest.mark.parametrize("args, fragment", [
    (["--checkpoint", "/no/such/model"], "no model here"),
    (["--data", "/no/such/data"], "data folder not found"),
    (["--split", "test"], "no test set"),
    (["--worst", "0"], "--worst and --batch-size must be at least 1"),
])
def test_bad_input_exits_2_with_one_line(small_dir, tmp_path, capsys, args, fragment):
    model, _ = tiny_model(tmp_path, small_dir, **{"data.test_fraction": 0.0})
    argv = ["--checkpoint", str(model), "--out", str(tmp_path / "ev"), *args]
    if args[0] == "--checkpoint":
        argv = args + ["--out", str(tmp_path / "ev")]
    assert cli.evaluate(argv) == 2
    assert fragment in error_line(capsys)
    assert not (tmp_path / "ev").exists()


def test_a_broken_test_photo_is_named_and_skipped(small_dir, tmp_path, capsys):
    """A photo that does not decode is named on a line of its own and left out; the others are
    scored and written, and the command fails saying how many were scored."""
    root = tmp_path / "d"
    for sub in ("train_images", "train_masks", "test_images", "test_masks"):
        (root / sub).mkdir(parents=True)
    pairs = data.discover(small_dir).pairs
    for sub, some in (("train", pairs[:3]), ("test", pairs[3:8])):
        for p in some:
            (root / f"{sub}_images" / p.image.name).write_bytes(p.image.read_bytes())
            (root / f"{sub}_masks" / p.mask.name).write_bytes(p.mask.read_bytes())
    (root / "test_images" / "bad.jpg").write_bytes(b"not a jpeg")
    Image.new("L", (10, 10)).save(root / "test_masks" / "bad_mask.gif")
    model, _ = tiny_model(tmp_path, small_dir)
    argv = ["--checkpoint", str(model), "--data", str(root), "--out", str(tmp_path / "ev"), "--batch-size", "2"]
    assert cli.evaluate(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("skipped: ")] == [
        f"skipped: {root / 'test_images' / 'bad.jpg'}: cannot be decoded as an image; replace or remove it"]
    assert f"error: 5 of 6 photos scored, written to {tmp_path / 'ev'}; 1 could not be decoded" in err
    scored = pd.read_csv(tmp_path / "ev" / "per_image.csv")
    assert sorted(scored["name"]) == sorted(p.name for p in pairs[3:8])
    assert "5 photos" in (tmp_path / "ev" / "summary.md").read_text()
    for p in pairs[3:8]:  # none decodes: nothing to score, nothing written
        (root / "test_images" / p.image.name).write_bytes(b"not a jpeg either")
    assert cli.evaluate(argv[:-4] + ["--out", str(tmp_path / "ev2")]) == 2
    assert "none of the 6 photos (test of" in error_line(capsys) and not (tmp_path / "ev2").exists()


def test_predict_and_evaluate_print_the_models_profile(small_dir, tmp_path, capsys):
    model, _ = tiny_model(tmp_path, small_dir, **{"train.lr": 0.0025})
    for main in (cli.predict, cli.evaluate):
        assert main(["--checkpoint", str(model), "--print-config"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["train"]["lr"] == 0.0025


def test_predict_in_chunks_matches_one_by_one_in_order_and_skips_a_broken_photo(small_dir, tmp_path, capsys):
    """Photos are decoded and written on threads beside the model, two chunks at a time: the files
    and the read-out rows must be those of each photo alone, in the folder's order."""
    model, _ = tiny_model(tmp_path, small_dir)
    photos = tmp_path / "photos"
    photos.mkdir()
    pairs = data.discover(small_dir).pairs[:9]
    for p in pairs:
        (photos / p.image.name).write_bytes(p.image.read_bytes())
    assert cli.predict(["--checkpoint", str(model), str(photos), "--out", str(tmp_path / "all"),
                        "--batch-size", "2", "--readout"]) == 0
    table = pd.read_csv(tmp_path / "all" / "readout.csv")
    assert list(table["name"]) == sorted(p.image.name for p in pairs)
    for name in table["name"][::4]:  # the first, a middle and the last photo, each predicted alone
        alone = tmp_path / f"alone-{name}"
        predict.run(str(model), str(photos / name), str(alone), readout_sets=[])
        stem = name.rsplit(".", 1)[0]
        for kind in ("mask", "overlay"):
            assert np.array_equal(np.asarray(Image.open(alone / f"{stem}_{kind}.png")),
                                  np.asarray(Image.open(tmp_path / "all" / f"{stem}_{kind}.png")))
        pd.testing.assert_frame_equal(pd.read_csv(alone / "readout.csv"),
                                      table[table["name"] == name].reset_index(drop=True), check_dtype=False)
    # a photo that does not decode, among the first chunk's: named, left out, the rest written
    (photos / "a_broken.jpg").write_bytes(b"not a jpeg")
    assert cli.predict(["--checkpoint", str(model), str(photos), "--out", str(tmp_path / "again"),
                        "--batch-size", "2", "--readout"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("skipped: ")] == [
        f"skipped: {photos / 'a_broken.jpg'}: cannot be decoded as an image"]
    assert f"error: 9 of 10 photos written to {tmp_path / 'again'}; 1 could not be decoded" in err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "readout.csv"), table)
    for name in table["name"]:
        stem = name.rsplit(".", 1)[0]
        assert np.array_equal(np.asarray(Image.open(tmp_path / "again" / f"{stem}_mask.png")),
                              np.asarray(Image.open(tmp_path / "all" / f"{stem}_mask.png")))
