"""Reproduce the README's performance table from scratch.

    python benchmarks/run_benchmarks.py [--images DIR] [--config sat_644] [--iters 5] [--out benchmarks/results]

Runs `sathmr bench` (PyTorch dynamic vs ONNX Runtime on the default two-stage export, made on the fly;
each backend in its own process, interleaved pass by pass) on the test images with the full-size network — random weights and the synthetic body model unless --checkpoint /
--smpl-dir are given, which changes nothing in the speed of the dense network but is said in the output —
plus the scaling sweep, and writes ``results.json`` (every figure + the machine description),
``results.md`` (the README section) and ``scaling.png`` into --out.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from sathmr.bench.report import format_markdown, format_report
from sathmr.bench.run import bench
from sathmr.bench.scaling import plot_scaling
from sathmr.common.errors import SathmrError
from sathmr.common.files import atomic_write
from sathmr.outputs.writers import write_json

DEFAULT_IMAGES = Path(os.environ.get("SATHMR_TEST_IMAGES", Path(__file__).resolve().parents[2] / "shared/data/images"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES if DEFAULT_IMAGES.is_dir() else None,
                    help="folder of test images (default: the project's test images; synthetic when absent)")
    ap.add_argument("--config", default="sat_644")
    ap.add_argument("--backends", default="torch,ort")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--smpl-dir", default=None)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scaling-iters", type=int, default=2)
    ap.add_argument("--scaling-max-s", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    command = "python benchmarks/run_benchmarks.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    try:
        result = bench([b for b in args.backends.split(",") if b], args.config, args.images, args.checkpoint,
                       args.smpl_dir, batch=args.batch, iters=args.iters, warmup=args.warmup, threads=args.threads,
                       device=args.device, scaling=True, scaling_iters=args.scaling_iters,
                       scaling_max_s=args.scaling_max_s, command=command.strip(), log=log)
    except SathmrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["wall_s"] = time.perf_counter() - t0
    out = args.out
    plot = plot_scaling(result["scaling"], out / "scaling.png")
    write_json(out / "results.json", result)
    atomic_write(out / "results.md", (format_markdown(result, plot.name) + "\n").encode())
    print(format_report(result))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {plot} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
