"""Datasets of cassette photos and masks: discovery, validation, loading, packing, the torch Dataset.

Layouts (``DIR`` is ``data.path``, a local folder or a URI such as ``s3://bucket/data``):

- original layout: ``DIR/train_images/NAME.jpg`` with ``DIR/train_masks/NAME_mask.gif``;
  optional ``DIR/val_images`` + ``DIR/val_masks`` (and ``test_images`` + ``test_masks``) give
  explicit validation (and test) sets;
- generic layout: ``DIR/images/NAME.*`` with ``DIR/masks/NAME.*`` (or ``NAME_mask.*``);
  ``DIR/train/``, ``DIR/val/`` and ``DIR/test/`` each holding a layout give an explicit split;
- packed: ``FILE.parquet`` written by ``python -m lfa_ray.data pack DIR FILE.parquet`` (one row
  per pair: name, split, the image's and the mask's encoded bytes and file names, width, height),
  so every node of a cluster reads one object instead of a folder of small files. ``pack --size N``
  stores each photo already resized to N x N (a PNG) with its mask's coverage at N (``coverage``,
  N*N bytes, :func:`lfa_ray.augment.resize`) and ``size`` N: training at N (or less) decodes a small
  PNG instead of the original photo.

Without explicit sets, a seeded random split (``data.val_fraction``, ``data.test_fraction``,
``data.split_seed``) is taken. The test set is never used for selection. A mask pixel that is not zero is foreground.

Command line: ``python -m lfa_ray.data check DIR | synth OUT [--n N] [--seed S] [--target T]
| pack DIR OUT.parquet``.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m lfa_ray.data: the command, run before this copy defines anything,
    from lfa_ray.cli import data  # so the module's state exists once (as lfa_ray.data)

    raise SystemExit(data())

import io
import random
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import UnidentifiedImageError

from lfa_ray.augment import resize, train_transform, val_transform
from lfa_ray.errors import UserError
from lfa_ray.images import HALF, IMAGE_EXTS, Photo, read_mask, read_photo
from lfa_ray.storage import Location, locate
from lfa_ray.synth import TRUTH_SUFFIX

LAYOUTS = [("train_images", "train_masks"), ("images", "masks")]
MAX_LISTED = 5
PACKED_SUFFIX = ".parquet"
PACKED_COLUMNS = ["name", "split", "image", "mask", "image_file", "mask_file", "width", "height"]
SIZED_COLUMNS = ["coverage", "size"]  # a pack written with --size N


# -- discovery -------------------------------------------------------------------------------

@dataclass(frozen=True)
class InMemoryFile:
    """One image or mask already in memory (a packed dataset's row, or a file read once)."""
    label: str  # for messages: where it came from
    name: str  # its file name
    data: bytes

    def __str__(self) -> str:
        return self.label

    def read_bytes(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class Pair:
    name: str
    image: Location | InMemoryFile
    mask: Location | InMemoryFile
    readout: Location | InMemoryFile | None = None  # the read-out's truth (JSON beside the mask), if any
    coverage: bytes | None = None  # a sized pack's mask coverage at its size (N*N uint8; image is N x N)


def _stem_suffix(name: str) -> tuple[str, str]:
    stem, dot, suffix = name.rpartition(".")
    return (stem, f".{suffix}") if dot and stem else (name, "")


def _images_by_stem(directory: Location) -> dict[str, Location]:
    out = {}
    for f in directory.files():
        stem, suffix = _stem_suffix(f.name)
        if suffix.lower() in IMAGE_EXTS:
            out[stem] = f
    return out


def _pair_folder(images_dir: Location, masks_dir: Location) -> tuple[list[Pair], list[str]]:
    images = _images_by_stem(images_dir)
    masks = _images_by_stem(masks_dir)
    truths = {f.name: f for f in masks_dir.files() if f.name.endswith(TRUTH_SUFFIX)}
    pairs, errors, used = [], [], set()
    for stem, image in images.items():
        mask_stem = f"{stem}_mask" if f"{stem}_mask" in masks else stem
        if mask_stem in masks:
            pairs.append(Pair(stem, image, masks[mask_stem], truths.get(f"{stem}{TRUTH_SUFFIX}")))
            used.add(mask_stem)
        else:
            errors.append(f"{image}: no mask; add {masks_dir}/{stem}_mask.<ext> (or {stem}.<ext>) or remove the image")
    for stem, mask in masks.items():
        if stem not in used:
            errors.append(f"{mask}: mask without an image; add {images_dir}/{stem.removesuffix('_mask')}.<ext> "
                          f"or remove it")
    return pairs, errors


def _find_layout(root: Location) -> tuple[Location, Location] | None:
    for images, masks in LAYOUTS:
        if (root / images).is_dir() and (root / masks).is_dir():
            return root / images, root / masks
    return None


def is_packed(root: Location) -> bool:
    return root.name.endswith(PACKED_SUFFIX)


def _discover_packed(root: Location, light: bool = False) -> "Found":
    import pyarrow.parquet as pq

    if not root.is_file():
        raise UserError(f"{root}: packed dataset not found; pass an existing .parquet file "
                        f"(python -m lfa_ray.data pack DIR {root.name} writes one)")
    try:
        names = pq.read_schema(root.path, filesystem=root.fs).names
        # light: the rows' names and splits, not their photos (a streamed set is read by Ray Data)
        table = pq.read_table(root.path, filesystem=root.fs, columns=[
            c for c in names if not light or c not in ("image", "mask", "coverage", "readout")])
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise UserError(f"{root}: not a readable Parquet file ({str(exc).splitlines()[0]}); "
                        f"write it with python -m lfa_ray.data pack") from None
    missing = [c for c in PACKED_COLUMNS if c not in names]
    if missing:
        raise UserError(f"{root}: not a packed lfa_ray dataset (no column {', '.join(missing)}); "
                        f"write it with python -m lfa_ray.data pack")
    pairs: dict[str, list[Pair]] = {"train": [], "val": [], "test": [], "": []}
    columns = [c for c in PACKED_COLUMNS[:6] + ["readout", *SIZED_COLUMNS] if c in table.column_names]
    sizes = set()
    for row in table.select(columns).to_pylist():
        truth = row.get("readout")
        sizes.add(row.get("size"))
        pairs[row["split"]].append(Pair(
            row["name"], InMemoryFile(f"{root}:{row['image_file']}", row["image_file"], row.get("image", b"")),
            InMemoryFile(f"{root}:{row['mask_file']}", row["mask_file"], row.get("mask", b"")),
            None if truth is None else InMemoryFile(f"{root}:{row['name']}{TRUTH_SUFFIX}",
                                                    f"{row['name']}{TRUTH_SUFFIX}", truth.encode()),
            row.get("coverage")))
    if not (pairs["train"] or pairs[""]):
        raise UserError(f"{root}: packed dataset has no training images; pack a folder that has some")
    if len(sizes) > 1:
        raise UserError(f"{root}: rows packed at different sizes ({sorted(sizes, key=str)}); pack the dataset again")
    return Found(pairs["train"] + pairs[""] if pairs["val"] else pairs[""] + pairs["train"],
                 pairs["val"] or None, pairs["test"] or None, root.uri, sizes.pop())


@dataclass
class Found:
    """A dataset's pairs: those to split at random, and the explicit validation and test sets (or None)."""
    pairs: list[Pair]
    val: list[Pair] | None = None
    test: list[Pair] | None = None
    root: str = ""
    packed_size: int | None = None  # a pack written with --size N: N

    def check_size(self, size: int, key: str = "data.image_size") -> None:
        """Refuse to train (or pack) a sized pack above the size its photos were stored at."""
        if self.packed_size is not None and size > self.packed_size:
            raise UserError(f"{self.root}: packed at {self.packed_size} px, but {key} is {size}; "
                            f"pack the original photos again with --size {size}, or train at "
                            f"{self.packed_size} px or less")


def _split_folder(root: Location, name: str) -> tuple[Location, Location] | None:
    """The explicit ``name`` split (val or test) of a dataset: ``NAME_images/`` + ``NAME_masks/``
    (original layout) or a ``NAME/`` folder holding a layout."""
    if (root / f"{name}_images").is_dir():
        return root / f"{name}_images", root / f"{name}_masks"
    if (root / name).is_dir():
        layout = _find_layout(root / name)
        if layout is None:
            raise UserError(f"{root / name}: {name} folder without images/ + masks/ (or {name}_images/ + "
                            f"{name}_masks/); add them or remove the folder")
        return layout
    return None


def discover(root: str | Location, light: bool = False) -> Found:
    """Pair images with masks under ``root``, with its explicit validation and test sets if it has them.
    ``light``: a packed set's pairs without their bytes (names, files and splits only)."""
    root = locate(root)
    if is_packed(root):
        return _discover_packed(root, light)
    if root.is_file():
        raise UserError(f"{root}: a file, not a dataset; pass the folder that holds train_images/ + train_masks/ "
                        f"(or a packed {PACKED_SUFFIX}) to --data")
    if not root.is_dir():
        raise UserError(f"{root}: data folder not found; pass an existing folder (or a packed .parquet) to --data")
    train_layout = _find_layout(root / "train") if (root / "train").is_dir() else _find_layout(root)
    if train_layout is None:
        raise UserError(f"{root}: no images found; expected train_images/ + train_masks/ "
                        f"or images/ + masks/ (see docs/data.md)")
    pairs, errors = _pair_folder(*train_layout)
    found = Found(pairs, root=root.uri)
    for name, what in (("val", "validation"), ("test", "test")):
        layout = _split_folder(root, name)
        if layout is None:
            continue
        if not layout[1].is_dir():
            raise UserError(f"{layout[0]}: {what} images without {layout[1]}; add the masks folder")
        explicit, more = _pair_folder(*layout)
        errors += more
        if not explicit and not more:
            raise UserError(f"{layout[0]}: {what} folder has no images; add some or remove the folder")
        setattr(found, name, explicit)
    _raise_all(errors)
    if not pairs:
        raise UserError(f"{train_layout[0]}: no images (.png .jpg .heic .gif .tif .bmp .webp); add some or fix --data")
    return found


def _raise_all(errors: list[str]) -> None:
    if errors:
        more = f"\n  ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
        raise UserError(f"{len(errors)} problem(s) in the data:\n  " + "\n  ".join(errors[:MAX_LISTED]) + more)


def split(found: Found, val_fraction: float, seed: int, test_fraction: float = 0.0) -> "Splits":
    """The explicit sets where there are some, else a seeded random split of the other pairs: the
    first ``val_fraction`` validation (the original's 80/20 with seed 42 by default), the next
    ``test_fraction`` test (at least one image when asked for), the rest training."""
    order = list(found.pairs)
    random.Random(seed).shuffle(order)
    n_val = 0 if found.val is not None else int(round(len(order) * val_fraction))
    n_test = 0 if found.test is not None or not test_fraction else max(1, int(round(len(order) * test_fraction)))
    val = found.val if found.val is not None else order[:n_val]
    test = found.test if found.test is not None else order[n_val:n_val + n_test]
    train = order[n_val + n_test:]
    if not train or not val:
        raise UserError(f"{len(found.pairs)} image(s) cannot be split with data.val_fraction={val_fraction}"
                        + (f" and data.test_fraction={test_fraction}" if n_test else "")
                        + ": one side would be empty; add images or change the fractions")
    return Splits(train, val, test, found.val is not None, found.test is not None, found)


# -- decoding --------------------------------------------------------------------------------

def _decode_photo(pair: Pair, reduce_to: int | None = None) -> Photo:
    try:
        return read_photo(pair.image, reduce_to)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UserError(f"{pair.image}: cannot be decoded as an image; replace or remove it") from None


def decode_pair(pair: Pair, reduce_to: int | None = None) -> tuple[Photo, np.ndarray]:
    """The pair's photo (decoded reduced towards ``reduce_to`` where that is faster) and its mask at
    the photo's displayed size; a mask drawn on the stored pixels of a rotated photo is rotated with it."""
    photo = _decode_photo(pair, reduce_to)
    try:
        mask = read_mask(pair.mask)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UserError(f"{pair.mask}: cannot be decoded as an image; replace or remove it") from None
    oriented = photo.orient(mask)
    if oriented is None:
        w, h = photo.size
        raise UserError(f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but {pair.image.name} is "
                        f"{w}x{h}" + (" as displayed (EXIF orientation applied)" if photo.orientation != 1 else "")
                        + "; masks must match their image's size")
    return photo, oriented


def load_pairs(pairs: list[Pair], size: int | None) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple]]:
    """Decode and check every pair (collecting all problems), resized to ``size`` (None: only checked).

    Also returns, per pair, its original ``(width, height, foreground fraction)`` as displayed.
    """
    images, masks, stats, errors = [], [], [], []
    for pair in pairs:
        try:
            image, mask, stat = sized(pair, size)
        except UserError as exc:
            errors.append(str(exc))
            continue
        stats.append(stat)
        if size is not None:
            images.append(image)
            masks.append(mask)
    _raise_all(errors)
    return images, masks, stats


