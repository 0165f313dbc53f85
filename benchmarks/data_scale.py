"""What streaming the photos with Ray Data (``data.stream``) costs and saves, against the in-memory path.

    python benchmarks/data_scale.py [--photos 1200] [--size 96] [--epochs 4] [--grow 1000,5000,20000]

1. Decoding per epoch, both ways: the seconds to decode and resize one epoch's photos from the
   original pack (``pack``) and from a pack at the training size (``pack --size``), one process.
2. Epoch time, same photos, same box: ``lfa_ray``'s TorchTrainer run on ``--photos`` synthetic
   photos at ``--size`` px for ``--epochs`` epochs in memory and streamed, each training worker
   with one CPU (a streamed run leaves the other to Ray Data); the median epoch from the second
   on, and the ratio.
3. Memory as the set grows: packs of ``--grow`` photos at 128 px (the rows of the ``--photos`` set
   packed at 128 px, repeated under new names). In memory: the driver's peak RSS after loading the set and
   putting it in Ray's object store, and the store's use. Streamed: one epoch read by a Train
   worker (decoded, augmented, batched; no model): the driver's peak RSS, the worker's own memory
   at the epoch's end (USS: its RSS also counts the store's pages it mapped) and the store's peak
   use (sampled every 0.2 s); psutil (the test extra) measures USS. Each case in its own process,
   on its own local cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def private_mib() -> float:
    """This process's own memory (USS: not the object store's shared pages it has mapped, which its
    RSS counts)."""
    import psutil

    return psutil.Process().memory_full_info().uss / 2**20


def decode_seconds(packed: str, size: int) -> float:
    from lfa_ray.data import discover, sized

    pairs = discover(packed).pairs
    start = time.perf_counter()
    for pair in pairs:
        sized(pair, size)
    return time.perf_counter() - start


def epoch_times(packed: str, size: int, epochs: int, stream: bool, out: str) -> list[float]:
    from lfa_ray import runs
    from lfa_ray.config import load_config

    sets = [f"data.path={packed}", f"data.image_size={size}", f"train.epochs={epochs}", f"data.stream={stream}",
            "refine.image_size=null", f"storage.path={out}", "train.checkpoint_every=100"]
    cfg = load_config(REPO / "tune_configs" / "default.yaml", sets)
    cfg, setup = runs.prepare(cfg)  # not alone: one CPU per worker either way
    from lfa_ray.storage import locate

    run = locate(out) / ("streamed" if stream else "memory")
    runs.fit(cfg, setup, run, what="benchmark", continue_with="-", fresh=True)
    from lfa_ray.runlog import read_metrics

    return [r["epoch_seconds"] for r in read_metrics(run / "metrics.csv")]


def grown(src: str, n: int, out: str) -> str:
    """``src``'s rows repeated under new names to ``n`` photos (split at training time)."""
    table = pq.read_table(src)
    parts, k = [], 0
    while sum(len(p) for p in parts) < n:
        part = table.slice(0, min(len(table), n - sum(len(p) for p in parts)))
        names = pa.array([f"{name}-{k}" for name in part.column("name").to_pylist()])
        parts.append(part.set_column(part.schema.get_field_index("name"), "name", names))
        k += 1
    path = f"{out}/grown{n}.parquet"
    pq.write_table(pa.concat_tables(parts), path, row_group_size=64)
    return path


def store_used() -> float:
    import ray

    total = ray.cluster_resources().get("object_store_memory", 0)
    return total - ray.available_resources().get("object_store_memory", total)


