"""Memory stays flat over long inputs: 1,000 small images through `sathmr infer` with the embedded default.

    python benchmarks/infer_memory.py [--n 1000] [--marks 10,100,500,1000] [--threads 1] [--work DIR]

Writes N small JPEGs (four sizes in turn, so the network sees varying shapes), runs
``python -m sathmr infer`` on the folder in a subprocess — the command exactly as a user runs it, with
overlays — and samples that process's resident memory each time another result JSON appears (the JSON
is written last for each image, so the count of JSONs is the number of images done; a few images beyond
N keep the process running past the last mark). Prints RSS at the marks and the growth from the second
mark to the last (the goal: within 10 %).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

SIZES = ((96, 128), (128, 96), (120, 160), (100, 100))     # (h, w)
EXTRA = 10                                                 # images after the last mark


def write_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        (folder / f"img_{i:05d}.jpg").write_bytes(cv2.imencode(".jpg", img)[1].tobytes())


def count_done(folder: Path) -> int:
    try:
        with os.scandir(folder) as it:
            return sum(1 for e in it if e.name.endswith(".json"))
    except FileNotFoundError:
        return 0


def measure(images: Path, out: Path, marks: list[int], threads: int) -> tuple[dict[int, float], float, float, int]:
    """RSS (MB) of the infer process when each mark is reached, peak RSS, wall seconds, exit code."""
    env = dict(os.environ, SATHMR_WEIGHTS=str(out.parent / "no_weights"), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "sathmr", "infer", "-i", str(images), "-o", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    rss: dict[int, float] = {}
    peak = 0.0
    pending = sorted(marks)
    while proc.poll() is None:
        try:
            now = ps.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            break
        peak = max(peak, now)
        done = count_done(out / "thresh_0.3")
        while pending and done >= pending[0]:
            rss[pending.pop(0)] = now
        time.sleep(0.05)
    output = proc.stdout.read()
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(output, file=sys.stderr)
    return rss, peak, wall, proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--marks", default="10,100,500,1000")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="folder for images and outputs (default: a temp folder)")
    args = ap.parse_args(argv)
    marks = [m for m in (int(v) for v in args.marks.split(",")) if m <= args.n]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        (work / "no_weights").mkdir(parents=True, exist_ok=True)
        write_images(work / "images", args.n + EXTRA)
        rss, peak, wall, rc = measure(work / "images", work / "out", marks, args.threads)
    if rc:
        print(f"sathmr infer exited with {rc}", file=sys.stderr)
        return rc
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?") \
        if os.path.exists("/proc/cpuinfo") else "?"
    print(f"sathmr infer, embedded default, {args.n} images of {', '.join(f'{w}x{h}' for h, w in SIZES)}, "
          f"{args.threads} thread(s), {cpu}: {wall:.0f} s for {args.n + EXTRA} ({(args.n + EXTRA) / wall:.1f} images/s)")
    print("| images done | RSS MB |\n|---|---|")
    for m in marks:
        print(f"| {m} | {rss[m]:.0f} |")
    print(f"peak RSS {peak:.0f} MB")
    if len(marks) >= 2:
        a, b = marks[1] if len(marks) > 2 else marks[0], marks[-1]
        print(f"growth from image {a} to image {b}: {rss[b] - rss[a]:+.1f} MB ({(rss[b] / rss[a] - 1) * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
