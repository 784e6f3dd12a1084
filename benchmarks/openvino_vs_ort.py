"""OpenVINO against ONNX Runtime and PyTorch on the full-size network: issue #27's figures in one run.

    python benchmarks/openvino_vs_ort.py [--images DIR] [--entries torch,ort,ort:int8,openvino,openvino:int8]
                                         [--iters 3] [--threads N] [--out benchmarks/results]

(Not ``openvino.py``: run as a script, this folder comes first on ``sys.path`` and the file would shadow the
``openvino`` package itself.)

Three parts, on ``sat_644`` with random weights (spread heads: every token level occurs) and the test photos:

  * **side by side** — `sathmr bench` with every entry in its own process, interleaved pass by pass: network
    p50 and speed-up against PyTorch fp32, peak RSS per process against PyTorch's, and each entry's task
    accuracy against PyTorch fp32 (identical tokens, joints mean/max mm);
  * **full-size parity** — in this process, PyTorch fp32 against OpenVINO fp32 (every network output's max
    difference relative to its scale; the bound is 1e-5) and OpenVINO fp32 against its int8 (joints in mm,
    token sets);
  * **per-stage profile** — each exported entry's two graphs timed apart (stage A ``scale_map``, the host
    token selection, stages B/C + decoder ``tokens``): where the time goes.

Prints the CPU; writes ``openvino.json`` (every figure and the machine) into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from sathmr.backends import TorchBackend, load_backend
from sathmr.bench.measure import machine_info
from sathmr.bench.report import PRECISION_HEADER, precision_rows, text_table
from sathmr.bench.run import bench
from sathmr.bench.setup import load_images, make_setup, synthetic_images
from sathmr.common.errors import SathmrError
from sathmr.model.config import get_config
from sathmr.outputs.writers import write_json
from sathmr.parity import compare_backends
from sathmr.runtime.predictor import Predictor
from sathmr.runtime.preprocess import collate, prepare

DEFAULT_IMAGES = Path(os.environ.get("SATHMR_TEST_IMAGES", Path(__file__).resolve().parents[2] / "shared/data/images"))
ENTRIES = "torch,ort,ort:int8,openvino,openvino:int8"
TOL_REL = 1e-5
INT8_MM = 5.0                 # the bound on the int8 joints (mean, against fp32)
#: the folder each exported entry's file has in bench's work folder (sathmr.bench.run.exported_files)
EXPORT_FOLDERS = {"ort": "onnx_fp32_onnxruntime", "ort:int8": "onnx_int8_onnxruntime", "openvino": "openvino_fp32",
                  "openvino:int8": "openvino_int8"}


def stage_profile(backend, batches, iters: int) -> dict[str, float]:
    """Median ms per image of the two graphs and of the host selection between them, from the two-stage
    runner's own stage calls (the sum is the network time)."""
    two = backend.two_stage
    spent = {"scale_map": 0.0, "tokens": 0.0}

    def timed(name, fn):
        def call(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            spent[name] += time.perf_counter() - t0
            return out
        return call
    two.scale_map_stage, two.tokens_stage = timed("scale_map", two.scale_map_stage), timed("tokens", two.tokens_stage)
    rows = []
    for images, hw in batches:
        backend.run(images, hw)        # warm-up at this shape
        per = []
        for _ in range(iters):
            spent.update(scale_map=0.0, tokens=0.0)
            t0 = time.perf_counter()
            backend.run(images, hw)
            total = time.perf_counter() - t0
            per.append({"scale_map": spent["scale_map"], "tokens": spent["tokens"],
                        "selection": total - spent["scale_map"] - spent["tokens"], "network": total})
        rows.append({k: statistics.median(p[k] for p in per) * 1000 for k in per[0]})
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def parity_part(setup, work: Path, images, log) -> dict:
    """PyTorch fp32 vs OpenVINO fp32 and OpenVINO fp32 vs int8, full size, every image alone."""
    body, cfg = setup.body(), get_config(setup.config)
    items = [prepare(img, cfg.input_size, cfg.pad_multiple) for _, img in images]
    names = [n for n, _ in images]
    ref = Predictor(TorchBackend(setup.network()), body)
    ov32 = Predictor(load_backend("openvino", model_path=work / EXPORT_FOLDERS["openvino"]), body)
    out = {}
    ov8 = Predictor(load_backend("openvino", model_path=work / EXPORT_FOLDERS["openvino:int8"]), body)
    for label, a, b in (("torch vs openvino", ref, ov32), ("openvino vs openvino:int8", ov32, ov8)):
        rep = compare_backends(a, b, items, names, tol_mm=INT8_MM)
        acc = rep.accuracy()
        out[label] = {"network_rel_max": max(v["rel"] for v in rep.worst("network").values()),
                      "tokens_identical": acc["tokens_identical"], "joint_mm_mean": acc["joint_mm_mean"],
                      "joint_mm_max": acc["joint_mm_max"], "matched": acc["matched"], "people_a": acc["people_a"],
                      "counts": [im.counts_a for im in rep.images]}
        log(f"{label}: {out[label]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES if DEFAULT_IMAGES.is_dir() else None)
    ap.add_argument("--entries", default=ENTRIES)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    command = ("python benchmarks/openvino_vs_ort.py " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    threads = args.threads or torch.get_num_threads()
    result: dict = {"command": command, "machine": machine_info(threads, "cpu")}
    print(f"CPU: {result['machine']['cpu']} ({result['machine']['cores_logical']} logical cores, {threads} threads; "
          f"flags {' '.join(result['machine']['cpu_flags'])})", flush=True)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="sathmr-openvino-") as tmp:
            work = Path(tmp)
            full = result["side_by_side"] = bench(args.entries.split(","), "sat_644", args.images, iters=args.iters,
                                                  warmup=1, threads=threads, command=command, log=log, workdir=work)
            rows = [[*row, f"{full['backends'][row[0]]['peak_rss_mb']:.0f}"] for row in precision_rows(full)]
            print(text_table([*PRECISION_HEADER, "peak RSS MB"], rows), flush=True)
            setup = make_setup("sat_644", None, None)
            images = load_images(args.images) if args.images else synthetic_images()
            torch.set_num_threads(threads)
            result["parity"] = parity_part(setup, work, images, log)
            cfg = get_config("sat_644")
            batches = [collate([prepare(img, cfg.input_size, cfg.pad_multiple)]) for _, img in images]
            result["stages"] = {}
            for label, folder in EXPORT_FOLDERS.items():
                if label in full["backends"]:
                    name = label.split(":")[0]
                    be = load_backend(name, model_path=work / folder, threads=threads)
                    result["stages"][label] = stage_profile(be, batches, args.iters)
                    del be
    except SathmrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\nper-stage profile, ms per image (mean over the photos of the median of each):")
    print(text_table(["entry", "scale_map (A)", "selection (host)", "tokens (B/C + decoder)", "network"],
                     [[k, *(f"{v[s]:.1f}" for s in ("scale_map", "selection", "tokens", "network"))]
                      for k, v in result["stages"].items()]))
    print("\nfull-size parity:")
    for label, p in result["parity"].items():
        print(f"  {label}: network rel max {p['network_rel_max']:.2e}, tokens identical {p['tokens_identical']}, "
              f"joints mean/max {p['joint_mm_mean']:.3f}/{p['joint_mm_max']:.3f} mm, matched {p['matched']}/{p['people_a']}")
    print("\n" + "\n".join(targets(result)))
    result["wall_s"] = time.perf_counter() - t0
    write_json(args.out / "openvino.json", result)
    print(f"wrote {args.out / 'openvino.json'} in {result['wall_s']:.0f} s")
    return 0


def targets(result: dict) -> list[str]:
    """The issue's targets against the measured figures, one line each."""
    b = result["side_by_side"]["backends"]
    net = {k: v["pass_ms"]["network"] for k, v in b.items()}
    par = result["parity"]
    lines = []
    if "ort" in net and "openvino" in net:
        ok = net["openvino"] <= net["ort"] and par["torch vs openvino"]["network_rel_max"] <= TOL_REL
        lines.append(f"[{'met' if ok else 'MISSED'}] OpenVINO fp32 >= ORT fp32: {net['ort'] / net['openvino']:.2f}x, "
                     f"rel {par['torch vs openvino']['network_rel_max']:.1e} (<= {TOL_REL:g})")
    exact = {k: v for k, v in b.items() if v["accuracy"] is not None and v["accuracy"]["tokens_identical"]
             and v["accuracy"]["joint_mm_mean"] <= INT8_MM}
    if exact and "torch" in net:
        best = max(exact, key=lambda k: exact[k]["network_speedup_vs_torch"] or 0)
        x = exact[best]["network_speedup_vs_torch"]
        lines.append(f"[{'met' if x >= 2.0 else 'MISSED'}] best exact CPU path >= 2.0x torch fp32: {best} {x:.2f}x "
                     f"(joints mean {exact[best]['accuracy']['joint_mm_mean']:.2f} mm, tokens identical)")
    if "torch" in b:
        worst = max(v["peak_rss_mb"] / b["torch"]["peak_rss_mb"] for k, v in b.items() if k.startswith("openvino"))
        lines.append(f"[{'met' if worst <= 1.5 else 'MISSED'}] OpenVINO peak RSS <= 1.5x PyTorch's: worst {worst:.2f}x")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
