"""Read-out accuracy on held-out synthetic cassettes: calls and T/C ratios against the drawing's truth.

    python benchmarks/readout.py --checkpoint results/train-default [--n 400] [--seed 202] [--tta]
                                 [--refine results/window-refine] [--family classic|all|plain|bold]

Draws ``--n`` photos (``--seed``; the default sweep trains on seed 0 and the read-out's thresholds
were chosen on seed 101; ``--family``, by default the classic cassette's close-ups the figures of
docs/PERFORMANCE.md were measured on) with 15 % invalid cassettes (no control line) and the usual third each of
absent, faint and strong test lines, written as JPEGs like any synthetic set. Each photo is read
within its true window (the read-out alone) and within the window the model predicts (the product),
and that a second time without snapping its sides onto the membrane's edges (``readout.snap``) and
extending its ends (``readout.extend``), for comparison; with ``--refine``, also within the window
segmented again by a refining model in a crop around it (``lfa_ray.infer.refine``). A call is right when
it is the true one, or "no read" on a photo that does not show the lines its call rests on (the
truth's ``readable``: glare or overexposure washed a line's place out); "every no read wrong" is the
strict figure. Accuracy is also given by the JPEG quality each photo was saved at (drawn from 55 to
95: a phone camera saves at 85-95, a messaging app recompresses lower, which erases the faintest
lines). Prints a markdown table and the confusion tables; ``--out`` keeps the set, the per-photo
CSVs and ``misread.png``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfa_ray import evaluate, readout  # noqa: E402
from lfa_ray.checkpoint import load_model  # noqa: E402
from lfa_ray.data import decode_pair, discover  # noqa: E402
from lfa_ray.infer import READ_SIDE, load_refiner, readout_layout  # noqa: E402
from lfa_ray.storage import locate  # noqa: E402
from lfa_ray.synth import FAMILIES, write_synthetic  # noqa: E402

INVALID_SHARE = 0.15
QUALITY_BANDS = ((55, 69), (70, 84), (85, 95))  # JPEG qualities: recompressed ... saved by a phone camera


def true_windows(pairs, layout) -> pd.DataFrame:
    rows = []
    for pair in pairs:
        photo, mask = decode_pair(pair, reduce_to=READ_SIDE)
        truth = evaluate._truth(pair)
        rows.append({"name": pair.name, **readout.read(photo.pixels, mask, layout).row(), **readout.truth_row(truth)})
    return pd.DataFrame(rows)


def figures(table: pd.DataFrame) -> dict:
    s = readout.score(table)
    read = table[table["call"] != "no read"]
    right = readout.right(table)
    by_quality = {band: float(right[table["jpeg_quality"].between(*band)].mean()) for band in QUALITY_BANDS}
    return {**s, "read_accuracy": float((read["call"] == read["true_call"]).mean()), "by_quality": by_quality}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="the window model (any lfa_ray --checkpoint form)")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--seed", type=int, default=202)
    p.add_argument("--family", default="classic", choices=FAMILIES,
                   help="the photos' styles (default classic: the photos the read-out's figures were measured on)")
    p.add_argument("--out", type=Path, help="keep the set and the tables here (default: a temporary folder)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="readout.KEY=VALUE",
                   help="change a read-out key of the model's profile (repeatable)")
    p.add_argument("--tta", action="store_true", help="the model's windows with flip test-time augmentation")
    p.add_argument("--refine", metavar="CHECKPOINT", help="a refining model (lfa_ray.refine): one more row")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="lfa_ray-readout-"))
    device = torch.device("cpu")
    model, size, trained_with = load_model(args.checkpoint, device)
    layout = readout_layout(trained_with, args.overrides)
    t0 = time.time()
    root = write_synthetic(out / "heldout", args.n, seed=args.seed, invalid_share=INVALID_SHARE, family=args.family)
    pairs = discover(root).pairs
    unreadable = sum(not evaluate._truth(pair)["readable"] for pair in pairs)
    print(f"{len(pairs)} held-out photos ({args.family} family, seed {args.seed}, {INVALID_SHARE:.0%} invalid, "
          f"{unreadable} not readable) "
          f"in {time.time() - t0:.0f} s")
    t0 = time.time()
    tables = {"true window": ("true", true_windows(pairs, layout))}
    ev = evaluate.evaluate(model, size, pairs, device, layout=layout, tta=args.tta)
    tables[f"model's window ({size} px model{', flip TTA' if args.tta else ''})"] = ("model", ev.table)
    readout.SNAP = False
    tables["… its sides not snapped, its ends not extended"] = (
        "model-unsnapped", evaluate.evaluate(model, size, pairs, device, layout=layout, tta=args.tta).table)
    readout.SNAP = True
    if args.refine:
        refiner = load_refiner(args.refine, device)
        tables[f"… refined in a crop ({refiner[1]} px refining model)"] = (
            "model-refined", evaluate.evaluate(model, size, pairs, device, layout=layout, tta=args.tta,
                                               refiner=refiner).table)
    evaluate.write(ev, locate(out / "model"), f"read-out of {len(pairs)} held-out synthetic photos")
    print(f"read in {time.time() - t0:.0f} s")
    lines = ["| window | photos | call accuracy | every no read wrong | accuracy of photos read | not read "
             "(of them not readable) | T/C vs true ratio (Spearman) | T vs true strength (Spearman) | "
             "accuracy: absent / faint / strong test line | accuracy by JPEG quality: "
             + " / ".join(f"{lo}-{hi}" for lo, hi in QUALITY_BANDS) + " | window Dice |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, (file, table) in tables.items():
        table.to_csv(out / f"{file}-windows.csv", index=False)
        f = figures(table)
        by = f["by_level"]
        lines.append(f"| {name} | {f['photos']} | {f['call_accuracy']:.2%} | {f['strict_accuracy']:.2%} | "
                     f"{f['read_accuracy']:.2%} | {f['not_read']} ({f['declined_unreadable']}) | "
                     f"{f['tc_spearman']:.4f} | {f['test_spearman']:.4f} | "
                     f"{by.get('absent', 0):.2%} / {by.get('faint', 0):.2%} / {by.get('strong', 0):.2%} | "
                     + " / ".join(f"{v:.2%}" for v in f["by_quality"].values())
                     + (f" | {table['dice'].mean():.4f} |" if "dice" in table else " | 1 |"))
    print("\n".join(lines))
    for name, (_, table) in tables.items():
        print(f"\n{name}:\n" + "\n".join(readout.markdown(readout.score(table))[4:4 + 5]))
    print(f"\nfiles in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