def sized(pair: Pair, size: int | None) -> tuple[np.ndarray | None, np.ndarray | None, tuple]:
    """One pair decoded, checked and resized to ``size`` (None: only checked): the image (uint8
    size x size x 3), its mask's coverage (uint8 size x size) and the photo's ``(width, height,
    foreground fraction)`` as displayed. A sized pack's row is resized from its stored size."""
    if pair.coverage is not None:
        # the stored N x N photo; checking also reads its PNG mask (the coverage at HALF), training
        # (every epoch when streamed) takes the coverage as stored
        photo = decode_pair(pair)[0] if size is None else _decode_photo(pair)
        n = photo.pixels.shape[0]
        cover = np.frombuffer(pair.coverage, np.uint8).reshape(n, n)
        if size is None or size == n:
            return photo.pixels, cover, (n, n, float(cover.mean() / 255))
        # area-averaging coverage is the coverage of the area-averaged mask
        share = cv2.resize(cover.astype(np.float32) / 255, (size, size), interpolation=cv2.INTER_AREA)
        return (cv2.resize(photo.pixels, (size, size), interpolation=cv2.INTER_AREA),
                np.round(share * 255).astype(np.uint8), (n, n, float(cover.mean() / 255)))
    # Only checking: the smallest reduced decode still reads (and so checks) the whole file.
    photo, mask = decode_pair(pair, reduce_to=size or 1)
    stat = (*photo.size, float(mask.mean()))
    if size is None:
        return None, None, stat
    # the original project resizes first, so resizing once up front is the same pipeline
    return *resize(photo.pixels, mask, size), stat


