"""Phone photos as they come, written as real files: EXIF orientation, HEIC, bit depths, big JPEGs."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lfa_ray import data, predict
from lfa_ray.errors import UserError
from lfa_ray.images import read_mask, read_photo, scale_mask
from lfa_ray.storage import locate

ORIENTATION = 0x0112


def _scene(w=120, h=80) -> tuple[np.ndarray, np.ndarray]:
    """A photo (dark, with a bright box in its top-left quarter) and its box mask, as stored."""
    image = np.full((h, w, 3), 40, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    image[10:30, 15:45] = 230
    mask[10:30, 15:45] = 255
    return image, mask


def _jpeg(path: Path, image: np.ndarray, orientation: int | None = None, quality: int = 95) -> Path:
    exif = Image.Exif()
    if orientation:
        exif[ORIENTATION] = orientation
    Image.fromarray(image).save(path, quality=quality, exif=exif.tobytes())
    return path


def _rotated_pairs(root: Path, names: str, mask: np.ndarray) -> Path:
    """A generic-layout dataset of the scene stored sideways (EXIF orientation 6), with ``mask`` for each."""
    image, _ = _scene()
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in names:
        _jpeg(root / "images" / f"{name}.jpg", image, orientation=6)
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


def _bright(image: np.ndarray) -> np.ndarray:
    return image.mean(axis=-1) > 135


def test_exif_rotated_photo_is_decoded_as_displayed_and_its_mask_matches(tmp_path):
    image, mask = _scene()
    # orientation 6: the camera was turned; viewers rotate the stored pixels 90° clockwise
    photo = read_photo(locate(_jpeg(tmp_path / "p.jpg", image, orientation=6)))
    assert photo.size == (80, 120) and photo.pixels.shape == (120, 80, 3) and photo.orientation == 6
    displayed = np.rot90(image, k=-1)
    assert np.array_equal(_bright(photo.pixels), _bright(displayed))


@pytest.mark.parametrize("mask_drawn_on", ["displayed", "stored"])
def test_a_pair_with_an_exif_rotated_photo_trains_aligned(tmp_path, mask_drawn_on):
    """A mask drawn on the photo as displayed is used as is; one drawn on its stored pixels (a tool
    that ignored EXIF) matches only after the same rotation, so it is rotated with the photo."""
    _, mask = _scene()
    root = _rotated_pairs(tmp_path / "d", "abcde", np.rot90(mask, k=-1) if mask_drawn_on == "displayed" else mask)
    loaded = data.load(root, size=40, val_fraction=0.2)
    assert data.check(root)["sizes"] == {(80, 120): 5}
    img, m = loaded.train.images[0], loaded.train.masks[0]
    overlap = (_bright(img) & (m > 0)).sum() / max((m > 0).sum(), 1)
    assert overlap > 0.9, overlap  # the mask covers the bright box, not some other part of the photo


def test_a_mask_that_fits_neither_orientation_is_refused_with_the_displayed_size(tmp_path):
    root = _rotated_pairs(tmp_path / "d", "ab", _scene()[1][:50])
    with pytest.raises(UserError, match=r"a.png: mask is 120x50 but a.jpg is 80x120 as displayed \(EXIF"):
        data.check(root, val_fraction=0.5)


def test_heic_photo_is_read(tmp_path):
    image, _ = _scene()
    Image.fromarray(image).save(tmp_path / "p.heic", quality=95)  # pillow-heif registers the format
    photo = read_photo(locate(tmp_path / "p.heic"))
    assert photo.size == (120, 80)
    assert np.abs(photo.pixels.astype(int) - image).mean() < 6  # lossy, but the same picture
    assert (_bright(photo.pixels) == _bright(image)).mean() > 0.98


def test_16_bit_grayscale_and_colour_pngs_keep_their_tones(tmp_path):
    gray = np.full((20, 30), 30000, np.uint16)  # mid-gray in 16 bits; clipping would make it white
    gray[:, :10] = 65535
    Image.fromarray(gray).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    pixels = read_photo(locate(tmp_path / "g16.png")).pixels
    assert pixels.shape == (20, 30, 3)
    assert abs(int(pixels[0, 20, 0]) - round(30000 / 257)) <= 1 and pixels[0, 0, 0] == 255
    bgr = np.zeros((20, 30, 3), np.uint16)
    bgr[..., 2], bgr[..., 1], bgr[..., 0] = 60000, 20000, 1000  # written by OpenCV as B, G, R
    cv2.imwrite(str(tmp_path / "c16.png"), bgr)
    r, g, b = read_photo(locate(tmp_path / "c16.png")).pixels[0, 0]
    assert (abs(int(r) - 233) <= 1, abs(int(g) - 78) <= 1, int(b) <= 4) == (True, True, True)


@pytest.mark.parametrize("mode, color, rgb", [
    ("L", 128, (128, 128, 128)), ("CMYK", (0, 255, 255, 0), (255, 0, 0)), ("P", 3, (40, 90, 200)),
    ("LA", (200, 255), (200, 200, 200)), ("RGBA", (10, 20, 30, 255), (10, 20, 30))])
def test_other_modes_become_rgb(tmp_path, mode, color, rgb):
    path = tmp_path / ("p.jpg" if mode == "CMYK" else "p.png")
    image = Image.new(mode, (16, 12), color)
    if mode == "P":  # index 3 of a palette whose other entries are black
        image.putpalette([0, 0, 0] * 3 + [40, 90, 200] + [0, 0, 0] * 252)
    image.save(path)
    pixels = read_photo(locate(path)).pixels
    assert pixels.shape == (12, 16, 3) and pixels.dtype == np.uint8
    tolerance = 3 if mode == "CMYK" else 0  # a JPEG: lossy
    assert np.abs(pixels.astype(int) - np.array(rgb)).max() <= tolerance, pixels[0, 0]


def test_mask_with_its_own_exif_orientation_is_applied(tmp_path):
    _, mask = _scene()
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    Image.fromarray(mask).save(tmp_path / "m.png", exif=exif.tobytes())
    assert np.array_equal(read_mask(locate(tmp_path / "m.png")), (np.rot90(mask, k=1) > 0).astype(np.uint8))


def test_a_big_jpeg_is_decoded_reduced_to_what_training_needs(tmp_path):
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), (1600, 1200), interpolation=cv2.INTER_CUBIC)
    path = locate(_jpeg(tmp_path / "big.jpg", image, quality=90))
    full, reduced = read_photo(path), read_photo(path, reduce_to=64)
    assert full.pixels.shape == (1200, 1600, 3) and reduced.size == full.size == (1600, 1200)
    assert reduced.pixels.shape == (150, 200, 3)  # 1/8: still at least twice the 64 px it is resized to
    a = cv2.resize(full.pixels, (64, 64), interpolation=cv2.INTER_AREA).astype(int)
    b = cv2.resize(reduced.pixels, (64, 64), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(a - b).mean() < 4.0  # the same training input to within 1.5 % (DCT scaling vs area averaging)
    small = locate(_jpeg(tmp_path / "small.jpg", image[:200, :300]))
    assert read_photo(small, reduce_to=64).pixels.shape == (200, 300, 3)  # not 4x larger: decoded whole


def _quad_mask(w: int, h: int) -> np.ndarray:
    """A slanted window, as a cassette photo's mask draws it."""
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.array([[0.3 * w, 0.35 * h], [0.8 * w, 0.45 * h], [0.78 * w, 0.6 * h], [0.28 * w, 0.5 * h]],
                                 np.int32)], 1)
    return mask


