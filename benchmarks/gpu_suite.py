"""The GPU suite: one command that measures lfa_ray's GPU regime on one H100/H200 in under 8 minutes.

    python benchmarks/gpu_suite.py --out DIR [--budget 450] [--parts abcdef] [--smoke]

On a GPU box without Ray (Python 3.12, its own torch), from the repository root:

    mkdir -p /tmp/site && tar xJf .gpu/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
    python3 benchmarks/gpu_suite.py --out $OUT

Parts, in this order (each figure is printed as ``FIGURE ...`` the moment it is measured, and
``DIR/gpu_suite.json`` + ``DIR/gpu_suite.md`` are rewritten after every figure, so a run cut
short still reports what it did; a part that no longer fits in ``--budget`` is skipped):

a. environment: GPU, driver, torch, CUDA, cuDNN, Ray.
b. plain loop, original UNET (widths 64..512), 512 px, batch 8 and 32: training img/s and peak GPU
   memory for fp32, fp16 + GradScaler and bf16 (channels_last, as the loop runs); torch.compile
   of the same for fp16 and bf16 at batch 32 is measured last (part g, figures named b.*), since
   compiling is the least predictable cost (compile seconds reported, warm-up excluded).
c. the reference_512 profile's epoch in a 1-worker TorchTrainer with ``use_gpu`` vs the plain loop on
   the same data: epoch-time ratio, img/s inside Ray, Ray's fixed start/stop seconds; then both again
   at the plain loop's fastest setting, compiled bf16 at batch 32 (target: the TorchTrainer >= 0.97x).
d. the training DataLoader at 512 px (augmentation 1.0, pinned memory): samples/s with 0, 2, 4
   and 8 loader processes vs what the GPU consumes (part b, fp16 batch 8).
e. ``python -m lfa_ray.tune --config tune_configs/gpu.yaml``: up to 8 trials, 4 sharing the GPU, then
   the final retrain, planned into its 300 s ``tune.time_budget_s``; wall time, best val Dice, and
   the aggregate img/s of the trials sharing the GPU (steady epochs: each trial's first is warm-up)
   vs one trial alone: the same config, with its
   3 CPUs and 0.25 GPU, in a 1-worker TorchTrainer with the GPU to itself; and the plain loop's
   step rate at that config, the most the GPU can take, which bounds what sharing can gain. Every
   trial epoch's span is kept in the JSON (``extra.e.spans``).
f. ``lfa_ray.predict --device cuda`` over 240 synthetic photos: img/s, end to end.
g. the compiled figures of part b.
h. part e's final model scored where the CPU default sweep is: 400 held-out synthetic photos of
   this generator and 400 classic close-ups (seed 404), and the real photos of ``--real DIR``
   (default: ``../shared/realset-dev`` beside the checkout, where it exists) with
   ``benchmarks/real_photos.py``. Targets: test Dice (part e) >= 0.95, real Dice >= the CPU
   default's 0.499.

``--smoke`` runs every part with tiny sizes on whatever device there is (CPU here), to check the
suite itself before spending GPU time. Nothing is downloaded.

On an H200 (2026-12-04) the parts took b 65 s, c 104 s, d 14 s, e 323 s (the sweep 266 s, one
trial alone 57 s), f 6 s, g 35 s: about 9 1/2 minutes in all, mostly Ray's fixed cost per
TorchTrainer there (about 30 s; e starts eleven). Within one 15-minute device lease, run it as two
calls, the second straight after the first while the machine is warm: ``--parts aeh``, then
``--parts abdfcg`` with ``--budget`` set from the lease's time left.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks
REPO = Path(__file__).resolve().parents[1]

from lfa_ray import loop  # noqa: E402
from lfa_ray.config import load_config  # noqa: E402

SEED_FEATURES = "[64,128,256,512]"
SYNTH_N = {False: 1000, True: 60}  # synthetic cassettes (generated once, shared by parts c, d, e, f)
TARGETS = {  # issue targets, checked in the table
    "c.trainer_img_s": (">=", 350), "c.epoch_ratio": ("<=", 1.03), "d.loader_vs_gpu": (">=", 2.0),
    "e.sharing_speedup": (">=", 1.5), "e.final_test_dice": (">=", 0.95),
    "c.fastest_ratio": (">=", 0.97), "h.real_dice": (">=", 0.499),  # the CPU default sweep's on the real dev set
}


class Report:
    """Figures as they come: printed, and written to JSON + markdown after each one."""

    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.figures: list[dict] = []
        self.env: dict = {}
        self.extra: dict = {}  # raw measurements behind the figures (JSON only)

    def add(self, key: str, value, unit: str = "", note: str = "") -> None:
        value = round(value, 4) if isinstance(value, float) else value
        self.figures.append({"key": key, "value": value, "unit": unit, "note": note})
        print(f"FIGURE {key} = {value} {unit}  {note}".rstrip(), flush=True)
        self.write()

    def write(self) -> None:
        report = {"env": self.env, "figures": self.figures, "extra": self.extra}
        (self.out / "gpu_suite.json").write_text(json.dumps(report, indent=1))
        lines = ["| figure | value | target | note |", "| --- | --- | --- | --- |"]
        for f in self.figures:
            target = ""
            if f["key"] in TARGETS and isinstance(f["value"], (int, float)):
                op, bound = TARGETS[f["key"]]
                ok = f["value"] >= bound if op == ">=" else f["value"] <= bound
                target = f"{op} {bound} {'✔' if ok else '✘'}"
            lines.append(f"| {f['key']} | {f['value']} {f['unit']} | {target} | {f['note']} |")
        env = ", ".join(f"{k} {v}" for k, v in self.env.items())
        (self.out / "gpu_suite.md").write_text(f"{env}\n\n" + "\n".join(lines) + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


# -- a ---------------------------------------------------------------------------------------

def part_a(rep: Report, device: torch.device) -> None:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version(), "cpus": os.cpu_count()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            env["driver"] = "unknown"
    else:
        env["gpu"] = "none (CPU)"
    try:
        import ray
        env["ray"] = ray.__version__
    except ImportError:
        env["ray"] = "not installed"
    rep.env = env
    print("ENV " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    rep.write()


# -- b ---------------------------------------------------------------------------------------

def step_rate(cfg, device: torch.device, batch: int, size: int, steps: int, warmup: int) -> tuple[float, float, float]:
    """(img/s, peak GiB, warm-up seconds) of ``loop.train_one_epoch`` on a fixed on-device batch."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    parts = loop.build(cfg, device)
    # a loader's batch as the loop receives it on the device: uint8, made float there
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 2, (batch, 1, size, size), dtype=torch.uint8, device=device)
    t = time.perf_counter()
    loop.train_one_epoch(parts, [(x, y)] * warmup, device)  # cuDNN autotune, allocator, compile
    sync(device)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    loop.train_one_epoch(parts, [(x, y)] * steps, device)
    sync(device)
    return steps * batch / (time.perf_counter() - t), peak_gib(device), warm


