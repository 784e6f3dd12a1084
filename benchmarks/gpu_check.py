"""One GPU check, ready to run: every CUDA path against the CPU reference, and its latency.

    python benchmarks/gpu_check.py [--images DIR] [--config sat_644] [--iters 10] [--out benchmarks/results]
                                   [--skip-ort] [--skip-trt] [--trt-fp16]

Needs only a CUDA build of PyTorch; the ONNX Runtime CUDA and TensorRT sections run when onnxruntime-gpu /
tensorrt are installed and say why when not. On one H100-class GPU it takes a few minutes (sat_644 with
random weights, the two test photos; the CPU reference and the exports run on the host). Per entry:

  * accuracy against PyTorch fp32 on the CPU: the same token set on every photo, the largest network output
    difference relative to its scale (fp32 entries must stay <= 1e-3), people matched, joints in mm;
  * latency of the network alone, batch 1 and batch 8 (the photos repeated), median of ``--iters`` runs.

Writes ``gpu_check.json`` (every figure, the GPU, the versions) and prints one table (also ``gpu_check.md``).
``--device cpu --config tiny`` dry-runs the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from sathmr.backends import OrtBackend, TorchBackend, TrtBackend
from sathmr.bench.measure import machine_info
from sathmr.bench.report import md_table, text_table
from sathmr.body import load_body_model
from sathmr.common.errors import SathmrError
from sathmr.common.files import atomic_write
from sathmr.export.onnx import export_network
from sathmr.export.trt import build_engines, max_tokens_for
from sathmr.inputs.images import read_image
from sathmr.outputs.writers import write_json
from sathmr.parity import compare_backends
from sathmr.runtime.predictor import Predictor
from sathmr.runtime.preprocess import collate, prepare
from sathmr.zoo.random_weights import random_network
from sathmr.zoo.weights import synthetic_smpl_dir

DEFAULT_IMAGES = Path(os.environ.get("SATHMR_TEST_IMAGES", Path(__file__).resolve().parents[2] / "shared/data/images"))
FP32_REL = 1e-3          # fp32 entries: largest output difference relative to its scale
HEADER = ["entry", "precision", "tokens identical", "max rel diff", "people matched", "joints mean/max mm",
          "batch 1 ms", "batch 8 ms/img"]


def latency_ms(backend, images: torch.Tensor, hw: torch.Tensor, iters: int, cuda: bool) -> float:
    """Median wall time of ``backend.run`` (network only, outputs on the host), after three warm-up runs."""
    times = []
    for i in range(iters + 3):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        backend.run(images, hw)
        if cuda:
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def entry(name: str, backend, ref: Predictor, body, items, names, batches, iters: int, cuda: bool) -> dict:
    t0 = time.perf_counter()
    rep = compare_backends(ref, Predictor(backend, body), items, names, tol_mm=1e9)
    acc, net = rep.accuracy(), rep.worst("network")
    rel = max(v["rel"] for k, v in net.items() if k.startswith("pred_"))
    row = {"entry": name, "precision": getattr(backend, "info", {}).get("precision", "fp32"),
           "tokens_identical": acc["tokens_identical"], "max_rel_diff": rel, "people": [acc["matched"], acc["people_a"]],
           "joint_mm": [acc["joint_mm_mean"], acc["joint_mm_max"]], "network": net}
    row["batch1_ms"] = latency_ms(backend, *batches[1], iters, cuda)
    row["batch8_ms_per_image"] = latency_ms(backend, *batches[8], max(2, iters // 2), cuda) / 8
    row["seconds"] = round(time.perf_counter() - t0, 1)
    if row["precision"] == "fp32" and (rel > FP32_REL or not acc["tokens_identical"]):
        row["problem"] = f"fp32 differs from the CPU: rel {rel:.2e} (limit {FP32_REL:g}), tokens identical {acc['tokens_identical']}"
    elif not acc["tokens_identical"]:
        row["problem"] = "the token set differs from fp32 (stage A must stay fp32 at every precision)"
    return row


def table_row(r: dict) -> list[str]:
    if "skipped" in r:
        return [r["entry"], "-", "skipped (below)", "", "", "", "", ""]
    return [r["entry"], r["precision"], "yes" if r["tokens_identical"] else "NO", f"{r['max_rel_diff']:.1e}",
            f"{r['people'][0]}/{r['people'][1]}", f"{r['joint_mm'][0]:.2f}/{r['joint_mm'][1]:.2f}",
            f"{r['batch1_ms']:.1f}", f"{r['batch8_ms_per_image']:.1f}"]


def ort_section(model, body, work: Path, device: str, run) -> list[dict]:
    if importlib.util.find_spec("onnxruntime") is None:
        return [{"entry": "ort", "skipped": "onnxruntime is not installed (pip install 'sathmr[gpu]')"}]
    import onnxruntime as ort
    if device != "cpu" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return [{"entry": "ort", "skipped": f"ONNX Runtime {ort.__version__} has no CUDAExecutionProvider"}]
    art, _ = export_network(model, body, work / "onnx")
    return [run("ort", OrtBackend.from_file(art.path, device=device))]


def trt_section(model, body, work: Path, device: str, fp16: bool, run) -> list[dict]:
    if importlib.util.find_spec("tensorrt") is None:
        return [{"entry": "trt", "skipped": "TensorRT is not installed (pip install 'sathmr[gpu]')"}]
    if device == "cpu":
        return [{"entry": "trt", "skipped": "TensorRT needs a CUDA GPU"}]
    rows = []
    for precision in ("fp32", "fp16") if fp16 else ("fp32",):
        art, meta = export_network(model, body, work / f"portable_{precision}", portable=True, precision=precision)
        tokens = max_tokens_for(meta, 8)     # batch 8 within the activation budget (sat_644: 4728 tokens)
        engines = build_engines(art.path, work / f"trt_{precision}", fp16=precision == "fp16", max_batch=8,
                                max_tokens=tokens)
        rows.append(run(f"trt:{precision}", TrtBackend.from_file(engines.path, device=device)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of photos (default: the test photos)")
    ap.add_argument("--config", default="sat_644")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default="cuda", help="cuda[:N]; cpu only dry-runs the script")
    ap.add_argument("--skip-ort", action="store_true")
    ap.add_argument("--skip-trt", action="store_true")
    ap.add_argument("--trt-fp16", action="store_true", help="also build and check fp16 TensorRT engines (minutes more)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(f"error: no CUDA device visible to PyTorch {torch.__version__} (a CUDA build of torch is needed; "
              "--device cpu dry-runs the script)", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    smpl = synthetic_smpl_dir("full" if args.config == "sat_644" else "tiny")
    body = load_body_model(smpl)
    model = random_network(args.config, smpl)
    cfg = model.cfg
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise SathmrError(f"no images in {args.images}")
    items, names = [prepare(read_image(p), cfg.input_size, cfg.pad_multiple) for p in paths], [p.stem for p in paths]
    batches = {1: collate(items[:1]), 8: collate([items[i % len(items)] for i in range(8)])}
    ref = Predictor(TorchBackend(copy.deepcopy(model), "cpu"), body)       # the reference: PyTorch fp32 on the CPU
    rows: list[dict] = []

    def run(name: str, backend) -> dict:
        print(f"-- {name} ...", file=sys.stderr, flush=True)
        rows.append(entry(name, backend, ref, body, items, names, batches, args.iters, cuda))
        print("   " + " | ".join(table_row(rows[-1])), file=sys.stderr, flush=True)
        return rows[-1]

    gpu_model = copy.deepcopy(model)
    run("torch", TorchBackend(gpu_model, args.device))
    for precision in ("bf16", "fp16"):
        try:
            run(f"torch:{precision}", TorchBackend(gpu_model, args.device, precision=precision, allow_emulated=not cuda))
        except SathmrError as exc:
            rows.append({"entry": f"torch:{precision}", "skipped": str(exc)})
    del gpu_model
    if cuda:
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory(prefix="sathmr-gpu-check-") as tmp:
        sections = []
        if not args.skip_ort:
            sections.append(lambda: ort_section(model, body, Path(tmp), args.device, run))
        if not args.skip_trt:
            sections.append(lambda: trt_section(model, body, Path(tmp), args.device, args.trt_fp16, run))
        for section in sections:
            for r in section():
                if "skipped" in r:
                    rows.append(r)
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if cuda else "none (dry run on the CPU)"
    versions = {m: __import__(m).__version__ for m in ("onnxruntime", "tensorrt") if importlib.util.find_spec(m)}
    result = {"command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "gpu": gpu, "cuda": torch.version.cuda, "versions": {"torch": torch.__version__, **versions},
              "machine": machine_info(torch.get_num_threads(), args.device), "config": cfg.name, "images": names,
              "entries": rows, "wall_s": round(time.perf_counter() - t_start, 1)}
    table = [table_row(r) for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "gpu_check.json", result)
    head = f"{gpu}, CUDA {torch.version.cuda}, " + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    skips = "".join(f"\n- {r['entry']} skipped: {r['skipped']}" for r in rows if "skipped" in r)
    atomic_write(args.out / "gpu_check.md", (f"{head}; {cfg.name} (random weights), {len(names)} photos\n\n"
                                             + md_table(HEADER, table) + "\n" + skips + "\n").encode())
    print(head)
    print(text_table(HEADER, table))
    skipped = [f"{r['entry']} skipped: {r['skipped']}" for r in rows if "skipped" in r]
    print("\n".join(skipped))
    problems = [f"{r['entry']}: {r['problem']}" for r in rows if "problem" in r]
    print("\n".join(problems) if problems else "every entry keeps the fp32 token set; fp32 entries within 1e-3")
    print(f"wrote {args.out / 'gpu_check.json'} ({result['wall_s']:.0f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
