"""lfa_ray's commands: argument parsing and the entry points (``python -m lfa_ray.train`` and the
``lfa-train`` console script both land in :func:`train`, and so on). Every command has
``--version``; ``train`` and ``tune`` share the profile arguments (``--config``, ``--data``,
``--name``, ``--set``, ``--verbose``), they and ``predict``/``evaluate`` ``--print-config``.
The library modules take typed arguments (:class:`~lfa_ray.config.ProfileChoice`, paths, numbers);
only this module parses."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version

import yaml

from lfa_ray.config import Config, ProfileChoice, resolve
from lfa_ray.console import VERBOSE
from lfa_ray.errors import UserError, cli_entry


def package_version() -> str:
    try:
        return version("lfa_ray")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command's parser, with ``--version``."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--version", action="version", version=f"%(prog)s (lfa_ray {package_version()})")
    return p


def add_print_config(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--print-config", action="store_true", help=f"print {what} as YAML and exit")


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The profile arguments of ``train`` and ``tune``."""
    p.add_argument("--config", help="profile YAML (default: tune_configs/default.yaml, else the built-in defaults)")
    p.add_argument("--data", help="dataset folder (overrides data.path; default: synthetic cassettes)")
    p.add_argument("--name", help="run name under storage.path (default: derived from the profile)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile key, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--verbose", action="store_true", help="also show Ray's own console output")
    add_print_config(p, "the resolved profile (after --config, --set and --data)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model arguments of ``predict`` and ``evaluate``."""
    p.add_argument("--checkpoint", required=True, help="sweep folder, run folder, model.pt or checkpoint folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--readout", action="store_true",
                   help="also read each test: control/test lines, T/C ratio, positive/negative/invalid")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="readout.KEY=VALUE",
                   help="with --readout: change a read-out key of the model's profile (repeatable)")
    p.add_argument("--tta", action="store_true",
                   help="average the model over the photo and its flips (4x the compute, truer window edges)")
    p.add_argument("--refine", metavar="CHECKPOINT",
                   help="the refining model that segments the window again in a crop around the one --checkpoint "
                        "finds (default: the one trained with --checkpoint's model, if any; none: no refining)")
    add_print_config(p, "the profile the model was trained with")


