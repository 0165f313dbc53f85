"""``python -m lfa_ray.evaluate --checkpoint PATH [--data PATH]``: score a model photo by photo.

Each photo is scored at its own size as displayed (the prediction is scaled up from the
model's input size, as ``predict`` writes it): Dice, IoU and the boundary F1 score (the share of
predicted and true outline pixels within 0.75 % of the image diagonal of each other, Csurka et
al. 2013). Writes ``per_image.csv``, ``summary.md`` (mean, median, 5th percentile, count below
0.5) and ``worst.png`` (overlays of the worst photos: red prediction, green true outline).

Without ``--data`` the model's own dataset and its test split are scored (the split its config
made: ``data.test_fraction``/``data.split_seed`` or an explicit test folder). With ``--data``,
that dataset's explicit test set if it has one, else all of it. ``--split`` chooses otherwise.
The final model of every sweep and training run is scored on its test split this way, once.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np
import pandas as pd
import torch

from lfa_ray.config import Config, config_from_dict
from lfa_ray.data import Pair, decode_pair, discover, resolve_root, splits_for
from lfa_ray.errors import UserError
from lfa_ray.runlog import overlay
from lfa_ray.storage import Location, locate

SPLITS = ("test", "val", "train", "all")
METRICS = ("dice", "iou", "boundary_f1")
TILE = 240  # gallery tile side


# -- scores ----------------------------------------------------------------------------------

def _outline(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return m & (1 - cv2.erode(m, np.ones((3, 3), np.uint8)))


def boundary_f1(pred: np.ndarray, truth: np.ndarray, tolerance: float | None = None) -> float:
    """F1 of outline pixels matched within ``tolerance`` px (default 0.75 % of the diagonal)."""
    bp, bt = _outline(pred), _outline(truth)
    if not bp.any() and not bt.any():
        return 1.0
    if not bp.any() or not bt.any():
        return 0.0
    tol = tolerance if tolerance is not None else max(1.0, 0.0075 * math.hypot(*pred.shape[:2]))
    to_true = cv2.distanceTransform(1 - bt, cv2.DIST_L2, 3)  # distance of every pixel to the true outline
    to_pred = cv2.distanceTransform(1 - bp, cv2.DIST_L2, 3)
    precision = float((to_true[bp > 0] <= tol).mean())
    recall = float((to_pred[bt > 0] <= tol).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Dice, IoU and boundary F1 of two binary masks (an empty prediction of an empty mask scores 1)."""
    p, t = pred > 0, truth > 0
    inter, total, union = (p & t).sum(), p.sum() + t.sum(), (p | t).sum()
    return {"dice": 1.0 if total == 0 else float(2 * inter / total),
            "iou": 1.0 if union == 0 else float(inter / union),
            "boundary_f1": boundary_f1(p, t)}


# -- a dataset -------------------------------------------------------------------------------

@dataclass
class Evaluation:
    table: pd.DataFrame  # one row per photo: name, width, height, true/predicted area, dice, iou, boundary_f1
    tiles: dict[str, np.ndarray] = field(default_factory=dict)  # name -> overlay thumbnail

    def summary(self) -> dict:
        d = self.table["dice"]
        return {"images": len(d), "dice_mean": float(d.mean()), "dice_median": float(d.median()),
                "dice_p5": float(np.percentile(d, 5)), "dice_below_0.5": int((d < 0.5).sum()),
                "iou_mean": float(self.table["iou"].mean()),
                "boundary_f1_mean": float(self.table["boundary_f1"].mean())}


def _thumb(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """An overlay at most TILE px on its long side; the masks may be larger than ``image`` (full size)."""
    h, w = image.shape[:2]
    scale = TILE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = [cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) for m in (truth, pred)]
    return overlay(cv2.resize(image, size, interpolation=cv2.INTER_AREA), *small)


