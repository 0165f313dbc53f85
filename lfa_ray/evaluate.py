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

if __name__ == "__main__":  # python -m lfa_ray.evaluate: the command, run before this copy defines anything,
    from lfa_ray.cli import evaluate  # so the module's state exists once (as lfa_ray.evaluate)

    raise SystemExit(evaluate())

import io
import json
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Optional

import cv2
import numpy as np
import pandas as pd
import torch

from lfa_ray import readout
from lfa_ray.config import Config, ReadoutConfig, config_from_dict
from lfa_ray.data import Pair, decode_pair, discover, resolve_root, splits_for, with_bytes
from lfa_ray.errors import UserError
from lfa_ray.images import scale_mask
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
    strips: dict[str, np.ndarray] = field(default_factory=dict)  # name -> read-out strip (with --readout)
    skipped: list[str] = field(default_factory=list)  # photos left out (they did not decode): why, one line each

    def summary(self) -> dict:
        d = self.table["dice"]
        s = {"images": len(d), "dice_mean": float(d.mean()), "dice_median": float(d.median()),
             "dice_p5": float(np.percentile(d, 5)), "dice_below_0.5": int((d < 0.5).sum()),
             "iou_mean": float(self.table["iou"].mean()),
             "boundary_f1_mean": float(self.table["boundary_f1"].mean())}
        if "call" in self.table:
            s["calls"] = {c: int((self.table["call"] == c).sum()) for c in readout.CALLS}
            s["readout"] = readout.score(self.table)
        return s


