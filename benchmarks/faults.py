"""Fault injection that takes longer than CI allows: the tune driver killed at many moments.

    python benchmarks/faults.py [--points 10] [--out DIR]

Row 1 of docs/RELIABILITY.md, swept over a trial's life: a small sweep (3 trials one at a time,
8 epochs each, 48 px) is started, and its driver and local Ray cluster are SIGKILLed (like a
lost machine) at one of ``--points`` moments spread from the first trial's first epoch to 10 s
after it finished; then ``--resume`` runs it to the end. A kill point survives
when the resume exits 0 and every trial's Tune history (``result.json``) holds exactly the
epochs its Train run recorded (``train/metrics.csv``: nothing blanked or lost; an epoch Tune
had before the kill may be listed twice, reported again after it) and ``trials.parquet`` has a
best val Dice for every trial.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETS = {"data.image_size": 48, "model.features": "[8,16]", "train.batch_size": 4, "train.checkpoint_every": 1,
        "tune.num_samples": 3, "tune.max_concurrent_trials": 1, "tune.scheduler.max_t": 8,
        "tune.scheduler.grace_period": 8, "final.epochs": 1, "data.synthetic_n": 120}
AFTER_S = 10.0  # kill points run this long past trial 001's end: Tune saves its state every few seconds


def kill_session(sid: int) -> None:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


def epochs(metrics_csv: Path) -> list[int]:
    import csv

    if not metrics_csv.is_file():
        return []
    return [int(float(r["epoch"])) for r in csv.DictReader(metrics_csv.open())]


def check(exp: Path) -> str:
    """'' when every trial's history is whole, else what is wrong."""
    import pandas as pd

    problems = []
    for trial in sorted(exp.glob("trial_*")):
        recorded = epochs(trial / "train" / "metrics.csv")
        lines = (trial / "result.json").read_text().splitlines() if (trial / "result.json").is_file() else []
        reported = [int(json.loads(line)["epoch"]) for line in lines if line.strip()]
        if sorted(set(reported)) != recorded:  # an epoch reported before the kill and again after is no loss
            problems.append(f"{trial.name}: Tune has epochs {reported}, the run recorded {recorded}")
    table = pd.read_parquet(exp / "trials.parquet")
    if table["best_val_dice"].isna().any():
        problems.append(f"{int(table['best_val_dice'].isna().sum())} blank rows in trials.parquet")
    return "; ".join(problems)


def one(point: float, storage: Path, env: dict, duration: float | None) -> tuple[str, str, float]:
    """Kill ``point`` seconds after trial 001's first epoch (duration None: at its end, measuring
    that duration); resume; check. Returns the sweep's name, what went wrong ('' if nothing) and
    the duration."""
    name = f"k{point:05.1f}s" if duration else "k-end"
    sets = [a for k, v in SETS.items() for a in ("--set", f"{k}={v}")] + ["--set", f"storage.path={storage}"]
    cmd = [sys.executable, "-m", "lfa_ray.tune", "--name", name]
    proc = subprocess.Popen(cmd + sets, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    exp = storage / name
    first_epoch = None
    deadline = time.time() + 300
    while time.time() < deadline:
        runs = sorted(exp.glob("trial_001_*/train/metrics.csv"))
        got = epochs(runs[0]) if runs else []
        now = time.time()
        if got and first_epoch is None:
            first_epoch = now
        if duration is None and len(got) >= SETS["tune.scheduler.max_t"]:
            duration = now - first_epoch
            break
        if duration is not None and first_epoch is not None and now >= first_epoch + point:
            break
        time.sleep(0.05)
    kill_session(proc.pid)
    proc.wait()
    resumed = subprocess.run(cmd + ["--resume", "--set", f"storage.path={storage}"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    if resumed.returncode != 0:
        return name, f"resume exited {resumed.returncode}: {resumed.stderr.strip().splitlines()[-1:]}", duration
    return name, check(exp), duration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--out", type=Path, help="keep the sweeps here (default: a temporary folder)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    storage = args.out or Path(tempfile.mkdtemp(prefix="lfa_ray-faults-"))
    # from trial 001's first epoch to AFTER_S seconds past its end (where Tune's periodic state
    # save has most likely missed it)
    name, problem, duration = one(0.0, storage, env, None)
    results = [(duration, name, problem)]
    for i in range(args.points - 1):
        point = (duration + AFTER_S) * i / max(1, args.points - 2)
        results.append((point, *one(point, storage, env, duration)[:2]))
    print(f"trial 001 ran {duration:.1f} s after its first epoch; kills from then to {AFTER_S:g} s past its end")
    print("| kill at (s after trial 001's first epoch) | sweep | outcome |\n| --- | --- | --- |")
    for point, name, problem in sorted(results):
        print(f"| {point:.1f} | {name} | {problem or 'survived'} |")
    survived = sum(not p for _, _, p in results)
    print(f"\nsurvived {survived} / {len(results)} kill points")


if __name__ == "__main__":
    main()