def _b_settings(smoke: bool) -> tuple[int, str, tuple[int, int], int]:
    return (64, "[4,8]", (4, 8), 3) if smoke else (512, SEED_FEATURES, (8, 32), 20)


def part_b(rep: Report, device: torch.device, smoke: bool) -> dict:
    from lfa_ray.augment import to_unit

    size, features, batches, steps = _b_settings(smoke)
    ramp = torch.arange(256, dtype=torch.uint8)
    rep.add("b.to_unit_exact", torch.equal(to_unit(ramp.to(device)).cpu(), to_unit(ramp)), "",
            f"x / 255 on the {device.type} equals the CPU's (= albumentations' Normalize) on all 256 values")
    rates = {}
    for batch in batches:
        for amp in ("off", "fp16", "bf16"):
            cfg = load_config(None, [f"model.features={features}", f"train.amp={amp}"])
            ips, mem, _ = step_rate(cfg, device, batch, size, steps, warmup=3)
            rates[(amp, batch, False)] = ips
            rep.add(f"b.img_s.{amp}.batch{batch}", ips, "img/s", f"peak {mem:.1f} GiB, eager, channels_last")
    return rates


def part_g(rep: Report, device: torch.device, smoke: bool, rates: dict) -> None:
    size, features, batches, steps = _b_settings(smoke)
    for amp in ("bf16",) if smoke else ("fp16", "bf16"):
        batch = batches[-1]
        cfg = load_config(None, [f"model.features={features}", f"train.amp={amp}", "train.compile=true"])
        ips, mem, warm = step_rate(cfg, device, batch, size, steps, warmup=3)
        rates[(amp, batch, True)] = ips
        eager = rates.get((amp, batch, False))
        rep.add(f"b.img_s.{amp}.batch{batch}.compiled", ips, "img/s",
                f"peak {mem:.1f} GiB; compile + 3 warm-up steps {warm:.0f} s"
                + (f"; x{ips / eager:.2f} vs eager" if eager else ""))


