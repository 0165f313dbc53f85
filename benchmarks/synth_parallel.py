"""Photos per second drawing a synthetic set: serially, in processes on this machine, in Ray tasks.

    python benchmarks/synth_parallel.py [--n 480] [--cpus N]

Side by side in one run, each way writes the same ``--n`` photos (seed 0, window masks, all
styles) into a fresh folder with :func:`lfa_ray.synth.write_synthetic` and is timed from the call
to the folder complete; Ray's tasks run on a local cluster of ``--cpus`` CPUs (default: all),
started before the clock (as ``tune`` and ``train`` start it before they draw a set). Every way's
files are checked byte for byte against the serial ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from lfa_ray.synth import write_synthetic


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=480)
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    a = p.parse_args()
    import ray

    from lfa_ray.ray_train import init_ray

    init_ray(num_cpus=a.cpus)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; Ray with {a.cpus}; {a.n} photos")
    rates, serial = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for how in ("serial", "processes", "ray"):
            out = Path(tmp) / how
            start = time.perf_counter()
            write_synthetic(out, a.n, how=how)
            seconds = time.perf_counter() - start
            rates[how] = a.n / seconds
            got = files(out)
            serial = serial or got
            same = "same bytes as serial" if got == serial else "DIFFERENT BYTES from serial"
            print(f"{how:9s} {seconds:6.1f} s  {rates[how]:5.1f} photos/s  {rates[how] / rates['serial']:.2f}x serial"
                  f"  ({same})", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
