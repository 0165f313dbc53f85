"""Milliseconds to decode a 12-megapixel phone photo for training, full vs reduced JPEG decoding.

    python benchmarks/decode.py [--repeat 10]

Writes one 4000x3000 JPEG (a synthetic cassette scaled up, sensor noise, quality 92, EXIF
orientation 6 as a phone held upright saves it) and times, side by side in one run, what loading
it for training costs: the decode (EXIF applied) then the resize to the training size, with a
full decode and with the reduced decode lfa_ray uses (libjpeg DCT scaling, at least twice the
training size). Median of ``--repeat`` runs each.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lfa_ray.images import read_photo
from lfa_ray.storage import locate
from lfa_ray.synth import render


def phone_photo(path: Path) -> None:
    image, _ = render(0, 0)
    big = cv2.resize(image, (4000, 3000), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    big += np.random.default_rng(0).normal(0, 4, big.shape).astype(np.int16)  # sensor noise: JPEG gets no easy ride
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path, quality=92, exif=exif.tobytes())


def timed(fn, repeat: int) -> float:
    fn()  # warm the file cache
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phone.jpg"
        phone_photo(path)
        src = locate(path)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
              f"photo 4000x3000 JPEG, {path.stat().st_size / 2**20:.1f} MiB, EXIF orientation 6")
        for size in (64, 256, 512):
            def load(reduce: bool, size: int = size) -> np.ndarray:
                photo = read_photo(src, reduce_to=size if reduce else None)
                return cv2.resize(photo.pixels, (size, size), interpolation=cv2.INTER_AREA)

            full, reduced = timed(lambda: load(False), args.repeat), timed(lambda: load(True), args.repeat)
            shape = read_photo(src, reduce_to=size).pixels.shape
            diff = np.abs(load(False).astype(int) - load(True)).mean()
            print(f"training size {size:3d}: full decode {full:6.1f} ms, reduced ({shape[1]}x{shape[0]}) "
                  f"{reduced:5.1f} ms: x{full / reduced:.1f} faster; mean pixel difference {diff:.2f}/255")


if __name__ == "__main__":
    main()