def _thumb(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """An overlay at most TILE px on its long side; the masks may be larger than ``image`` (full size)."""
    h, w = image.shape[:2]
    scale = TILE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = [scale_mask(m, size) for m in (truth, pred)]
    return overlay(cv2.resize(image, size, interpolation=cv2.INTER_AREA), *small)


def evaluate(model: torch.nn.Module, size: int, pairs: list[Pair], device: torch.device,
             batch_size: int = 16, layout: Optional[ReadoutConfig] = None, tta: bool = False,
             refiner: Optional[tuple] = None) -> Evaluation:
    """Score ``model`` (trained at ``size`` px; with ``refiner``, its windows segmented again in a
    crop: :func:`lfa_ray.infer.segment`) on ``pairs``, each at its photo's size as displayed;
    with ``layout``, also read each test (:mod:`lfa_ray.readout`) and compare with the truth the
    pairs carry (synthetic cassettes)."""
    from lfa_ray.infer import READ_SIDE, PhotoWork, segment

    reduce_to = size if layout is None and refiner is None else max(size, READ_SIDE)
    names = []
    with PhotoWork(batch_size) as work:  # decoding and scoring beside the model
        # a pair decode_pair refuses (its UserError names the file) is left out: work.skipped
        for chunk, decoded in work.decoded(pairs, partial(decode_pair, reduce_to=reduce_to)):
            preds = segment(model, size, [ph.pixels for ph, _ in decoded], device,
                            out_sizes=[ph.size for ph, _ in decoded], tta=tta, refiner=refiner)
            for pair, (photo, truth), pred in zip(chunk, decoded, preds, strict=True):
                work.submit(_score, pair, photo, truth, pred, layout)
                names.append(pair.name)
        scored = work.results()  # per photo, in order: (row, tile, strip or None)
    return Evaluation(pd.DataFrame([row for row, _, _ in scored]),
                      {name: tile for name, (_, tile, _) in zip(names, scored, strict=True)},
                      {name: strip for name, (_, _, strip) in zip(names, scored, strict=True) if strip is not None},
                      work.skipped)


def _score(pair: Pair, photo, truth: np.ndarray, pred: np.ndarray,
           layout: Optional[ReadoutConfig]) -> tuple[dict, np.ndarray, Optional[np.ndarray]]:
    """One photo's row (scores; with ``layout`` its read-out and, for synthetic photos, the truth),
    its gallery tile and its read-out strip."""
    row = {"name": pair.name, "width": photo.size[0], "height": photo.size[1],
           "true_area": float(truth.mean()), "predicted_area": float(pred.mean()), **scores(pred, truth)}
    strip = None
    if layout is not None:
        reading = readout.read(photo.pixels, pred, layout)
        row.update(reading.row())
        if pair.readout is not None:
            row.update(readout.truth_row(_truth(pair)))
        strip = reading.strip
    return row, _thumb(photo.pixels, truth, pred), strip


def _truth(pair: Pair) -> dict:
    try:
        return json.loads(pair.readout.read_bytes())
    except (ValueError, OSError):
        raise UserError(f"{pair.readout}: not a read-out truth file (JSON as lfa_ray.synth writes); "
                        f"fix or remove it") from None


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
    """``per_image.csv``, ``summary.md`` and ``worst.png`` into ``out`` (read-outs: also ``misread.png``,
    the strips of wrongly called photos); returns the summary."""
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
    if "calls" in s:
        lines += ["Calls: " + ", ".join(f"{c} {n}" for c, n in s["calls"].items()) + ".", ""]
        lines += readout.markdown(s["readout"])
    (out / "summary.md").write_text("\n".join(lines))
    _write_png(out / "worst.png", gallery(ev, worst))
    if ev.strips:
        t = ev.table
        wrong = t[t["true_call"].notna() & ~readout.right(t)]["name"] if "true_call" in t else []
        if len(wrong):
            _write_png(out / "misread.png", strip_gallery(ev, list(wrong)[:worst]))
    return s


def _write_png(path: Location, image: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="png")
    path.write_bytes(buf.getvalue())


def strip_gallery(ev: Evaluation, names: list[str]) -> np.ndarray:
    """The read-out strips of ``names``, one under the other, each labelled with its call and truth."""
    width = max((ev.strips[n].shape[1] for n in names if n in ev.strips), default=160) + 240
    rows = []
    for name in names:
        row = ev.table[ev.table["name"] == name].iloc[0]
        strip = ev.strips.get(name)
        tile = np.full((strip.shape[0] if strip is not None else 30, width, 3), 255, np.uint8)
        if strip is not None:
            tile[:, 240:240 + strip.shape[1]] = strip
        text = f"{name[:16]} {row['call']} (true {row.get('true_call', '?')})"
        cv2.putText(tile, text, (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(tile)
    return np.concatenate(rows, axis=0)


def format_summary(s: dict) -> str:
    text = (f"Dice mean {s['dice_mean']:.4f}, median {s['dice_median']:.4f}, 5th percentile {s['dice_p5']:.4f}, "
            f"{s['dice_below_0.5']} below 0.5; IoU {s['iou_mean']:.4f}; boundary F1 {s['boundary_f1_mean']:.4f} "
            f"({s['images']} photos)")
    if "calls" in s:
        text += "\ncalls: " + ", ".join(f"{c} {n}" for c, n in s["calls"].items())
    r = s.get("readout")
    if r:
        tc = "n/a" if r["tc_spearman"] is None else f"{r['tc_spearman']:.4f}"
        text += f"; call accuracy {r['call_accuracy']:.2%} ({r['photos']} with truth), T/C Spearman {tc}"
    return text


def _device(name: str | None = None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def score_test(model_file: Location, cfg: Config, run_dir: Location, step: int, again: bool = False) -> dict | None:
    """Score a run's final model (with its refining model, when the run trained one) on its data's
    test split, once: ``run_dir/test/`` and, in the run's TensorBoard, ``test_*`` scalars, the
    worst photos (``test/worst``) and an HParams entry (the searched keys' values, measured by best
    val Dice and test Dice); read back when already there unless ``again`` (a new model); None
    without a test split."""
    from lfa_ray.checkpoint import load_model, own_refiner
    from lfa_ray.infer import load_refiner
    from lfa_ray.runlog import read_metrics, write_events
    from lfa_ray.search import value_of

    saved = run_dir / "test" / "summary.json"
    if saved.is_file() and not again:
        return json.loads(saved.read_text())
    root = resolve_root(cfg)
    test = with_bytes(root, splits_for(cfg, root, light=True).test)  # a pack's test rows alone
    if not test:
        return None
    device = _device()
    model, size, _ = load_model(model_file, device)
    ev = evaluate(model, size, test, device, refiner=load_refiner(own_refiner(model_file), device))
    if ev.skipped:
        raise UserError(ev.skipped[0])
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
        worst: int = 12, batch_size: int = 16, device: Optional[str] = None,
        readout_sets: Optional[list[str]] = None, tta: bool = False, refine: Optional[str] = None) -> dict:
    """``lfa_ray.evaluate``: score the model of ``checkpoint`` on ``data``'s ``split`` (default: its
    own data's test split; another dataset's test folder, else all of it); writes ``out``; the summary.
    ``readout_sets`` (a list, maybe empty: ``--readout`` with its ``--set readout.KEY=VALUE`` items):
    also read each test with the model's read-out profile and those changes. ``tta``: masks from the
    photo and its flips (:func:`lfa_ray.infer.predict`). ``refine``: a refining model's checkpoint or
    ``none`` (default: the model's own; :func:`lfa_ray.predict.refiner_path`)."""
    from lfa_ray.checkpoint import find_model, load_model
    from lfa_ray.infer import load_refiner, readout_layout, refiner_path

    if worst < 1 or batch_size < 1:
        raise UserError("--worst and --batch-size must be at least 1")
    dev = _device(device)
    model, size, trained_with = load_model(checkpoint, dev)
    refine = refiner_path(refine, checkpoint)
    refiner = load_refiner(refine, dev)
    layout = None if readout_sets is None else readout_layout(trained_with, readout_sets)
    pairs, split, root = _pairs(data, split, config_from_dict(trained_with))
    print(f"scoring {len(pairs)} photos ({split} of {root}) with {find_model(checkpoint)}"
          + (f", refined by {refine}" if refine else ""))
    ev = evaluate(model, size, pairs, dev, batch_size, layout, tta, refiner)
    if ev.table.empty:
        raise UserError(f"none of the {len(pairs)} photos ({split} of {root}) could be decoded (named above)")
    s = write(ev, locate(out), f"{split} of {root}" + (", flip TTA" if tta else "")
              + (", windows refined in a crop" if refine else ""), worst)
    if ev.skipped:
        raise UserError(f"{len(ev.table)} of {len(pairs)} photos scored, written to {out}; "
                        f"{len(ev.skipped)} could not be decoded (named above): replace or remove them")
    return s