def test_a_mask_shrunk_with_its_photo_stays_on_it():
    """Draw the photo from its mask (255 inside) and shrink both as training does: the mask's
    coverage must be the photo's own pixels, and the 0/1 mask scaled for the read-out must cover
    exactly the pixels that came out at least half bright. OpenCV's nearest neighbour put the mask
    2 px down and right of a 320 x 240 photo shrunk to 64 px."""
    from lfa_ray.augment import resize
    from lfa_ray.images import HALF

    mask = _quad_mask(320, 240)
    image = np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8)
    small_image, coverage = resize(image, mask, 64)
    assert coverage.dtype == np.uint8 and coverage.min() == 0 and coverage.max() == 255
    assert np.abs(coverage.astype(int) - small_image[..., 0]).max() <= 1  # the photo's area average, to rounding
    bright = small_image[..., 0] >= HALF
    binary = scale_mask(mask, (64, 64))
    assert set(np.unique(binary)) == {0, 1}
    assert (bright != binary.astype(bool)).sum() <= 2  # a share of exactly a half may round either way
    ys, xs = np.nonzero(binary)
    wy, wx = np.nonzero(bright)
    assert abs(xs.mean() - wx.mean()) < 0.05 and abs(ys.mean() - wy.mean()) < 0.05


def test_a_mask_enlarged_repeats_each_pixel_in_place():
    mask = _quad_mask(40, 30)
    assert np.array_equal(scale_mask(mask, (120, 90)), np.kron(mask, np.ones((3, 3), np.uint8)))
    assert scale_mask(mask, (40, 30)) is mask


def test_predict_writes_the_mask_at_the_photo_size_as_displayed(tmp_path):
    import torch

    from lfa_ray.checkpoint import state_bytes
    from lfa_ray.config import load_config
    from lfa_ray.model import UNet

    cfg = load_config(None, ["model.features=[4,8]", "data.image_size=32"])
    model = tmp_path / "model.pt"
    torch.manual_seed(0)
    model.write_bytes(state_bytes({"model": UNet(features=[4, 8]).state_dict(), "config": cfg.to_dict()}))
    photos = tmp_path / "photos"
    photos.mkdir()
    image, _ = _scene()
    _jpeg(photos / "turned.jpg", image, orientation=6)
    Image.fromarray(image).save(photos / "phone.heic")
    written = predict.run(str(model), str(photos), str(tmp_path / "out"))
    sizes = {p.name: Image.open(p).size for p in written}
    assert sizes == {"turned_mask.png": (80, 120), "phone_mask.png": (120, 80)}
    assert Image.open(tmp_path / "out" / "turned_overlay.png").size == (80, 120)
