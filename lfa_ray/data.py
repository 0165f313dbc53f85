"""Datasets of cassette photos and masks: discovery, validation, loading, the torch Dataset.

Layouts (``DIR`` is ``data.path``):

- seed layout: ``DIR/train_images/NAME.jpg`` with ``DIR/train_masks/NAME_mask.gif``;
  optional ``DIR/val_images`` + ``DIR/val_masks`` give an explicit validation set;
- generic layout: ``DIR/images/NAME.*`` with ``DIR/masks/NAME.*`` (or ``NAME_mask.*``);
  optional ``DIR/train/`` and ``DIR/val/`` each holding that layout give an explicit split.

Without an explicit validation set, a seeded random split (``data.val_fraction``,
``data.split_seed``) is taken. A mask pixel that is not zero is foreground.

All reading goes through :func:`list_files` and :func:`read_bytes`, so other
storage (URIs) plugs in there without touching the loop.

Command line: ``python -m lfa_ray.data check DIR | synth OUT [--n N] [--seed S] [--target T]``.
"""

from __future__ import annotations

import argparse
import io
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lfa_ray.errors import UserError, cli_entry

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp"}
LAYOUTS = [("train_images", "train_masks"), ("images", "masks")]
MAX_LISTED = 5


# -- storage: the one place that touches files ---------------------------------------------

def list_files(directory: str | Path) -> list[Path]:
    return sorted(p for p in Path(directory).iterdir() if p.is_file() and not p.name.startswith("."))


def read_bytes(path: str | Path) -> bytes:
    return Path(path).read_bytes()


# -- discovery -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    name: str
    image: Path
    mask: Path


def _images_by_stem(directory: Path) -> dict[str, Path]:
    return {p.stem: p for p in list_files(directory) if p.suffix.lower() in IMAGE_EXTS}


def _pair_folder(images_dir: Path, masks_dir: Path) -> tuple[list[Pair], list[str]]:
    images = _images_by_stem(images_dir)
    masks = _images_by_stem(masks_dir)
    pairs, errors, used = [], [], set()
    for stem, image in images.items():
        mask_stem = f"{stem}_mask" if f"{stem}_mask" in masks else stem
        if mask_stem in masks:
            pairs.append(Pair(stem, image, masks[mask_stem]))
            used.add(mask_stem)
        else:
            errors.append(f"{image}: no mask; add {masks_dir}/{stem}_mask.<ext> (or {stem}.<ext>) or remove the image")
    for stem, mask in masks.items():
        if stem not in used:
            errors.append(f"{mask}: mask without an image; add {images_dir}/{stem.removesuffix('_mask')}.<ext> or remove it")
    return pairs, errors


def _find_layout(root: Path) -> tuple[Path, Path] | None:
    for images, masks in LAYOUTS:
        if (root / images).is_dir() and (root / masks).is_dir():
            return root / images, root / masks
    return None


def discover(root: str | Path) -> tuple[list[Pair], list[Pair] | None]:
    """Pair images with masks under ``root``; returns (pairs, explicit validation pairs or None)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: data folder not found; pass an existing folder to --data")
    explicit_val = None
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_layout, val_layout = _find_layout(root / "train"), _find_layout(root / "val")
    else:
        train_layout = _find_layout(root)
        val_layout = (root / "val_images", root / "val_masks") if (root / "val_images").is_dir() else None
    if train_layout is None:
        raise UserError(f"{root}: no images found; expected train_images/ + train_masks/ "
                        f"or images/ + masks/ (see README, 'Data layouts')")
    pairs, errors = _pair_folder(*train_layout)
    if val_layout is not None:
        if not val_layout[1].is_dir():
            raise UserError(f"{val_layout[0]}: validation images without {val_layout[1]}; add the masks folder")
        explicit_val, val_errors = _pair_folder(*val_layout)
        errors += val_errors
    _raise_all(errors)
    if not pairs:
        raise UserError(f"{train_layout[0]}: no images (.png .jpg .gif .tif .bmp); add some or fix --data")
    if explicit_val is not None and not explicit_val:
        raise UserError(f"{val_layout[0]}: validation folder has no images; add some or remove the folder")
    return pairs, explicit_val


def _raise_all(errors: list[str]) -> None:
    if errors:
        more = f"\n  ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
        raise UserError(f"{len(errors)} problem(s) in the data:\n  " + "\n  ".join(errors[:MAX_LISTED]) + more)


def split(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded random split (the seed's 80/20 with seed 42 by default)."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    if not train or not val:
        raise UserError(f"{len(pairs)} image(s) cannot be split with data.val_fraction={val_fraction}: "
                        f"one side would be empty; add images or change data.val_fraction")
    return train, val


# -- decoding --------------------------------------------------------------------------------

def decode_image(path: Path) -> np.ndarray:
    """RGB uint8 HxWx3."""
    with Image.open(io.BytesIO(read_bytes(path))) as img:
        return np.asarray(img.convert("RGB"))


def decode_mask(path: Path) -> np.ndarray:
    """uint8 HxW in {0, 1}: any non-zero pixel (of a visible pixel, for masks with alpha) is foreground."""
    with Image.open(io.BytesIO(read_bytes(path))) as img:
        if img.mode in ("P", "PA", "RGB", "RGBA", "LA", "CMYK", "YCbCr"):
            rgba = np.asarray(img.convert("RGBA"))
            fg = (rgba[..., :3].max(axis=-1) > 0) & (rgba[..., 3] > 0)
        else:  # 1, L, I, I;16, F
            fg = np.asarray(img) > 0
    return fg.astype(np.uint8)


def _decode(pair: Pair, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    try:
        image = decode_image(pair.image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UserError(f"{pair.image}: cannot be decoded as an image; replace or remove it") from None
    try:
        mask = decode_mask(pair.mask)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UserError(f"{pair.mask}: cannot be decoded as an image; replace or remove it") from None
    if image.shape[:2] != mask.shape[:2]:
        raise UserError(f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but {pair.image.name} is "
                        f"{image.shape[1]}x{image.shape[0]}; masks must match their image's size")
    if size is not None:  # the seed resizes first, so resizing once up front is the same pipeline
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, mask


def load_pairs(pairs: list[Pair], size: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Decode and check every pair (collecting all problems), optionally resized to ``size``."""
    images, masks, errors = [], [], []
    for pair in pairs:
        try:
            image, mask = _decode(pair, size)
        except UserError as exc:
            errors.append(str(exc))
            continue
        images.append(image)
        masks.append(mask)
    _raise_all(errors)
    return images, masks


