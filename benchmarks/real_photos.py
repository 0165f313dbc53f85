"""A model's windows and calls on real cassette photos: the real-photo benchmark.

    python benchmarks/real_photos.py --data DIR --checkpoint PATH [--refine PATH] [--tta] [--out DIR]
    python benchmarks/real_photos.py --data DIR --checkpoint SWEEP --few-shot [--sizes 5 10 all]

``DIR`` is either a real-photo set as annotated by hand (``annotations.json`` beside ``images/``:
per photo its ``name``, ``width``, ``height``, the membrane's 4-corner ``window`` polygon in
continuous pixel coordinates, the by-eye ``call`` and the ``source_repo`` it came from), or any
dataset layout lfa_ray trains on (masks as files), with the calls and groups taken from an
``annotations.json`` in it when there is one. The photos are never copied: the masks of an
annotated set are drawn into a temporary folder (a pixel is inside when at least half of it lies
inside the polygon, 4x supersampled), the photos linked.

Zero-shot (the default): the model of ``--checkpoint`` (any ``--checkpoint`` form; a sweep or run
with a refining model uses it, as ``predict`` does) segments every photo at its own size. It prints
one row per photo (Dice, IoU, whether the window was found: IoU >= 0.5, the read-out's call
against the by-eye one) and the figures: mean and median Dice, windows found, and calls right
among the photos with a call (``unsure`` has none; ``no read`` counts wrong).

``--few-shot``: what a user gets from N labelled photos of their own, starting from the model of
``--checkpoint`` (``train.init_from``) against starting from scratch. The photos are split into
``--folds`` folds by source (photos of one source, a session or a cassette, stay on one side);
for each fold and each N of ``--sizes`` (a number, or ``all``: every photo of the other folds), N
photos of the other folds (spread over their sources, seeded) train a run with the fine-tune
command users are given,

    python -m lfa_ray.train --config tune_configs/finetune.yaml --data N_PHOTOS [--set train.init_from=MODEL]

(window and refining model), and the fold's photos are scored with it. Each photo is scored once
per N and start, by the run that did not see it; the table gives the mean Dice and windows found.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfa_ray import evaluate  # noqa: E402
from lfa_ray.checkpoint import load_model  # noqa: E402
from lfa_ray.data import discover  # noqa: E402
from lfa_ray.infer import load_refiner, readout_layout, refiner_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FOUND_IOU = 0.5  # a window counts as found from this IoU with the annotated one
CALLS = ("positive", "negative", "invalid")  # by-eye calls that count; others (unsure) have none
SUPERSAMPLE = 4


@dataclass
class RealSet:
    root: Path  # a dataset folder lfa_ray reads (the masks drawn, the photos linked)
    calls: dict[str, str]  # name -> by-eye call
    groups: dict[str, str]  # name -> source (photos of one source stay on one side of a split)


def polygon_mask(width: int, height: int, poly: list[list[float]]) -> Image.Image:
    """0/255 mask of a polygon in continuous pixel coordinates ((0, 0) is the top-left pixel's corner):
    a pixel is inside when at least half of it is."""
    big = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    # PIL fills a supersampled pixel when its centre is inside: shift by half a sample
    ImageDraw.Draw(big).polygon([(x * SUPERSAMPLE - 0.5, y * SUPERSAMPLE - 0.5) for x, y in poly], fill=255)
    return big.resize((width, height), Image.BOX).point(lambda v: 255 if v >= 128 else 0)


def load_set(data: Path, scratch: Path) -> RealSet:
    """The set at ``data`` as a dataset folder (an annotated set's masks drawn into ``scratch``)."""
    notes = data / "annotations.json"
    entries = json.loads(notes.read_text()) if notes.is_file() else []
    calls = {e["name"]: e.get("call", "") for e in entries}
    groups = {e["name"]: e.get("source_repo", e["name"]) for e in entries}
    if entries and (data / "images").is_dir() and not (data / "masks").is_dir():
        root = scratch / "set"
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for e in entries:
            photo = next((data / "images").glob(f"{e['name']}.*"))
            os.symlink(photo.resolve(), root / "images" / photo.name)
            polygon_mask(e["width"], e["height"], e["window"]).save(root / "masks" / f"{e['name']}.png")
        return RealSet(root, calls, groups)
    return RealSet(data, calls, groups)


def zero_shot(model, size: int, refiner, layout, pairs, calls: dict[str, str], device, tta: bool = False
              ) -> pd.DataFrame:
    """One row per photo: Dice, IoU, found, the call read and the by-eye call."""
    table = evaluate.evaluate(model, size, pairs, device, layout=layout, tta=tta, refiner=refiner).table
    table["found"] = table["iou"] >= FOUND_IOU
    table["true_call"] = table["name"].map(calls).fillna("")
    return table


def figures(table: pd.DataFrame) -> dict:
    with_call = table[table["true_call"].isin(CALLS)]
    return {"photos": len(table), "dice_mean": float(table["dice"].mean()),
            "dice_median": float(table["dice"].median()), "iou_mean": float(table["iou"].mean()),
            "found": int(table["found"].sum()), "with_call": len(with_call),
            "calls_right": int((with_call["call"] == with_call["true_call"]).sum())}


def summary_line(f: dict) -> str:
    right = f"{f['calls_right']} of {f['with_call']}" if f["with_call"] else "no calls given"
    return (f"mean Dice {f['dice_mean']:.3f} (median {f['dice_median']:.3f}), IoU {f['iou_mean']:.3f}; "
            f"windows found (IoU >= {FOUND_IOU}) {f['found']} of {f['photos']} ({f['found'] / f['photos']:.0%}); "
            f"calls right {right}")


def per_photo_markdown(table: pd.DataFrame) -> str:
    lines = ["| photo | Dice | IoU | found | call | by eye |", "| --- | --- | --- | --- | --- | --- |"]
    for r in table.sort_values("name").itertuples():
        lines.append(f"| {r.name} | {r.dice:.3f} | {r.iou:.3f} | {'yes' if r.found else 'no'} | {r.call} | "
                     f"{r.true_call or '–'} |")
    return "\n".join(lines)


def folds(names: list[str], groups: dict[str, str], k: int) -> list[list[str]]:
    """``names`` in ``k`` folds of about equal size, every source (group) in one fold: the largest
    sources first, each into the fold that has fewest photos so far."""
    by_group: dict[str, list[str]] = {}
    for n in sorted(names):
        by_group.setdefault(groups.get(n, n), []).append(n)
    out: list[list[str]] = [[] for _ in range(k)]
    for _, members in sorted(by_group.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        min(out, key=len).extend(members)
    return out


def pick(pool: list[str], groups: dict[str, str], n: int, seed: int) -> list[str]:
    """``n`` photos of ``pool`` spread over its sources: one of each source in turn (seeded order)."""
    rng = random.Random(seed)
    by_group: dict[str, list[str]] = {}
    for name in sorted(pool):
        by_group.setdefault(groups.get(name, name), []).append(name)
    queues = [rng.sample(m, len(m)) for _, m in sorted(by_group.items())]
    rng.shuffle(queues)
    chosen: list[str] = []
    while len(chosen) < min(n, len(pool)):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop())
    return chosen


def subset(root: Path, names: list[str], out: Path) -> Path:
    """A dataset folder of ``names`` from ``root``'s pairs (links, not copies)."""
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    for pair in discover(str(root)).pairs:
        if pair.name in names:
            os.symlink(Path(pair.image.path).resolve(), out / "images" / pair.image.name)
            os.symlink(Path(pair.mask.path).resolve(), out / "masks" / pair.mask.name)
    return out


def few_shot(real: RealSet, checkpoint: str, sizes: list[str], k: int, scratch: Path, device, profile: Path,
             seed: int = 0) -> pd.DataFrame:
    """One row per (N, start, photo): the photo's Dice and IoU by the run that learnt from N photos of
    the other folds, starting from ``checkpoint`` or from scratch."""
    pairs = discover(str(real.root)).pairs
    names = [p.name for p in pairs]
    rows = []
    for f, held in enumerate(folds(names, real.groups, k)):
        pool = [n for n in names if n not in held]
        held_pairs = [p for p in pairs if p.name in held]
        for size in sizes:
            n = len(pool) if size == "all" else int(size)
            chosen = pick(pool, real.groups, n, seed + f)
            data_dir = subset(real.root, chosen, scratch / f"fold{f}-n{size}")
            for start in ("from the model", "from scratch"):
                name = f"fold{f}-n{size}-{'warm' if start == 'from the model' else 'cold'}"
                cmd = [sys.executable, "-m", "lfa_ray.train", "--config", str(profile), "--data", str(data_dir),
                       "--name", name, "--set", f"storage.path={scratch / 'runs'}"]
                if start == "from the model":
                    cmd += ["--set", f"train.init_from={checkpoint}"]
                t0 = time.time()
                done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{name}: training failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
                run = scratch / "runs" / name
                model, msize, _ = load_model(run, device)
                refiner = load_refiner(refiner_path(None, run), device)
                t = evaluate.evaluate(model, msize, held_pairs, device, refiner=refiner).table
                print(f"fold {f + 1}/{k} ({len(held)} photos), N={len(chosen)} {start}: mean Dice "
                      f"{t['dice'].mean():.3f} ({time.time() - t0:.0f} s)", flush=True)
                for r in t.itertuples():
                    rows.append({"fold": f, "size": size, "n": len(chosen), "start": start, "name": r.name,
                                 "dice": r.dice, "iou": r.iou})
    return pd.DataFrame(rows)


def few_shot_markdown(t: pd.DataFrame, zero: dict | None) -> str:
    lines = ["| photos to learn from (per fold) | start | mean Dice | median Dice | windows found |",
             "| --- | --- | --- | --- | --- |"]
    if zero:
        lines.append(f"| 0 (zero-shot) | the model | {zero['dice_mean']:.3f} | {zero['dice_median']:.3f} | "
                     f"{zero['found']} of {zero['photos']} |")
    for (size, start), g in t.groupby(["size", "start"], sort=False):
        ns = sorted(set(g["n"]))
        lines.append(f"| {size} ({'–'.join(map(str, (ns[0], ns[-1]))) if len(ns) > 1 else ns[0]}) | {start} | "
                     f"{g['dice'].mean():.3f} | {g['dice'].median():.3f} | {int((g['iou'] >= FOUND_IOU).sum())} of "
                     f"{len(g)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="an annotated real-photo set or a dataset folder")
    p.add_argument("--checkpoint", required=True, help="the window model: a sweep, a run, a model.pt")
    p.add_argument("--refine", metavar="CHECKPOINT", help="a refining model, or none (default: the checkpoint's own)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--out", type=Path, help="write per_photo.csv and summary.json here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="readout.KEY=VALUE")
    p.add_argument("--few-shot", action="store_true", help="also fine-tune on N photos of the other folds")
    p.add_argument("--sizes", nargs="+", default=["5", "10", "all"], help="N photos to fine-tune on (default 5 10 all)")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--profile", type=Path, default=REPO / "tune_configs" / "finetune.yaml")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="lfa_ray-real-") as scratch:
        real = load_set(args.data, Path(scratch))
        found = discover(str(real.root))
        pairs = found.pairs + (found.val or []) + (found.test or [])
        model, size, trained_with = load_model(args.checkpoint, device)
        refine = refiner_path(args.refine, args.checkpoint)
        refiner = load_refiner(refine, device)
        layout = readout_layout(trained_with, args.overrides)
        table = zero_shot(model, size, refiner, layout, pairs, real.calls, device, args.tta)
        f = figures(table)
        print(per_photo_markdown(table))
        print(f"\n{args.checkpoint}" + (f" refined by {refine}" if refine else "") + f": {summary_line(f)}",
              flush=True)
        if args.few_shot:
            shots = few_shot(real, args.checkpoint, args.sizes, args.folds, Path(scratch), device, args.profile)
            print("\nfew-shot (" + " ".join(sys.argv[1:]) + "):\n" + few_shot_markdown(shots, f))
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                shots.to_csv(args.out / "few_shot.csv", index=False, float_format="%.4f")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "per_photo.csv", index=False, float_format="%.4f")
        (args.out / "summary.json").write_text(json.dumps(f, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