# -- c ---------------------------------------------------------------------------------------

def profile_512(smoke: bool, epochs: int) -> list[str]:
    sets = ["data.path=null", f"train.epochs={epochs}", "train.early_stopping_patience=1000"]
    if smoke:
        sets += ["data.image_size=64", "model.features=[4,8]", "scaling.cpus_per_worker=1",
                 "scaling.use_gpu=auto", "data.loader_workers=0", f"data.synthetic_n={SYNTH_N[True]}"]
    else:
        sets += [f"data.synthetic_n={SYNTH_N[False]}"]
    return sets


def _plain_and_trainer(cfg, data, device: torch.device) -> tuple[dict, dict]:
    """The same run in the plain loop and in a 1-worker TorchTrainer (train_overhead's measures)."""
    import ray
    from train_overhead import in_trainer, plain

    p = plain(cfg, data, device)
    r = in_trainer(cfg, data, gpus_per_worker=1.0 if device.type == "cuda" else 0.0)
    ray.shutdown()
    return p, r


def part_c(rep: Report, device: torch.device, smoke: bool) -> None:
    from lfa_ray.data import load_for, resolve_root

    cfg = load_config(REPO / "tune_configs" / "reference_512.yaml", profile_512(smoke, epochs=3 if smoke else 6))
    data = load_for(cfg, resolve_root(cfg))
    p, r = _plain_and_trainer(cfg, data, device)
    pm, rm = statistics.median(p["walls"][1:]), statistics.median(r["walls"][1:])
    note = (f"reference_512.yaml: {cfg.data.image_size} px, batch {cfg.train.batch_size}, amp {cfg.train.amp}, "
            f"{len(r['walls'])} epochs of {data.summary['train']} images, checkpoints on improvement")
    rep.add("c.trainer_img_s", statistics.median(r["images_per_second"][1:]), "img/s",
            "inside a 1-worker TorchTrainer; " + note)
    rep.add("c.plain_epoch_s", pm, "s", "median epoch wall, epochs 2..")
    rep.add("c.trainer_epoch_s", rm, "s", "median epoch wall incl. report + checkpoint persistence")
    rep.add("c.epoch_ratio", rm / pm, "", "TorchTrainer / plain loop")
    rep.add("c.fixed_s", r["fixed"], "s", f"trainer start {r['start']:.1f} s + stop {r['stop']:.1f} s beyond its "
            f"epochs (fit() to the first epoch's start, the last epoch's end to fit()'s return); "
            f"ray.init {r['ray_init']:.1f} s")
    rep.add("c.worker_setup_s", r["worker_setup"], "s", f"lfa_ray's share of the trainer's start: the worker's "
            f"set-up (data mapped, loaders, model, resume); Ray's: {r['start'] - r['worker_setup']:.1f} s")
    # the same at the plain loop's fastest setting (part g): compiled bf16, batch 32; --smoke runs it
    # eager (compiling twice on a CPU costs a minute; the compiled loop is tested in tests/test_loop.py)
    fast = load_config(REPO / "tune_configs" / "reference_512.yaml",
                       [*profile_512(smoke, epochs=3 if smoke else 6), "train.amp=bf16", "train.batch_size=32",
                        f"train.compile={str(not smoke).lower()}"])
    p, r = _plain_and_trainer(fast, data, device)
    n = data.summary["train"]
    pm, rm = n / statistics.median(p["walls"][1:]), n / statistics.median(r["walls"][1:])
    how = f"{'compiled' if fast.train.compile else 'eager (--smoke)'} bf16, batch 32"
    rep.add("c.fastest.plain_img_s", pm, "img/s", f"the plain loop, {how}: training images / median epoch wall "
            f"(epochs 2..: the first compiles)")
    rep.add("c.fastest.trainer_img_s", rm, "img/s", "the same in a 1-worker TorchTrainer (report + checkpoints)")
    rep.add("c.fastest_ratio", rm / pm, "", f"TorchTrainer / plain loop img/s, {how} (plain loop in part g: 345 "
            f"img/s on a fixed batch, H200 2026-12-04)")


