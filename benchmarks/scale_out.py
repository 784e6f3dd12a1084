"""`sathmr infer` on one folder with 1, 2, ... processes (`torchrun --standalone --nproc-per-node N`).

    python benchmarks/scale_out.py [--n 120] [--procs 1,2] [--threads 1] [--repeat 2] [--work DIR]

Writes N small JPEGs (the same as infer_memory.py) and runs the command exactly as a user does, with the
embedded default, ``--threads`` torch threads per process and a fresh output folder per run. Prints per
run the wall time of the whole command (start-up, model loading and the process group included) and the
time of the inference loop that the merged summary reports (rank 0, from the first image to the gathered
summary), the best of ``--repeat`` runs each.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infer_memory import write_images


def run(images: Path, out: Path, procs: int, threads: int) -> tuple[float, float]:
    """Wall seconds of the command and the loop seconds its summary prints."""
    env = dict(os.environ, SATHMR_WEIGHTS=str(out.parent / "no_weights"), OMP_NUM_THREADS=str(threads))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"] \
        if procs > 1 else [sys.executable]
    cmd = [*launcher, "-m", "sathmr", "infer", "-i", str(images), "-o", str(out), "--no-overlay"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    found = re.search(r"processes: (\d+).*?time: ([\d.]+) s total", proc.stdout, re.S)
    if proc.returncode or not found or int(found.group(1)) != procs:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return wall, float(found.group(2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="folder for images and outputs (default: a temp folder)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        (work / "no_weights").mkdir(parents=True, exist_ok=True)
        write_images(work / "images", args.n)
        load = os.getloadavg()[0]
        for procs in (int(p) for p in args.procs.split(",")):
            runs = [run(work / "images", work / f"out_{procs}_{i}", procs, args.threads) for i in range(args.repeat)]
            rows.append((procs, min(r[0] for r in runs), min(r[1] for r in runs)))
        load_end = os.getloadavg()[0]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?") \
        if os.path.exists("/proc/cpuinfo") else "?"
    print(f"sathmr infer, embedded default, {args.n} images, {args.threads} thread(s) per process, {os.cpu_count()} "
          f"logical cores ({cpu}); 1-minute load average {load:.2f} at the start, {load_end:.2f} at the end")
    print("| processes | command wall s | inference loop s | images/s (loop) | loop speed-up |\n|---|---|---|---|---|")
    base = rows[0][2]
    for procs, wall, loop in rows:
        print(f"| {procs} | {wall:.1f} | {loop:.1f} | {args.n / loop:.1f} | {base / loop:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