def memory_case(packed: str, size: int, stream: bool) -> dict:
    import ray

    from lfa_ray import ray_train
    from lfa_ray.data import load, resolve_splits
    from lfa_ray.storage import locate

    ray_train.init_ray(num_cpus=2)
    if not stream:
        shared = ray_train.share(load(packed, size))
        time.sleep(2)  # the store's use reaches the resource view within a heartbeat
        used = store_used()
        del shared
        return {"driver_mib": peak_rss_mib(), "store_mib": used / 2**20, "worker_mib": None}
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from lfa_ray import stream as streaming
    from lfa_ray.augment import train_transform

    source = streaming.streamed(resolve_splits(packed, 0.2, 42, light=True), locate(packed), size)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], store_used())

    def read_one_epoch(config: dict) -> None:
        loader = streaming.Loader(ray.train.get_dataset_shard("train"), train_transform(1.0), size=size, batch_size=16,
                                  seed=0, photos=config["photos"], shuffle=True)
        n = sum(len(images) for images, _ in loader)
        Path(config["out"]).write_text(json.dumps({"photos": n, "worker_mib": private_mib()}))

    threading.Thread(target=sample, daemon=True).start()
    out = Path(tempfile.mkdtemp()) / "worker.json"  # one machine: the worker's figures come back in a file
    TorchTrainer(read_one_epoch, train_loop_config={"photos": len(source.train), "out": str(out)},
                 datasets={"train": streaming.datasets(source)["train"]},
                 dataset_config=DataConfig(datasets_to_split=["train"], execution_options=streaming.ingest_options()),
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1})).fit()
    done.set()
    worker = json.loads(out.read_text())
    assert worker["photos"] == len(source.train), worker
    return {"driver_mib": peak_rss_mib(), "store_mib": peak[0] / 2**20, "worker_mib": worker["worker_mib"]}


def _child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--photos", type=int, default=1200)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--grow", default="1000,5000,20000")
    p.add_argument("--child", nargs="*")
    a = p.parse_args()
    if a.child:  # one measurement, in its own process
        kind, *rest = a.child
        if kind == "memory":
            print(json.dumps(memory_case(rest[0], int(rest[1]), rest[2] == "1")))
        else:
            print(json.dumps({"epochs": epoch_times(rest[0], int(rest[1]), int(rest[2]), rest[3] == "1", rest[4])}))
        return

    from lfa_ray.data import pack
    from lfa_ray.synth import synthetic_dataset

    print(f"box: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{a.photos} synthetic photos at {a.size} px")
    with tempfile.TemporaryDirectory() as tmp:
        src = synthetic_dataset(a.photos, "window")
        original, at_size = f"{tmp}/original.parquet", f"{tmp}/sized.parquet"
        pack(src, original)
        pack(src, at_size, a.size)
        print("\n1. decoding one epoch's photos (one process):")
        for label, path in (("original pack", original), (f"pack --size {a.size}", at_size)):
            print(f"   {label:<18} {decode_seconds(path, a.size):6.2f} s for {a.photos} photos")

        print(f"\n2. epoch time, {a.epochs} epochs, one CPU per training worker (median of epochs 2..):")
        medians = {}
        for stream in (False, True):
            times = _child(["epoch", at_size, str(a.size), str(a.epochs), str(int(stream)), f"{tmp}/runs{stream}"])
            medians[stream] = statistics.median(times["epochs"][1:])
            print(f"   {'streamed' if stream else 'in memory':<10} epochs {[round(t, 1) for t in times['epochs']]}"
                  f" s, median {medians[stream]:.2f} s")
        print(f"   streamed / in memory: {medians[True] / medians[False]:.2f}x")

        print("\n3. memory as the set grows (128 px; MiB):")
        base = f"{tmp}/base128.parquet"
        pack(src, base, 128)
        print(f"   {'photos':>7} | {'decoded':>8} | in memory: driver, store | streamed: driver, worker, store")
        for n in (int(x) for x in a.grow.split(",")):
            path = grown(base, n, tmp)
            mem = _child(["memory", path, "128", "0"])
            st = _child(["memory", path, "128", "1"])
            print(f"   {n:>7} | {n * 128 * 128 * 4 / 2**20:>8.0f} | {mem['driver_mib']:>7.0f}, "
                  f"{mem['store_mib']:>5.0f}     | {st['driver_mib']:>7.0f}, {st['worker_mib']:>6.0f}, "
                  f"{st['store_mib']:>5.0f}", flush=True)
            os.unlink(path)


if __name__ == "__main__":
    main()