@dataclass
class Splits:
    train: list[Pair]
    val: list[Pair]
    explicit_val: bool


def resolve_splits(root: str | Path, val_fraction: float, seed: int) -> Splits:
    pairs, val = discover(root)
    if val is not None:
        return Splits(pairs, val, True)
    train, val = split(pairs, val_fraction, seed)
    return Splits(train, val, False)


def check(root: str | Path, val_fraction: float = 0.2, seed: int = 42) -> dict:
    """Validate a dataset folder fully (pairing, decoding, sizes, split); return a summary."""
    splits = resolve_splits(root, val_fraction, seed)
    summary = {"train": len(splits.train), "val": len(splits.val), "explicit_val": splits.explicit_val}
    sizes: dict[tuple[int, int], int] = {}
    fg = []
    images, masks = load_pairs(splits.train + splits.val, size=None)
    for image, mask in zip(images, masks):
        sizes[(image.shape[1], image.shape[0])] = sizes.get((image.shape[1], image.shape[0]), 0) + 1
        fg.append(float(mask.mean()))
    summary["sizes"] = sizes
    summary["foreground_mean"] = float(np.mean(fg))
    summary["foreground_min"] = float(np.min(fg))
    summary["foreground_max"] = float(np.max(fg))
    return summary


# -- torch dataset ---------------------------------------------------------------------------

class SegmentationDataset(torch.utils.data.Dataset):
    """Pre-resized images and masks in memory, augmented per item.

    ``transform`` is an albumentations Compose; ``set_epoch`` reseeds it so an
    epoch's augmentation is a function of (seed, epoch), which makes resumed
    runs repeat the uninterrupted run exactly.
    """

    def __init__(self, pairs: list[Pair], size: int, transform, seed: int = 0):
        self.names = [p.name for p in pairs]
        self.images, self.masks = load_pairs(pairs, size)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.transform.set_random_seed(self.seed * 100_003 + epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.transform(image=self.images[i], mask=self.masks[i])
        return out["image"], out["mask"].unsqueeze(0).float()


def resolve_root(cfg) -> Path:
    """``data.path``, or the cached synthetic set when it is null."""
    if cfg.data.path is not None:
        return Path(cfg.data.path).expanduser()
    from lfa_ray.synth import synthetic_dataset

    return synthetic_dataset(cfg.data.synthetic_n, cfg.data.target)


def build_datasets(cfg, root: str | Path, rank: int = 0) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Train (augmented, seeded per rank) and validation datasets for a profile."""
    from lfa_ray.augment import train_transform, val_transform

    splits = resolve_splits(root, cfg.data.val_fraction, cfg.data.split_seed)
    size = cfg.data.image_size
    return (SegmentationDataset(splits.train, size, train_transform(cfg.train.aug_strength),
                                seed=cfg.train.seed * 1000 + rank),
            SegmentationDataset(splits.val, size, val_transform()))


# -- command line ----------------------------------------------------------------------------

def _cmd_check(args: argparse.Namespace) -> None:
    s = check(args.dir, args.val_fraction, args.split_seed)
    split_kind = "explicit validation folder" if s["explicit_val"] else \
        f"random split, val_fraction={args.val_fraction}, seed={args.split_seed}"
    print(f"{args.dir}: {s['train'] + s['val']} pairs, all decode, sizes match")
    print(f"  train {s['train']}, val {s['val']} ({split_kind})")
    sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(s["sizes"].items(), key=lambda kv: -kv[1]))
    print(f"  image sizes: {sizes}")
    print(f"  foreground fraction: mean {s['foreground_mean']:.3f}, "
          f"min {s['foreground_min']:.3f}, max {s['foreground_max']:.3f}")


def _cmd_synth(args: argparse.Namespace) -> None:
    from lfa_ray.synth import write_synthetic

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    try:
        out = write_synthetic(args.out, args.n, seed=args.seed, target=args.target)
    except FileExistsError:
        raise UserError(f"{args.out}: folder exists and is not empty; choose a new OUT") from None
    print(f"wrote {args.n} synthetic cassettes ({args.target} masks) to {out}")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lfa-data", description="Check or make LFA segmentation datasets.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="validate a dataset folder and print counts, sizes, foreground")
    p.add_argument("dir")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--split-seed", type=int, default=42)
    p.set_defaults(func=_cmd_check)
    p = sub.add_parser("synth", help="write synthetic cassette photos in the seed layout")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", choices=["window", "lines"], default="window")
    p.set_defaults(func=_cmd_synth)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