@dataclass
class Splits:
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]  # never used for selection: scored once, by lfa_ray.evaluate, on the final model
    explicit_val: bool
    explicit_test: bool = False
    found: Found | None = None  # what they were split from


def with_bytes(root: str | Location, pairs: list[Pair]) -> list[Pair]:
    """``pairs`` of a light look at a pack (:func:`discover`) with their photos' bytes, read for
    those rows alone (a filter on ``name``): a streamed run scores its test split without the
    driver reading the rest of the pack."""
    import pyarrow.parquet as pq

    root = locate(root)
    if not is_packed(root) or not pairs or pairs[0].image.read_bytes():
        return pairs
    names = pq.read_schema(root.path, filesystem=root.fs).names
    table = pq.read_table(root.path, filesystem=root.fs, filters=[("name", "in", [p.name for p in pairs])],
                          columns=[c for c in ("name", "image", "mask", "coverage", "readout") if c in names])
    rows = {row["name"]: row for row in table.to_pylist()}
    return [Pair(p.name, InMemoryFile(p.image.label, p.image.name, rows[p.name]["image"]),
                 InMemoryFile(p.mask.label, p.mask.name, rows[p.name]["mask"]),
                 None if rows[p.name].get("readout") is None else InMemoryFile(
                     f"{root}:{p.name}{TRUTH_SUFFIX}", f"{p.name}{TRUTH_SUFFIX}", rows[p.name]["readout"].encode()),
                 rows[p.name].get("coverage")) for p in pairs]