def evaluate(model: torch.nn.Module, size: int, pairs: list[Pair], device: torch.device,
             batch_size: int = 16) -> Evaluation:
    """Score ``model`` (trained at ``size`` px) on ``pairs``, each at its photo's size as displayed."""
    from lfa_ray.predict import predict

    rows, tiles = [], {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        decoded = [decode_pair(p, reduce_to=size) for p in chunk]  # UserError names a broken file
        preds = predict(model, [ph.pixels for ph, _ in decoded], size, device, out_sizes=[ph.size for ph, _ in decoded])
        for pair, (photo, truth), pred in zip(chunk, decoded, preds, strict=True):
            rows.append({"name": pair.name, "width": photo.size[0], "height": photo.size[1],
                         "true_area": float(truth.mean()), "predicted_area": float(pred.mean()),
                         **scores(pred, truth)})
            tiles[pair.name] = _thumb(photo.pixels, truth, pred)
    return Evaluation(pd.DataFrame(rows), tiles)


def gallery(ev: Evaluation, worst: int) -> np.ndarray:
    """The ``worst`` photos by Dice as one image: a grid of overlays, each labelled with name and Dice."""
    picked = ev.table.nsmallest(worst, "dice")
    cols = min(4, len(picked))
    rows = math.ceil(len(picked) / cols)
    grid = np.full((rows * (TILE + 24), cols * TILE, 3), 255, np.uint8)
    for i, row in enumerate(picked.itertuples()):
        tile = ev.tiles[row.name]
        y, x = (i // cols) * (TILE + 24), (i % cols) * TILE
        grid[y + 24:y + 24 + tile.shape[0], x:x + tile.shape[1]] = tile
        cv2.putText(grid, f"{row.name[:22]}  {row.dice:.3f}", (x + 4, y + 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return grid


def write(ev: Evaluation, out: Location, title: str, worst: int = 12) -> dict:
    """``per_image.csv``, ``summary.md`` and ``worst.png`` into ``out``; returns the summary."""
    from PIL import Image

    out.mkdir()
    s = ev.summary()
    (out / "per_image.csv").write_text(ev.table.sort_values("dice").to_csv(index=False, float_format="%.5g"))
    lines = [f"# {title}", "", f"{s['images']} photos, each scored at its own size.", "",
             "| metric | mean | median | 5th percentile |", "| --- | --- | --- | --- |"]
    for m in METRICS:
        col = ev.table[m]
        lines.append(f"| {m} | {col.mean():.4f} | {col.median():.4f} | {np.percentile(col, 5):.4f} |")
    lines += ["", f"Dice below 0.5: {s['dice_below_0.5']} of {s['images']}.", "",
              f"![worst photos](worst.png) — the {min(worst, s['images'])} lowest Dice: red = prediction, "
              f"green = true outline; `per_image.csv` lists every photo, worst first.", ""]
    (out / "summary.md").write_text("\n".join(lines))
    buf = io.BytesIO()
    Image.fromarray(gallery(ev, worst)).save(buf, format="png")
    (out / "worst.png").write_bytes(buf.getvalue())
    return s


def format_summary(s: dict) -> str:
    return (f"Dice mean {s['dice_mean']:.4f}, median {s['dice_median']:.4f}, 5th percentile {s['dice_p5']:.4f}, "
            f"{s['dice_below_0.5']} below 0.5; IoU {s['iou_mean']:.4f}; boundary F1 {s['boundary_f1_mean']:.4f} "
            f"({s['images']} photos)")


def _device(name: str | None = None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def score_test(model_file: Location, cfg: Config, run_dir: Location, step: int, again: bool = False) -> dict | None:
    """Score a run's final model on its data's test split, once: ``run_dir/test/`` and, in the run's
    TensorBoard, ``test_*`` scalars, the worst photos (``test/worst``) and an HParams entry (the
    searched keys' values, measured by best val Dice and test Dice); read back when already there
    unless ``again`` (a new model); None without a test split."""
    from lfa_ray.predict import load_model
    from lfa_ray.runlog import read_metrics, write_events
    from lfa_ray.search import value_of

    saved = run_dir / "test" / "summary.json"
    if saved.is_file() and not again:
        return json.loads(saved.read_text())
    test = splits_for(cfg, resolve_root(cfg)).test
    if not test:
        return None
    device = _device()
    model, size, _ = load_model(model_file, device)
    ev = evaluate(model, size, test, device)
    s = write(ev, run_dir / "test", f"Test split of {run_dir.name}")
    rows = read_metrics(run_dir / "metrics.csv")
    scalars = {f"test_{m}": s[f"{m}_mean"] for m in METRICS}
    if rows:
        scalars["best_val_dice"] = rows[-1]["best_val_dice"]
    write_events(run_dir, step, scalars, images={"test/worst": gallery(ev, 12)},
                 hparams={k: value_of(cfg, k) for k in cfg.tune.search_space})
    saved.write_text(json.dumps(s))
    return s


def _pairs(data: Optional[str], split: Optional[str], cfg: Config) -> tuple[list[Pair], str, Location]:
    root = locate(data) if data else resolve_root(cfg)
    found = discover(root)
    split = split or ("test" if not data or found.test is not None else "all")
    if split == "all":
        pairs = found.pairs + (found.val or []) + (found.test or [])
    else:
        pairs = getattr(splits_for(cfg, root), split)
    if not pairs:
        raise UserError(f"{root}: no {split} set (the model's data.test_fraction is 0 and there is no test "
                        f"folder); pass --split val or --split all")
    return pairs, split, root


def run(checkpoint: str, data: Optional[str] = None, split: Optional[str] = None, out: str = "evaluation",
        worst: int = 12, batch_size: int = 16, device: Optional[str] = None) -> dict:
    """``lfa_ray.evaluate``: score the model of ``checkpoint`` on ``data``'s ``split`` (default: its
    own data's test split; another dataset's test folder, else all of it); writes ``out``; the summary."""
    from lfa_ray.predict import find_model, load_model

    if worst < 1 or batch_size < 1:
        raise UserError("--worst and --batch-size must be at least 1")
    dev = _device(device)
    model, size, trained_with = load_model(checkpoint, dev)
    pairs, split, root = _pairs(data, split, config_from_dict(trained_with))
    print(f"scoring {len(pairs)} photos ({split} of {root}) with {find_model(checkpoint)}")
    ev = evaluate(model, size, pairs, dev, batch_size)
    return write(ev, locate(out), f"{split} of {root}", worst)


if __name__ == "__main__":
    from lfa_ray.cli import evaluate as main

    raise SystemExit(main())
