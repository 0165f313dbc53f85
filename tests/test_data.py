import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lfa_ray import cli, data
from lfa_ray.errors import UserError
from lfa_ray.images import read_mask
from lfa_ray.synth import render, write_synthetic


def _img(path: Path, size=(40, 30), color=(200, 100, 50), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _mask(path: Path, size=(40, 30), box=(5, 5, 20, 15), mode="L", value=255):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = Image.new("L", size, 0)
    m.paste(value, box)
    (m if mode == "L" else m.convert(mode)).save(path)


def original_layout(root: Path, names=("a", "b", "c", "d", "e")) -> Path:
    for n in names:
        _img(root / "train_images" / f"{n}.jpg")
        _mask(root / "train_masks" / f"{n}_mask.gif")
    return root


def test_original_layout_pairs_and_maps_255_to_one(tmp_path):
    root = original_layout(tmp_path / "d")
    found = data.discover(root)
    pairs, val = found.pairs, found.val
    assert [p.name for p in pairs] == ["a", "b", "c", "d", "e"] and val is None
    mask = read_mask(pairs[0].mask)
    assert set(np.unique(mask)) == {0, 1}
    assert mask.sum() == 15 * 10


def test_generic_layout_pairs_by_stem_across_formats(tmp_path):
    root = tmp_path / "g"
    for n, ext in [("x", "png"), ("y", "tif"), ("z", "bmp")]:
        _img(root / "images" / f"{n}.{ext}")
    _mask(root / "masks" / "x.png")
    _mask(root / "masks" / "y_mask.tif")
    _mask(root / "masks" / "z.gif")
    pairs = data.discover(root).pairs
    assert {p.name: p.mask.name for p in pairs} == {"x": "x.png", "y": "y_mask.tif", "z": "z.gif"}


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L"])
def test_any_nonzero_mask_pixel_is_foreground(tmp_path, mode):
    path = tmp_path / f"m.{'png'}"
    _mask(path, mode=mode, value=1 if mode == "L" else 255)
    m = read_mask(path)
    assert m.sum() == 150 and m.max() == 1


def test_rgba_mask_transparent_pixels_are_background(tmp_path):
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[..., :3] = 255  # white everywhere, but only the top half is visible
    arr[:5, :, 3] = 255
    Image.fromarray(arr, "RGBA").save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").sum() == 50


def test_explicit_validation_folders(tmp_path):
    root = original_layout(tmp_path / "d")
    for n in ["v1", "v2"]:
        _img(root / "val_images" / f"{n}.jpg")
        _mask(root / "val_masks" / f"{n}_mask.gif")
    s = data.resolve_splits(root, 0.2, 42)
    assert s.explicit_val and len(s.train) == 5 and [p.name for p in s.val] == ["v1", "v2"]
    other = tmp_path / "tv"
    original_layout(other / "train")
    original_layout(other / "val", names=("q",))
    s = data.resolve_splits(other, 0.2, 42)
    assert s.explicit_val and len(s.train) == 5 and len(s.val) == 1


def test_random_split_is_seeded_and_disjoint(tmp_path):
    root = original_layout(tmp_path / "d", names=[f"n{i}" for i in range(20)])
    a = data.resolve_splits(root, 0.2, 42)
    b = data.resolve_splits(root, 0.2, 42)
    c = data.resolve_splits(root, 0.2, 1)
    assert a.val == b.val and len(a.val) == 4 and len(a.train) == 16
    assert not {p.name for p in a.val} & {p.name for p in a.train}
    assert a.val != c.val


@pytest.mark.parametrize("breakage, fragment", [
    ("missing_dir", "data folder not found"),
    ("empty_dir", "no images found"),
    ("empty_images", "no images (.png"),
    ("unpaired_image", "a.jpg: no mask; add"),
    ("orphan_mask", "zz_mask.gif: mask without an image"),
    ("undecodable", "a.jpg: cannot be decoded as an image"),
    ("size_mismatch", "mask is 20x10 but a.jpg is 40x30"),
    ("one_image", "cannot be split"),
    ("a_file", "a file, not a dataset; pass the folder that holds train_images/"),
    ("all_masks_empty", "all 5 masks are empty (no foreground pixel)"),
])
def test_bad_datasets_are_refused_with_file_and_fix(tmp_path, breakage, fragment):
    root = tmp_path / "d"
    if breakage == "missing_dir":
        root = tmp_path / "nope"
    elif breakage == "empty_dir":
        root.mkdir()
    elif breakage == "empty_images":
        (root / "train_images").mkdir(parents=True)
        (root / "train_masks").mkdir()
    elif breakage == "one_image":
        original_layout(root, names=("a",))
    elif breakage == "a_file":
        root = original_layout(root) / "train_images" / "a.jpg"
    else:
        original_layout(root)
        if breakage == "unpaired_image":
            (root / "train_masks" / "a_mask.gif").unlink()
        elif breakage == "orphan_mask":
            _mask(root / "train_masks" / "zz_mask.gif")
        elif breakage == "undecodable":
            (root / "train_images" / "a.jpg").write_bytes(b"not a jpeg")
        elif breakage == "size_mismatch":
            _mask(root / "train_masks" / "a_mask.gif", size=(20, 10), box=(1, 1, 5, 5))
        elif breakage == "all_masks_empty":
            for n in "abcde":
                _mask(root / "train_masks" / f"{n}_mask.gif", value=0)
    with pytest.raises(UserError) as info:
        data.check(root)
    assert fragment in str(info.value)


def test_some_empty_masks_are_counted_and_noted(tmp_path, capsys):
    root = original_layout(tmp_path / "d")
    _mask(root / "train_masks" / "b_mask.gif", value=0)
    assert data.check(root)["empty_masks"] == 1
    assert "note: 1 of 5 masks in" in capsys.readouterr().out
    assert data.load(root, 16).summary["empty_masks"] == 1


def test_check_lists_every_problem_not_just_the_first(tmp_path):
    root = original_layout(tmp_path / "d")
    for n in "abc":
        (root / "train_masks" / f"{n}_mask.gif").unlink()
    with pytest.raises(UserError, match="3 problem"):
        data.check(root)


def test_data_check_command(tmp_path, capsys, small_dir):
    assert cli.data(["check", str(small_dir)]) == 0
    out = capsys.readouterr().out
    assert "24 pairs" in out and "train 19, val 5" in out and "image sizes: " in out
    assert cli.data(["check", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1


def test_synthetic_is_deterministic_and_masks_are_plausible():
    a_img, a_masks = render(3, 5)
    b_img, b_masks = render(3, 5)
    c_img, _ = render(3, 6)
    assert np.array_equal(a_img, b_img) and not np.array_equal(a_img, c_img)
    window, lines = a_masks["window"], a_masks["lines"]
    assert 0.02 < window.mean() < 0.3  # a read window, not the whole photo
    assert lines.sum() > 0 and (lines & ~window.astype(bool)).sum() <= 0.05 * lines.sum()  # lines inside it
    assert a_img.std() > 20  # a textured photo, not a flat image


def test_synth_command_writes_original_layout_that_loads(tmp_path, capsys):
    out = tmp_path / "s"
    assert cli.data(["synth", str(out), "--n", "6", "--target", "lines"]) == 0
    assert len(list((out / "train_images").glob("*.jpg"))) == 6
    assert len(list((out / "train_masks").glob("*_mask.gif"))) == 6
    s = data.check(out)
    assert s["train"] + s["val"] == 6 and s["foreground_max"] < 0.05  # line masks are thin
    assert cli.data(["synth", str(out), "--n", "2"]) == 2  # never writes into an existing set
    assert "exists" in capsys.readouterr().err


def test_dataset_resizes_and_augments_image_and_mask_together(synth_dir):
    from lfa_ray.augment import train_transform

    ds = data.SegmentationDataset(data.load(synth_dir, 48).train, train_transform(1.0), seed=1)
    x1, y1 = ds[(1, 0)]  # (epoch, index), as the training sampler hands them over
    x2, _ = ds[(1, 0)]
    x3, _ = ds[(2, 0)]
    assert x1.shape == (3, 48, 48) and y1.shape == (1, 48, 48)
    assert x1.dtype == y1.dtype == torch.uint8  # a quarter of float32's bytes through the loader
    values = set(y1.unique().tolist())
    assert {0, 255} <= values and len(values) > 10  # coverage: edges keep their shares through the rotation
    assert np.array_equal(x1.numpy(), x2.numpy()) and not np.array_equal(x1.numpy(), x3.numpy())


def test_zero_strength_is_resize_and_normalize_only(synth_dir):
    from lfa_ray.augment import train_transform, val_transform

    arrays = data.load(synth_dir, 48).train
    a = data.SegmentationDataset(arrays, train_transform(0.0))
    b = data.SegmentationDataset(arrays, val_transform())
    assert np.array_equal(a[(3, 0)][0].numpy(), b[0][0].numpy())
    assert np.array_equal(a[(3, 0)][1].numpy(), b[0][1].numpy())


def test_to_unit_is_the_original_normalisation_bit_for_bit():
    """The loop's on-device x / 255 equals albumentations' Normalize(mean 0, std 1, max 255) on every
    uint8 value, so moving it out of the loader processes changes no model input."""
    import albumentations as A

    from lfa_ray.augment import to_unit

    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1 x 256 x 3
    original = A.Normalize(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), max_pixel_value=255.0)(image=ramp)["image"]
    ours = to_unit(torch.from_numpy(ramp).permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last))
    assert ours.dtype == torch.float32 and ours.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ours, torch.from_numpy(original).permute(2, 0, 1)[None])
    with pytest.raises(TypeError, match="uint8"):
        to_unit(ours)  # float input would be scaled twice