def resolve_splits(root: str | Location, val_fraction: float, seed: int, test_fraction: float = 0.0,
                   light: bool = False) -> Splits:
    return split(discover(root, light), val_fraction, seed, test_fraction)


def splits_for(cfg, root: str | Location, light: bool = False) -> Splits:
    return resolve_splits(root, cfg.data.val_fraction, cfg.data.split_seed, cfg.data.test_fraction, light)


def check_masks(root: str | Location, stats: list[tuple]) -> int:
    """Refuse a dataset whose masks are all empty (it would train to a perfect, meaningless score);
    note how many are empty when only some are. Returns that count."""
    empty = sum(1 for *_, fg in stats if fg == 0)
    if empty and empty == len(stats):
        raise UserError(f"{root}: all {empty} masks are empty (no foreground pixel); a mask marks the target in "
                        f"white (non-zero) on black: check that the masks folder holds the right files")
    if empty:
        print(f"note: {empty} of {len(stats)} masks in {root} are empty (no foreground pixel); fine for photos "
              f"without the target, otherwise fix those masks")
    return empty


def _summary(splits: Splits, stats: list[tuple]) -> dict:
    sizes: dict[tuple[int, int], int] = {}
    for w, h, _ in stats:
        sizes[(w, h)] = sizes.get((w, h), 0) + 1
    fg = [f for _, _, f in stats]
    return {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
            "explicit_val": splits.explicit_val, "explicit_test": splits.explicit_test,
            "sizes": sizes, "empty_masks": sum(1 for f in fg if f == 0), "foreground_mean": float(np.mean(fg)),
            "foreground_min": float(np.min(fg)), "foreground_max": float(np.max(fg))}