# -- d ---------------------------------------------------------------------------------------

def part_d(rep: Report, device: torch.device, smoke: bool, gpu_rate: float | None) -> None:
    from loader import samples_per_second

    from lfa_ray.data import build_datasets, load_for, resolve_root

    cfg = load_config(REPO / "tune_configs" / "reference_512.yaml", profile_512(smoke, epochs=1))
    tr, va = build_datasets(cfg, load_for(cfg, resolve_root(cfg)))
    chosen = loop.loader_workers("auto", torch.device("cuda"), cfg.scaling.cpus_per_worker)
    for workers in (0, 2) if smoke else (0, 2, 4, 8):
        rate = samples_per_second(tr, va, batch_size=cfg.train.batch_size, workers=workers,
                                  pin_memory=device.type == "cuda")
        versus = f"x{rate / gpu_rate:.2f} of the GPU's {gpu_rate:.0f} img/s (b, fp16 batch 8)" if gpu_rate else ""
        rep.add(f"d.loader_samples_s.{workers}_workers", rate, "samples/s",
                f"{cfg.data.image_size} px, aug 1.0; {versus}"
                + (" <- auto for reference_512" if workers == chosen else ""))
        if workers == chosen and gpu_rate:
            rep.add("d.loader_vs_gpu", rate / gpu_rate, "", f"at data.loader_workers auto = {chosen}")


# -- e ---------------------------------------------------------------------------------------

def _trial_spans(exp: Path, n_train: int) -> list[dict]:
    """Every trial epoch: trial, epoch, start, end (wall clock) and img/s (training images / epoch wall
    incl. validation)."""
    import pandas as pd

    spans = []
    for result in sorted(exp.glob("trial_*/result.json")):
        df = pd.read_json(result, lines=True)
        if "epoch_seconds" not in df:
            continue
        for _, row in df.dropna(subset=["epoch_seconds"]).iterrows():
            spans.append({"trial": result.parent.name, "epoch": int(row["epoch"]),
                          "start": float(row["time"] - row["epoch_seconds"]), "end": float(row["time"]),
                          "img_s": n_train / float(row["epoch_seconds"])})
    return spans


def _shared_rate(spans: list[dict]) -> tuple[float, int]:
    """(mean summed img/s, k) over the moments when the most trials (k) were in a steady epoch together
    (a trial's first epoch is its warm-up: CUDA context, cuDNN autotuning, loader processes)."""
    steady = [s for s in spans if s["epoch"] > 1]
    if not steady:
        return float("nan"), 0
    t0, t1 = min(s["start"] for s in steady), max(s["end"] for s in steady)
    moments = []
    for t in np.arange(t0, t1, 0.05):
        running = [s["img_s"] for s in steady if s["start"] <= t < s["end"]]
        moments.append((len(running), sum(running)))
    k = max(n for n, _ in moments)
    return float(np.mean([total for n, total in moments if n == k])), k


