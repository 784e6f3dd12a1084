"""The pipelined reader/writer against the serial loop: a folder of images and a clip through `sathmr infer`.

    python benchmarks/video_pipeline.py [--images 50] [--frames 100] [--threads 1,2] [--sat644 N] [--work DIR]

Renders a folder of mannequin scenes (JPEG, ~1280 px) and a clip panning over one (MJPEG AVI), then runs
``run_infer`` — the function behind ``sathmr infer``, with its default outputs (overlay PNGs or video,
JSON, tracking and smoothing) — once serially (decode, network, write in turn: the loop before the
pipeline) and once pipelined, for each PyTorch thread count, and prints wall time, frames per second,
the gain and the fraction of the wall time the network was busy. ``--no-overlay`` is measured too
(what is left when the writer has little to do). With ``--sat644 N`` the full-size architecture (random
weights: timings only) runs on the first N images and N frames as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from sathmr.backends import TorchBackend
from sathmr.bench.setup import make_setup
from sathmr.infer import OutputPlan, run_infer
from sathmr.runtime.predictor import Predictor, load_body_for, load_predictor
from sathmr.train.data.pipeline import BodyModels
from sathmr.train.data.synthetic import make_scene
from sathmr.zoo.weights import resolve


def write_inputs(work: Path, n_images: int, n_frames: int, size: int = 1280) -> tuple[Path, Path]:
    bodies = BodyModels(resolve(None, None).smpl_dir)
    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        img = make_scene(np.random.default_rng([11, i]), bodies, size, 4).image
        cv2.imwrite(str(folder / f"scene_{i:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    scene = make_scene(np.random.default_rng([12, 0]), bodies, size, 4).image
    while scene.shape[1] < scene.shape[0]:       # a landscape scene to pan over
        scene = np.concatenate([scene, scene[:, ::-1]], 1)
    w = scene.shape[1] - 2 * n_frames
    clip = work / "clip.avi"
    wr = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 30, (w, scene.shape[0]))
    for i in range(n_frames):
        wr.write(np.ascontiguousarray(scene[:, 2 * i: 2 * i + w]))
    wr.release()
    return folder, clip


def measure(predictor: Predictor, inputs: Path, out: Path, threaded: bool, overlay: bool) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    plan = OutputPlan(out, predictor.thresholds, overlay=overlay)
    t0 = time.perf_counter()
    s = run_infer(predictor, inputs, plan, overwrite=True, progress=False, threaded=threaded)
    wall = time.perf_counter() - t0
    n = s.processed + s.frames
    return {"frames": n, "wall_s": round(wall, 2), "fps": round(n / wall, 2),
            "network_ms": round(1000 * s.pipeline.network_s / n, 1), "busy": round(s.pipeline.busy, 3),
            "busy_with_decoding": round(s.pipeline.batch_s / wall, 3), "cores_used": round(s.pipeline.cpu_s / wall, 2),
            "failed": len(s.failed)}


def sat644_predictor() -> Predictor:
    setup = make_setup("sat_644", None, None)
    backend = TorchBackend(setup.network(), info={"checkpoint": "random sat_644"})
    return Predictor(backend, load_body_for([backend], setup.smpl_dir), (0.3,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--threads", default="1,2", help="PyTorch intra-op thread counts to measure")
    ap.add_argument("--sat644", type=int, default=0, help="also the full-size network on this many images/frames")
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode, alternating (the median is reported)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sathmr_pipeline_"))
    folder, clip = write_inputs(work, args.images, args.frames)
    models = [("embedded tiny (448 px)", load_predictor("torch")[0], folder, clip)]
    if args.sat644:
        small = work / "images_sat644"
        small.mkdir(exist_ok=True)
        for p in sorted(folder.glob("*.jpg"))[: args.sat644]:
            shutil.copy(p, small / p.name)
        short = work / "clip_sat644.avi"
        cap, wr = cv2.VideoCapture(str(clip)), None
        for _ in range(args.sat644):
            ok, f = cap.read()
            wr = wr or cv2.VideoWriter(str(short), cv2.VideoWriter_fourcc(*"MJPG"), 30, f.shape[1::-1])
            wr.write(f)
        wr.release()
        models.append(("sat_644 random weights (1288 px)", sat644_predictor(), small, short))
    rows, load = [], [os.getloadavg()[0]]
    for model, predictor, images, video in models:
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            warm = work / "warm"
            warm.mkdir(exist_ok=True)
            for p in sorted(images.glob("*.jpg"))[:2]:
                shutil.copy(p, warm / p.name)
            measure(predictor, warm, work / "out", False, True)          # warm-up (allocator, caches)
            for what, inputs in (("folder", images), ("clip", video)):
                for overlay in (True, False):
                    if "sat_644" in model and not overlay:
                        continue
                    runs = {"serial": [], "pipelined": []}
                    for k in range(args.repeats):        # alternate, so a change in machine load hits both
                        for m in (("serial", "pipelined") if k % 2 == 0 else ("pipelined", "serial")):
                            runs[m].append(measure(predictor, inputs, work / "out", m == "pipelined", overlay))
                    r = {m: sorted(v, key=lambda x: x["wall_s"])[(len(v) - 1) // 2] for m, v in runs.items()}
                    row = {"model": model, "threads": threads, "input": f"{what} ({r['serial']['frames']})",
                           "outputs": "overlay+json" if overlay else "json", **{m: r[m] for m in r},
                           "gain": round(r["serial"]["wall_s"] / r["pipelined"]["wall_s"], 2)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    load.append(os.getloadavg()[0])
    print(f"\n{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, {platform.platform()}; "
          f"1-minute load average {load[0]:.2f} at the start, {load[1]:.2f} at the end; median of {args.repeats}\n")
    print("| model | torch threads | input | outputs | frames/s serial | frames/s pipelined | gain | "
          "network busy serial | pipelined | network ms/frame serial | pipelined | cores used serial | pipelined |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["serial"], r["pipelined"]
        print(f"| {r['model']} | {r['threads']} | {r['input']} | {r['outputs']} | {a['fps']} | {b['fps']} | "
              f"{r['gain']}x | {100 * a['busy']:.0f} % | {100 * b['busy']:.0f} % | {a['network_ms']} | "
              f"{b['network_ms']} | {a['cores_used']} | {b['cores_used']} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "load": load, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