def check(root: str | Location, val_fraction: float = 0.2, seed: int = 42, test_fraction: float = 0.0) -> dict:
    """Validate a dataset fully (pairing, decoding, sizes, split); return a summary."""
    splits = resolve_splits(root, val_fraction, seed, test_fraction)
    stats = load_pairs(splits.train + splits.val + splits.test, size=None)[2]
    check_masks(root, stats)
    return _summary(splits, stats)


@dataclass
class Arrays:
    names: list[str]
    images: np.ndarray  # N x size x size x 3, uint8 RGB
    masks: np.ndarray   # N x size x size, uint8 {0, 1}


@dataclass
class DecodedDataset:
    """A dataset decoded, checked and resized once: what every training worker receives.

    The driver loads it and puts it in Ray's object store; workers map its arrays
    without copying, so a sweep decodes the images once rather than once per trial.
    """
    root: str
    size: int
    train: Arrays
    val: Arrays
    summary: dict


def load(root: str | Location, size: int, val_fraction: float = 0.2, seed: int = 42,
         test_fraction: float = 0.0) -> DecodedDataset:
    """Validate the dataset at ``root`` fully (like :func:`check`) and load its training and
    validation sets resized to ``size`` (the test set is checked, not kept: training never sees it)."""
    splits = resolve_splits(root, val_fraction, seed, test_fraction)
    splits.found.check_size(size)
    images, masks, stats = load_pairs(splits.train + splits.val + splits.test, size)
    check_masks(root, stats)
    n, m = len(splits.train), len(splits.train) + len(splits.val)

    def arrays(pairs: list[Pair], a: int, b: int) -> Arrays:
        return Arrays([p.name for p in pairs], np.stack(images[a:b]), np.stack(masks[a:b]))

    return DecodedDataset(locate(root).uri, size, arrays(splits.train, 0, n), arrays(splits.val, n, m),
                          _summary(splits, stats))


def load_for(cfg, root: str | Location) -> DecodedDataset:
    return load(root, cfg.data.image_size, cfg.data.val_fraction, cfg.data.split_seed, cfg.data.test_fraction)


# -- torch dataset ---------------------------------------------------------------------------

class SegmentationDataset(torch.utils.data.Dataset):
    """Pre-resized images and masks in memory, augmented per item.

    ``transform`` is an albumentations Compose, seeded afresh for every item from (seed, epoch,
    index), so an epoch's augmentation is the same whichever loader process draws an item, and a
    resumed run repeats the uninterrupted one exactly. The epoch comes with the index (``(epoch,
    i)``, from :class:`lfa_ray.loop.EpochSampler`: a persistent loader process holds its own copy
    of the dataset, so nothing set on it would reach that copy); a plain index is epoch 0.
    """

    def __init__(self, arrays: Arrays, transform, seed: int = 0):
        self.names = arrays.names
        self.images, self.masks = arrays.images, arrays.masks  # may be read-only (Ray's object store)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(image 3xHxW, mask 1xHxW), both uint8 (the mask as coverage, 0-255: :func:`lfa_ray.augment.resize`):
        the loop makes them float on the device. ``key``: an index, or ``(epoch, index)``."""
        epoch, i = key if isinstance(key, tuple) else (0, key)
        return augmented(self.transform, self.seed, epoch, i, self.images[i], self.masks[i])


def augmented(transform, seed: int, epoch: int, index: int, image: np.ndarray, mask: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One photo through ``transform`` seeded afresh by (seed, epoch, index): (image 3xHxW, mask
    1xHxW), uint8. The in-memory and the streamed path (:mod:`lfa_ray.stream`) draw alike."""
    rng = np.random.default_rng([seed, epoch, index])  # one stream for all of the item's transforms
    transform.set_random_state(rng, random.Random(int(rng.integers(2**63))))
    # copies: the arrays may be read-only shared memory, and a tensor must not view them
    out = transform(image=image.copy(), mask=mask.copy())
    return out["image"], out["mask"].unsqueeze(0)