def _alone_rate(cfg, gpus: float, n_train: int) -> float:
    """img/s (same measure as the trials') of one trial with the GPU to itself: the trial's config and
    resources in a 1-worker TorchTrainer, 4 epochs, the first left out."""
    import ray
    from train_overhead import in_trainer

    from lfa_ray.config import config_from_dict
    from lfa_ray.data import load_for, resolve_root

    raw = cfg.to_dict()
    raw["train"].update(epochs=4, early_stopping_patience=1000)
    one = config_from_dict(raw)
    r = in_trainer(one, load_for(one, resolve_root(one)), gpus_per_worker=gpus)
    ray.shutdown()
    return statistics.median(n_train / s for s in r["compute"][1:])


def part_e(rep: Report, device: torch.device, smoke: bool, timeout: float) -> Path | None:
    from lfa_ray.config import load_config as load

    storage = Path(tempfile.mkdtemp(prefix="sweep-", dir=WORK))
    sets = [f"storage.path={storage}"]
    if smoke:
        sets += ["data.image_size=32", "model.features=[4,8]", f"data.synthetic_n={SYNTH_N[True]}",
                 "tune.num_samples=2",
                 "tune.scheduler={max_t: 2, grace_period: 1, reduction_factor: 2}", "final.epochs=2",
                 "scaling.cpus_per_worker=1", "scaling.gpus_per_worker=null", "train.batch_size=8"]
    cmd = [sys.executable, "-m", "lfa_ray.tune", "--config", str(REPO / "tune_configs" / "gpu.yaml"),
           "--name", "gpu-suite", *[a for s in sets for a in ("--set", s)]]
    t = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        rep.add("e.sweep", "timed out", "", f"after {timeout:.0f} s")
        return None
    wall = time.perf_counter() - t
    (rep.out / "sweep.log").write_text(done.stdout[-200_000:] + "\n--- stderr ---\n" + done.stderr[-400_000:])
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        rep.add("e.sweep", f"failed (exit {done.returncode})", "", f"{tail[:300]}; full log in sweep.log")
        return None
    exp = storage / "gpu-suite"
    cfg = load(exp / "config.yaml")
    import pandas as pd

    trials = pd.read_csv(exp / "trials.csv")
    final = pd.read_csv(exp / "final" / "metrics.csv")
    rep.add("e.sweep_wall_s", wall, "s", f"{len(trials)} trials, {int(trials['stopped_early'].sum())} stopped by ASHA, "
            f"+ final retrain of {len(final)} epochs; process start to exit")
    rep.add("e.best_trial_val_dice", float(trials["best_val_dice"].max()), "")
    rep.add("e.final_val_dice", float(final["val_dice"].max()), "", "final retrain, best epoch")
    test = exp / "final" / "test" / "summary.json"
    if test.is_file():
        rep.add("e.final_test_dice", json.loads(test.read_text())["dice_mean"], "", "the final model on the test split")
    devices = [line for line in done.stdout.splitlines() if line.startswith("devices:")]
    rep.add("e.devices", devices[0] if devices else "?", "")
    setups = [float(pd.read_csv(m)["setup_seconds"].iloc[0]) for m in sorted(exp.glob("trial_*/train/metrics.csv"))]
    if setups:
        rep.add("e.trial_worker_setup_s", statistics.median(setups), "s", f"median over {len(setups)} trials of "
                f"lfa_ray's own set-up in a trial's worker before its first epoch (max {max(setups):.1f} s)")
    n_train = int(re.search(r"\((\d+) train,", done.stdout).group(1))  # the sweep's "data: ..." line
    spans = _trial_spans(exp, n_train)
    rep.extra["e.spans"] = spans
    shared, concurrency = _shared_rate(spans)  # gpu.yaml on one GPU: 4
    rep.add("e.shared_img_s", shared, "img/s", f"summed over the {concurrency} trials in a steady epoch at the "
            f"same moments (training images / epoch wall incl. validation)")
    gpus = cfg.scaling.gpus_per_worker if device.type == "cuda" else 0.0
    alone = _alone_rate(cfg, gpus, n_train)
    rep.add("e.alone_img_s", alone, "img/s", f"one trial's config and resources ({cfg.scaling.cpus_per_worker} CPUs, "
            f"{gpus:g} GPU) with the GPU to itself, epochs 2-4; same measure")
    bound, _, _ = step_rate(cfg, device, cfg.train.batch_size, cfg.data.image_size, steps=3 if smoke else 30, warmup=3)
    rep.add("e.gpu_bound_img_s", bound, "img/s", "the plain loop's training step at the trials' size, widths, batch "
            "and precision on a batch already on the GPU: what the GPU can take at most")
    rep.add("e.sharing_speedup", shared / alone, "", f"{concurrency} trials sharing / one alone, "
            f"{cfg.data.image_size} px, batch {cfg.train.batch_size}; at most about {bound / alone:.2f} "
            f"(GPU bound / alone)")
    return exp