def readout_sets(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[str] | None:
    """``--readout``'s ``--set`` items (None without ``--readout``)."""
    if args.overrides and not args.readout:
        p.error("--set changes the read-out; add --readout")
    return args.overrides if args.readout else None


def print_model_config(args: argparse.Namespace) -> bool:
    """With ``--print-config``: print the profile ``--checkpoint``'s model was trained with; True if so."""
    if not args.print_config:
        return False
    import torch

    from lfa_ray.checkpoint import load_model

    print_config(load_model(args.checkpoint, torch.device("cpu"))[2])
    return True


def show_ray_output(args: argparse.Namespace) -> None:
    if args.verbose:
        os.environ[VERBOSE] = "1"  # read by every process of the job


def print_config(cfg: Config | dict) -> None:
    raw = cfg.to_dict() if isinstance(cfg, Config) else cfg
    sys.stdout.write(yaml.safe_dump(raw, sort_keys=False))


def choice(args: argparse.Namespace) -> ProfileChoice:
    return ProfileChoice(args.config, args.data, list(args.overrides))


# -- the commands ------------------------------------------------------------------------------

@cli_entry
def train(argv: list[str] | None = None) -> None:
    from lfa_ray import train as training

    p = parser("lfa-train", "Train the LFA UNET with Ray Train.")
    add_common_args(p)
    p.add_argument("--resume-from", metavar="PATH",
                   help="a run folder to continue, or a checkpoint_epoch_* folder to start from")
    p.add_argument("--reset", action="store_true", help="delete an existing run of this name and start fresh")
    args = p.parse_args(argv)
    if args.print_config:  # with --resume-from: the run's own settings
        return print_config(training.plan(choice(args), args.name, args.resume_from, args.reset).cfg
                            if args.resume_from else resolve(choice(args)))
    show_ray_output(args)
    training.run(training.plan(choice(args), args.name, args.resume_from, args.reset))


@cli_entry
def tune(argv: list[str] | None = None) -> None:
    from lfa_ray import tune as tuning

    p = parser("lfa-tune", "Tune the LFA UNET with Ray Tune (TPE + ASHA).")
    add_common_args(p)
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep --name")
    p.add_argument("--restart-errored", action="store_true", help="with --resume: rerun errored trials")
    args = p.parse_args(argv)
    if args.print_config and not args.resume:
        return print_config(resolve(choice(args)))
    show_ray_output(args)
    cfg, exp_dir = tuning.plan(choice(args), args.name, args.resume, args.restart_errored)
    if args.print_config:  # the sweep's own config
        return print_config(cfg)
    tuning.run(cfg, exp_dir, resume=args.resume, restart_errored=args.restart_errored)


@cli_entry
def predict(argv: list[str] | None = None) -> None:
    from lfa_ray import predict as prediction

    p = parser("lfa-predict", "Segment cassette photos with a trained model.")
    add_model_args(p)
    p.add_argument("input", nargs="?", help="an image file or a folder of images")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    args = p.parse_args(argv)
    if print_model_config(args):
        return
    if args.input is None:
        p.error("the following arguments are required: input")
    written = prediction.run(args.checkpoint, args.input, args.out, args.batch_size, args.device,
                             readout_sets(p, args), args.tta, args.refine)
    print(f"wrote {len(written)} masks and overlays" + (", read-outs and readout.csv" if args.readout else "")
          + f" to {args.out}")


@cli_entry
def evaluate(argv: list[str] | None = None) -> None:
    from lfa_ray import evaluate as evaluation

    p = parser("lfa-evaluate", "Score a model photo by photo.")
    add_model_args(p)
    p.add_argument("--data", help="dataset folder or packed .parquet (default: the model's own data)")
    p.add_argument("--split", choices=evaluation.SPLITS, help="default: test (all, for --data without a test set)")
    p.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    p.add_argument("--worst", type=int, default=12, help="photos in worst.png (default 12)")
    args = p.parse_args(argv)
    if print_model_config(args):
        return
    s = evaluation.run(args.checkpoint, args.data, args.split, args.out, args.worst, args.batch_size, args.device,
                       readout_sets(p, args), args.tta, args.refine)
    print(evaluation.format_summary(s))
    print(f"wrote per_image.csv, summary.md and worst.png to {args.out}")


@cli_entry
def export(argv: list[str] | None = None) -> None:
    import numpy as np

    from lfa_ray import export as exporting

    p = parser("lfa-export", "Export a trained model (ONNX or TorchScript) with its normalisation baked in.")
    p.add_argument("--checkpoint", required=True, help="sweep folder, run folder, model.pt or checkpoint folder")
    p.add_argument("--format", choices=exporting.FORMATS, required=True)
    p.add_argument("--size", type=int, help="input side in pixels (default: the model's training size)")
    p.add_argument("--out", default="lfa_model", help="output file (default: lfa_model.onnx / lfa_model.pt)")
    args = p.parse_args(argv)
    out, size = exporting.export(args.checkpoint, args.out, args.format, args.size)
    images = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    same = exporting.agreement(args.checkpoint, out, images)
    print(f"wrote {out} ({args.format}): input image uint8 (N, {size}, {size}, 3) RGB, the photo resized to "
          f"{size}x{size}; output logits (N, 1, {size}, {size}), mask = logits > 0; "
          f"masks agree with PyTorch on {same:.4%} of pixels")
    from lfa_ray.checkpoint import find_model, own_refiner
    from lfa_ray.tracking import log_export

    model = find_model(args.checkpoint)
    log_export(model, out)
    refiner = own_refiner(model)
    if refiner is not None:
        print(f"note: this is the window model; its refining model (the second stage) exports with "
              f"--checkpoint {refiner}")


@cli_entry
def report(argv: list[str] | None = None) -> None:
    from lfa_ray import report as reporting

    p = parser("lfa-report", "Reports on finished sweeps.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="sweeps side by side: best configs, trials, final and test scores, time")
    c.add_argument("sweeps", nargs="+", metavar="SWEEP", help="sweep folders (<storage.path>/<name>), paths or URIs")
    c.add_argument("--out", default="comparison", help="where compare.md and compare.png go (default: comparison)")
    args = p.parse_args(argv)
    print(reporting.compare(args.sweeps, args.out))
    print(f"wrote compare.md and compare.png to {args.out}")


@cli_entry
def data(argv: list[str] | None = None) -> None:
    from lfa_ray.labels import FORMATS
    from lfa_ray.synth import FAMILIES

    top = parser("lfa-data", "Check, make, import or pack LFA segmentation datasets.")
    sub = top.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="validate a dataset (folder or packed) and print counts, sizes, foreground")
    p.add_argument("dir")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--split-seed", type=int, default=42)
    p.set_defaults(func=_data_check)
    p = sub.add_parser("synth", help="write synthetic cassette photos in the original layout")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", choices=["window", "lines"], default="window")
    p.add_argument("--family", choices=FAMILIES, default="all",
                   help="all styles (default), plain (neutral cassettes on plain surfaces), bold (coloured cassettes "
                        "on saturated and patterned backgrounds) or classic (the classic cassette in close-ups, as "
                        "the generator drew before real-looking cassettes and far shots)")
    p.add_argument("--invalid-share", type=float, default=0.0,
                   help="share of cassettes drawn without a control line (failed tests), for read-out checks")
    p.set_defaults(func=_data_synth)
    p = sub.add_parser("crops", help="write a refining model's dataset: crops around each photo's window")
    p.add_argument("out")
    p.add_argument("--source", help="the dataset to crop (any layout; default: the default profile's synthetic set)")
    p.add_argument("--per-photo", type=int, default=3, help="crops per photo (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=42)
    p.set_defaults(func=_data_crops)
    p = sub.add_parser("import", help="write a dataset from an annotation tool's export (LabelMe, COCO, CVAT, "
                                      "Label Studio)")
    p.add_argument("format", choices=FORMATS)
    p.add_argument("src", help="the export: a file (COCO JSON, CVAT XML, Label Studio JSON) or a folder of "
                               "LabelMe JSON files")
    p.add_argument("out", help="the dataset folder to write (images/ + masks/)")
    p.add_argument("--label", default="window", help="the label whose shapes are the mask (default: window)")
    p.add_argument("--images", help="the folder holding the photos (default: beside the export)")
    p.set_defaults(func=_data_import)
    p = sub.add_parser("pack", help="write a dataset (any layout) into one Parquet file, local or a URI")
    p.add_argument("dir")
    p.add_argument("out", help="OUT.parquet: a local path or a URI such as s3://bucket/data.parquet")
    p.add_argument("--size", type=int, help="store the photos resized to SIZE x SIZE (the data.image_size training "
                                            "uses, or more), so training decodes small PNGs, not the originals")
    p.set_defaults(func=_data_pack)
    args = top.parse_args(argv)
    args.func(args)


SIZES_SHOWN = 8  # data check names the most common image sizes, and counts the others


def _data_check(args: argparse.Namespace) -> None:
    from lfa_ray.data import check

    s = check(args.dir, args.val_fraction, args.split_seed, args.test_fraction)
    random_split = f"random split, seed {args.split_seed}"
    val_kind = "explicit folder" if s["explicit_val"] else f"{random_split}, fraction {args.val_fraction}"
    kinds = [f"val {s['val']} ({val_kind})"]
    if s["test"]:
        test_kind = "explicit folder" if s["explicit_test"] else f"fraction {args.test_fraction}"
        kinds.append(f"test {s['test']} ({test_kind})")
    print(f"{args.dir}: {s['train'] + s['val'] + s['test']} pairs, all decode, sizes match")
    print(f"  train {s['train']}, " + ", ".join(kinds))
    common = sorted(s["sizes"].items(), key=lambda kv: -kv[1])
    sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in common[:SIZES_SHOWN])
    rest = common[SIZES_SHOWN:]
    if rest:  # phone photos, crops: many sizes, each a few times
        sizes += f" and {len(rest)} other sizes ({sum(n for _, n in rest)} images)"
    print(f"  image sizes: {sizes}")
    print(f"  foreground fraction: mean {s['foreground_mean']:.3f}, "
          f"min {s['foreground_min']:.3f}, max {s['foreground_max']:.3f}")


def _data_synth(args: argparse.Namespace) -> None:
    from lfa_ray.synth import write_synthetic

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    if not 0 <= args.invalid_share <= 1:
        raise UserError(f"--invalid-share must be in [0, 1], got {args.invalid_share}")
    try:
        out = write_synthetic(args.out, args.n, seed=args.seed, target=args.target, family=args.family,
                              invalid_share=args.invalid_share)
    except FileExistsError:
        raise UserError(f"{args.out}: folder exists and is not empty; choose a new OUT") from None
    print(f"wrote {args.n} synthetic cassettes ({args.target} masks, {args.family} styles) to {out}")


def _data_crops(args: argparse.Namespace) -> None:
    from lfa_ray.refine import write_crops

    source = args.source
    if source is None:
        from lfa_ray.data import resolve_root

        source = resolve_root(Config())
    c = write_crops(source, args.out, args.per_photo, args.seed, args.val_fraction, args.test_fraction,
                    args.split_seed)
    print(f"wrote {c['train']} train, {c['val']} val and {c['test']} test crops of {c['photos']} photos of {source} "
          f"to {args.out}" + (f" ({c['skipped']} photos without a window left out)" if c["skipped"] else ""))
    print(f"train a refining model on them: python -m lfa_ray.train --data {args.out} --name window-refine "
          f"--set data.image_size=96 --set refine.image_size=null")


def _data_import(args: argparse.Namespace) -> None:
    from lfa_ray.labels import import_labels, report

    r = import_labels(args.format, args.src, args.out, args.label, args.images)
    print(report(r, args.label, args.format, args.src))


def _data_pack(args: argparse.Namespace) -> None:
    from lfa_ray.data import pack

    r = pack(args.dir, args.out, args.size)
    explicit = [f"{r[k]} {what}" for k, what in (("val", "validation"), ("test", "test")) if r[k]]
    split_kind = f"explicit sets: {', '.join(explicit)}" if explicit else "split at training time"
    at = f" at {args.size} x {args.size} px" if args.size else ""
    print(f"packed {r['pairs']} pairs{at} ({split_kind}) into {r['out']} ({r['bytes'] / 2**20:.1f} MiB)")