def resolve_root(cfg) -> Location:
    """``data.path``, or the cached synthetic set when it is null."""
    if cfg.data.path is not None:
        return locate(cfg.data.path)
    from lfa_ray.synth import synthetic_dataset

    return locate(synthetic_dataset(cfg.data.synthetic_n, cfg.data.target))


def build_datasets(cfg, data: DecodedDataset, rank: int = 0) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Train (augmented, seeded per rank) and validation datasets for a profile."""

    return (SegmentationDataset(data.train, train_transform(cfg.train.aug_strength), seed=cfg.train.seed * 1000 + rank),
            SegmentationDataset(data.val, val_transform()))


# -- packing ---------------------------------------------------------------------------------

def pack(src: str | Location, out: str | Location, size: int | None = None) -> dict:
    """Write the dataset at ``src`` (any layout) into one Parquet file ``out``, checked first.

    The encoded bytes are stored as they are, so decoding a packed image gives the same pixels.
    ``size``: store each photo resized to ``size`` x ``size`` instead (a PNG, with its mask as a PNG
    of the pixels at least half inside and the mask's coverage in ``coverage``), the pixels training
    at that size gets from the original.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, out = locate(src), locate(out)
    if not is_packed(out):
        raise UserError(f"{out}: the packed dataset's name must end in {PACKED_SUFFIX}")
    if out.exists():
        raise UserError(f"{out}: already exists; choose a new OUT or delete it first")
    if size is not None and size < 8:
        raise UserError(f"--size {size}: too small; give the side training uses (data.image_size), e.g. --size 256")
    found = discover(src)
    if size is not None:
        found.check_size(size, "--size")
    labelled = ([(p, "" if found.val is None else "train") for p in found.pairs]
                + [(p, "val") for p in found.val or []] + [(p, "test") for p in found.test or []])
    rows, errors = [], []
    for pair, split_name in labelled:
        # read once
        image_src, mask_src = (InMemoryFile(str(f), f.name, f.read_bytes()) for f in (pair.image, pair.mask))
        try:
            image, cover, (width, height, _) = sized(Pair(pair.name, image_src, mask_src, None, pair.coverage), size)
        except UserError as exc:
            errors.append(str(exc))
            continue
        row = {"name": pair.name, "split": split_name, "image": image_src.data, "mask": mask_src.data,
               "image_file": image_src.name, "mask_file": mask_src.name, "width": width, "height": height,
               "readout": pair.readout.read_bytes().decode() if pair.readout else None}
        if size is not None:
            row.update(image=_png(image[..., ::-1]), mask=_png(np.where(cover >= HALF, 255, 0).astype(np.uint8)),
                       image_file=f"{pair.name}.png", mask_file=f"{pair.name}_mask.png",
                       coverage=cover.tobytes(), size=size)
        rows.append(row)
    _raise_all(errors)
    schema = pa.schema([("name", pa.string()), ("split", pa.string()), ("image", pa.binary()), ("mask", pa.binary()),
                        ("image_file", pa.string()), ("mask_file", pa.string()), ("width", pa.int32()),
                        ("height", pa.int32()), ("readout", pa.string())]
                       + ([("coverage", pa.binary()), ("size", pa.int32())] if size is not None else []))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, row_group_size=64)
    out.write_bytes(buf.getvalue())
    return {"pairs": len(rows), "val": len(found.val or []), "test": len(found.test or []), "bytes": buf.tell(),
            "out": out.uri}


def _png(pixels: np.ndarray) -> bytes:
    """A lossless PNG of uint8 pixels (BGR or gray, as OpenCV writes them)."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(pixels), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return encoded.tobytes()