# -- f ---------------------------------------------------------------------------------------

def part_f(rep: Report, device: torch.device, smoke: bool, exp: Path | None) -> None:
    from lfa_ray import predict
    from lfa_ray.checkpoint import state_bytes
    from lfa_ray.model import UNet
    from lfa_ray.synth import synthetic_dataset

    n = 24 if smoke else 240
    photos = Path(tempfile.mkdtemp(prefix="photos-", dir=WORK))
    for f in sorted((synthetic_dataset(SYNTH_N[smoke], "window") / "train_images").iterdir())[:n]:
        shutil.copy(f, photos / f.name)
    if exp is not None:
        checkpoint = exp
    else:  # no sweep model: an untrained original UNET at 256 px costs the same to run
        cfg = load_config(REPO / "tune_configs" / "gpu.yaml", ["model.features=[4,8]"] if smoke else [])
        checkpoint = photos.parent / "gpu-suite-model.pt"
        checkpoint.write_bytes(state_bytes({"model": UNet(features=cfg.model.features).state_dict(),
                                            "config": cfg.to_dict()}))
    out = Path(tempfile.mkdtemp(prefix="predictions-", dir=WORK))
    predict.run(str(checkpoint), str(photos), str(out), batch_size=16, device=device.type)  # warm-up
    t = time.perf_counter()
    written = predict.run(str(checkpoint), str(photos), str(out), batch_size=16, device=device.type)
    rate = len(written) / (time.perf_counter() - t)
    rep.add("f.predict_img_s", rate, "img/s", f"{len(written)} photos 320x240: decode, model, mask + overlay PNGs "
            f"({'sweep model' if exp else 'untrained original UNET'})")


# -- h ---------------------------------------------------------------------------------------

HELD_N = {False: 400, True: 8}  # held-out synthetic photos per set