def test_geometry_is_shared_between_image_and_mask():
    """Rotating/flipping a mask-shaped image must give exactly the transformed mask (its coverage)."""
    from lfa_ray.augment import train_transform
    from lfa_ray.images import HALF

    mask = np.zeros((48, 48), np.uint8)
    mask[10:20, 5:30] = 255
    image = np.repeat(mask[..., None], 3, axis=2)
    t = train_transform(1.0, seed=5)
    for _ in range(5):
        out = t(image=image, mask=mask)
        img_fg = out["image"][0] >= HALF
        agree = (img_fg == (out["mask"] >= HALF)).float().mean()
        assert agree > 0.97  # photometric jitter may move a few edge pixels


def test_load_decodes_once_into_read_only_safe_arrays(synth_dir):
    """What workers map from Ray's object store: stacked, resized, split like check(), read-only."""
    loaded = data.load(synth_dir, 40, val_fraction=0.2, seed=42)
    splits = data.resolve_splits(synth_dir, 0.2, 42)
    assert loaded.train.names == [p.name for p in splits.train] and loaded.val.names == [p.name for p in splits.val]
    assert loaded.train.images.shape == (len(splits.train), 40, 40, 3) and loaded.val.masks.shape[1:] == (40, 40)
    assert loaded.summary == data.check(synth_dir, 0.2, 42)
    for a in (loaded.train.images, loaded.train.masks):
        a.setflags(write=False)
    from lfa_ray.augment import train_transform

    ds = data.SegmentationDataset(loaded.train, train_transform(0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on non-writable numpy arrays
        x, y = ds[0]
    assert y.shape == (1, 40, 40) and y.dtype == torch.uint8 and y.max() == 255


def test_a_seeded_test_split_is_disjoint_and_leaves_validation_as_it_was(tmp_path):
    root = original_layout(tmp_path / "d", names=[f"n{i}" for i in range(20)])
    old = data.resolve_splits(root, 0.2, 42)
    s = data.resolve_splits(root, 0.2, 42, test_fraction=0.1)
    assert s.val == old.val and old.test == [] and len(s.test) == 2 and len(s.train) == 14
    names = [{p.name for p in part} for part in (s.train, s.val, s.test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert data.resolve_splits(root, 0.2, 42, test_fraction=0.1).test == s.test  # seeded
    assert data.check(root, 0.2, 42, 0.1)["test"] == 2


def test_explicit_test_folders_in_either_layout(tmp_path):
    root = original_layout(tmp_path / "seed")
    original_layout(tmp_path / "seedtest", names=("t1", "t2"))
    (tmp_path / "seedtest" / "train_images").rename(root / "test_images")
    (tmp_path / "seedtest" / "train_masks").rename(root / "test_masks")
    s = data.resolve_splits(root, 0.2, 42, test_fraction=0.5)  # an explicit set wins over the fraction
    assert s.explicit_test and [p.name for p in s.test] == ["t1", "t2"] and len(s.train) + len(s.val) == 5
    generic = tmp_path / "generic"
    original_layout(generic / "train")
    original_layout(generic / "test", names=("t",))
    s = data.resolve_splits(generic, 0.2, 42)
    assert s.explicit_test and not s.explicit_val and [p.name for p in s.test] == ["t"] and len(s.val) == 1
    (generic / "val").mkdir()
    with pytest.raises(UserError, match=r"val: val folder without images/ \+ masks/"):
        data.discover(generic)


def test_style_families_restrict_the_colours(tmp_path, capsys):
    """plain: neutral cassettes on tables; bold: coloured cassettes on saturated or patterned cloths."""
    saturation = {f: np.mean([cv2.cvtColor(render(5, i, f)[0], cv2.COLOR_RGB2HSV)[..., 1].mean() for i in range(8)])
                  for f in ("plain", "bold")}
    assert saturation["bold"] > saturation["plain"] + 40  # far more saturated
    assert cli.data(["synth", str(tmp_path / "b"), "--n", "3", "--family", "bold"]) == 0
    assert "bold styles" in capsys.readouterr().out and data.check(tmp_path / "b", 0.34)["train"] == 2


@pytest.mark.slow
def test_a_synthetic_set_is_the_same_bytes_drawn_serially_in_processes_or_in_ray_tasks(ray_cluster, tmp_path):
    """Two chunks (16 + 4 photos) each way; the Ray tasks on the cluster's two CPUs return the files."""
    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    sets = {how: files(write_synthetic(tmp_path / how, 20, seed=3, family="bold", how=how))
            for how in ("serial", "processes", "ray")}
    assert len(sets["serial"]) == 60 and "train_images/cassette_00019.jpg" in sets["serial"]
    assert sets["processes"] == sets["serial"] and sets["ray"] == sets["serial"]
    with pytest.raises(ValueError, match="ray, processes, serial or auto"):
        write_synthetic(tmp_path / "other", 2, how="threads")


def test_synthetic_photos_vary_in_framing_and_shape():
    """Portrait and landscape photos of several aspect ratios; the cassette from far to close-up,
    its read window always whole in the frame."""
    shapes, windows = set(), []
    for i in range(40):
        img, masks = render(0, i)
        shapes.add(img.shape[:2])
        windows.append(masks["window"].mean())
        ys, xs = np.nonzero(masks["window"])
        assert ys.min() > 0 and xs.min() > 0 and ys.max() < img.shape[0] - 1 and xs.max() < img.shape[1] - 1
    assert len(shapes) >= 4 and any(h > w for h, w in shapes) and any(w > h for h, w in shapes)
    assert max(windows) > 6 * min(windows)  # far shots and close-ups
