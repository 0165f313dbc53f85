"""Does what is learnt on synthetic cassettes transfer? A style-shift check and a warm-start check.

    python benchmarks/transfer.py [--epochs 25] [--n 600] [--few 20] [--finetune-epochs 5 10 20] [--threads 2]

Style shift: the synthetic generator draws every style by default (``family="all"``) and can be
restricted to one of two style families with the same geometry (framing, rotation, perspective,
occluders, lighting): *plain* (white, grey and cream cassettes on tables, wood, cloth and paper)
and *bold* (blue, green, pink, yellow and dark cassettes on saturated, checked, striped and dotted
backgrounds). A model is trained on each of plain, bold and all, then scored on held-out photos
of plain and bold (Dice at each photo's own size, ``lfa_ray.evaluate``): the off-diagonal cells
are what a change of style costs, the *all* row what domain randomisation buys back.

Warm start: a few labelled photos in a style the pretrained model never saw (``--few`` bold photos
+ a quarter as many for validation), fine-tuned from the plain-family model (``train.init_from``)
vs trained from scratch, scored on held-out bold photos after each of ``--finetune-epochs``.

Everything runs the plain ``lfa_ray.loop`` training with the default profile (64 px, lr 1e-3,
batch 8, aug 1.0, bce+dice, train.amp auto), so it needs no Ray; seeds are fixed.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from lfa_ray import loop
from lfa_ray.checkpoint import init_weights, state_bytes
from lfa_ray.config import load_config
from lfa_ray.data import build_datasets, discover, load
from lfa_ray.evaluate import evaluate
from lfa_ray.synth import write_synthetic

CPU = torch.device("cpu")


def train(cfg, data_dir: Path, *, init: str | None = None, score_at: dict | None = None) -> loop.TrainingSetup:
    """Fit the default loop on ``data_dir`` (80/20 split); ``score_at``: {epoch: pairs} scored on the way."""
    data = load(data_dir, cfg.data.image_size, val_fraction=0.2, seed=cfg.data.split_seed)
    tr, va = build_datasets(cfg, data)
    tl, vl = loop.make_loaders(tr, va, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    parts = loop.build(cfg, CPU)
    if init:
        parts.model.load_state_dict(init_weights(init, cfg.model.features))
    scores = {}

    def on_epoch(r: loop.EpochResult) -> None:
        epoch = r.metrics["epoch"]
        if score_at and epoch in score_at:
            scores[epoch] = dice(loop.evaluated(parts), cfg, score_at[epoch])

    loop.fit(cfg, parts, tl, vl, CPU, on_epoch=on_epoch)
    parts.scores = scores  # type: ignore[attr-defined]
    return parts


def dice(model: torch.nn.Module, cfg, pairs: list) -> float:
    model.eval()
    return float(evaluate(model, cfg.data.image_size, pairs, CPU).table["dice"].mean())


def save(parts: loop.TrainingSetup, cfg, path: Path) -> Path:
    path.write_bytes(state_bytes({"model": loop.evaluated(parts).state_dict(), "config": cfg.to_dict()}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=25, help="epochs of the models trained per family")
    parser.add_argument("--n", type=int, default=600, help="photos per training family")
    parser.add_argument("--few", type=int, default=20, help="training photos of the warm-start check")
    parser.add_argument("--finetune-epochs", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = ["train.early_stopping_patience=1000"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = {f: write_synthetic(root / f, args.n, seed=11 + i, family=f)
                for i, f in enumerate(("plain", "bold", "all"))}
        tests = {f: discover(write_synthetic(root / f"test-{f}", 80, seed=24 + i, family=f)).pairs
                 for i, f in enumerate(("plain", "bold"))}
        few = write_synthetic(root / "few", args.few + args.few // 4, seed=26, family="bold")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads; "
              f"{args.n} training photos per family, 80 test photos per family, {args.epochs} epochs, default profile")

        cfg = load_config(None, [f"train.epochs={args.epochs}", *base])
        models = {}
        print("\nstyle shift: Dice of a model trained on one family, on held-out photos of each")
        print("| trained on | plain test | bold test |\n| --- | --- | --- |")
        for family, data_dir in sets.items():
            parts = train(cfg, data_dir)
            models[family] = save(parts, cfg, root / f"{family}.pt")
            row = [dice(parts.model, cfg, tests[f]) for f in ("plain", "bold")]
            print(f"| {family} | {row[0]:.4f} | {row[1]:.4f} |", flush=True)

        last = max(args.finetune_epochs)
        few_cfg = load_config(None, [f"train.epochs={last}", *base])
        print(f"\nwarm start: {args.few} bold photos (+{args.few // 4} val), Dice on 80 held-out bold photos")
        print("| start | " + " | ".join(f"after {e} epochs" for e in args.finetune_epochs) + " |")
        print("| --- |" + " --- |" * len(args.finetune_epochs))
        for label, init in (("from scratch", None), ("from the plain-family model", str(models["plain"]))):
            parts = train(few_cfg, few, init=init, score_at={e: tests["bold"] for e in args.finetune_epochs})
            print(f"| {label} | " + " | ".join(f"{parts.scores[e]:.4f}" for e in args.finetune_epochs) + " |",
                  flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