def part_h(rep: Report, device: torch.device, smoke: bool, exp: Path | None, real: Path | None) -> None:
    """Part e's final model scored where the default CPU sweep is (docs/PERFORMANCE.md): held-out
    synthetic photos of this generator and classic close-ups (seed 404), and the real photos."""
    from lfa_ray import evaluate
    from lfa_ray.synth import write_synthetic

    if exp is None:
        rep.add("h.skipped", "no sweep model", "", "part e did not finish")
        return
    n = HELD_N[smoke]
    for family, key in (("all", "h.heldout_dice"), ("classic", "h.heldout_classic_dice")):
        held = write_synthetic(WORK / f"held-{family}", n, seed=404, family=family)
        s = evaluate.run(str(exp), data=str(held), out=str(WORK / f"eval-{family}"), device=device.type)
        rep.add(key, s["dice_mean"], "", f"{n} held-out synthetic photos (seed 404, {family} styles); "
                f"the CPU default sweep: {'0.751' if family == 'all' else '0.933'}")
    if real is None:
        rep.add("h.real_dice", "no set", "", "--real DIR (an annotated real-photo set) not given or not found")
        return
    import real_photos

    out = WORK / "real"
    real_photos.main(["--data", str(real), "--checkpoint", str(exp), "--out", str(out)])
    f = json.loads((out / "summary.json").read_text())
    rep.add("h.real_dice", f["dice_mean"], "", f"{f['photos']} real photos ({real.name}), windows found "
            f"{f['found']}, calls right {f['calls_right']} of {f['with_call']}; the CPU default sweep: 0.499")


# -- main ------------------------------------------------------------------------------------

WORK = Path(tempfile.mkdtemp(prefix="lfa-gpu-suite-"))  # scratch for the sweep and predictions; removed at the end
ESTIMATE_S = {"b": 70, "c": 190, "d": 20, "e": 360, "f": 10, "g": 40,  # measured on an H200, 2026-12-04
              "h": 40}  # estimated: 800 photos drawn on 16 CPUs, 424 scored
REAL_SET = REPO.parent / "shared" / "realset-dev"  # the real-photo dev set beside a checkout, where there is one
ALONE_S = 80  # part e's run of one trial alone and its GPU bound


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_suite.json, gpu_suite.md and sweep.log")
    parser.add_argument("--budget", type=float, default=450, help="seconds; parts that no longer fit are skipped")
    parser.add_argument("--parts", default="abcdefgh")
    parser.add_argument("--real", type=Path, help="an annotated real-photo set for part h (default: "
                        f"{REAL_SET} where it exists, except with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks the suite itself")
    args = parser.parse_args()
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("error: no CUDA device; run on a GPU machine, or add --smoke to check the suite on CPU")
    rep = Report(Path(args.out))
    part_a(rep, device)
    b = {}
    exp = None
    for part in args.parts:
        left = args.budget - (time.perf_counter() - start)
        need = ESTIMATE_S.get(part, 0) * (0.2 if args.smoke else 1)
        if part != "a" and left < need:
            rep.add(f"{part}.skipped", "no time", "", f"{left:.0f} s left, part needs ~{need:.0f} s")
            continue
        print(f"--- part {part} ({left:.0f} s of budget left)", flush=True)
        t = time.perf_counter()
        try:
            if part == "b":
                b = part_b(rep, device, args.smoke)
            elif part == "c":
                part_c(rep, device, args.smoke)
            elif part == "d":
                part_d(rep, device, args.smoke, b.get(("fp16", 4 if args.smoke else 8, False)))
            elif part == "e":
                after = sum(ESTIMATE_S[p] for p in "fh" if p in args.parts)  # the parts that use its model
                exp = part_e(rep, device, args.smoke, timeout=max(60.0, left - after - ALONE_S))
            elif part == "f":
                part_f(rep, device, args.smoke, exp)
            elif part == "g":
                part_g(rep, device, args.smoke, b)
            elif part == "h":
                real = args.real or (REAL_SET if REAL_SET.is_dir() and not args.smoke else None)
                part_h(rep, device, args.smoke, exp, real)
        except Exception as exc:  # noqa: BLE001 - report and go on to the next part
            rep.add(f"{part}.failed", type(exc).__name__, "", str(exc).splitlines()[0][:300] if str(exc) else "")
        if part != "a":
            rep.add(f"{part}.seconds", time.perf_counter() - t, "s")
    shutil.rmtree(WORK, ignore_errors=True)
    print(f"done in {time.perf_counter() - start:.0f} s; {args.out}/gpu_suite.md", flush=True)


if __name__ == "__main__":
    main()
