"""The interleaved runner: every backend in its own process, the same inputs, pass by pass.

Honesty rules, because a benchmark that flatters is worse than none:
  * every backend runs the same prepared inputs, **interleaved** (pass i runs every backend before pass
    i+1, starting with a different backend each pass) so machine drift and thermal state hit all alike;
  * warm-up passes are excluded; threads are pinned (PyTorch and ONNX Runtime intra-op) and reported;
  * stages are timed around the shared batch runner (``Predictor.run_batch``) with CUDA events on GPU;
  * each backend's memory is its own process's high-water mark;
  * without a checkpoint the weights are random (heads spread so the token set is a realistic mix) and
    the body model is synthetic: the output says so, and the numbers are about speed only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from sathmr.backends.formats import format_of_backend
from sathmr.backends.meta import read_meta
from sathmr.bench.measure import latency_stats, machine_info
from sathmr.bench.scaling import run_scaling
from sathmr.bench.setup import Setup, load_images, make_setup, synthetic_images
from sathmr.bench.worker import Entry, WorkerSpec, serve
from sathmr.common.errors import SathmrError
from sathmr.export.onnx import export_network, quantize_export
from sathmr.export.openvino import convert_export
from sathmr.export.trt import build_engines
from sathmr.parity import ParityReport, compare_outputs

STAGES = ("preprocess", "network", "postprocess", "end_to_end")
Log = Callable[[str], None]


class Worker:
    """The parent's handle on one backend process."""

    def __init__(self, spec: WorkerSpec):
        ctx = multiprocessing.get_context("spawn")     # a fresh interpreter: no memory shared with the parent
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, spec), daemon=True)
        self.process.start()
        child.close()
        self.spec = spec

    def receive(self, expect: str):
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the {self.spec.label} benchmark process died "
                               f"(exit code {self.process.join(5) or self.process.exitcode})") from None
        if kind == "error":
            raise SathmrError(f"{self.spec.label}: {payload}")
        if kind == "crash":
            raise RuntimeError(f"the {self.spec.label} benchmark process failed:\n{payload}")
        assert kind == expect, (kind, expect)
        return payload

    def call(self, cmd: str, expect: str):
        self.conn.send(cmd)
        return self.receive(expect)

    def close(self) -> None:
        try:
            self.conn.send("quit")
        except (BrokenPipeError, OSError):
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()


def trt_unavailable(device: str) -> str | None:
    """Why the trt backend cannot run here (None when it can)."""
    if not device.startswith("cuda"):
        return "TensorRT needs --device cuda"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'sathmr[gpu]')"
    return None


def exported_files(entries: Sequence[Entry], setup: Setup, workdir: Path, model_path, engine_path,
                   device: str, log: Log, ir_path=None) -> tuple[dict[str, Path], dict[str, str]]:
    """The file each exported entry runs, by label: the given ``--model``/``--engine`` where its precision
    is the entry's, else exported once per precision with `sathmr export`'s own code (int8 quantises a
    copy of the fp32 export, exactly what `sathmr export --precision int8` writes, without exporting twice)."""
    files, skipped = {}, {}
    trt = [e for e in entries if e.backend == "trt"]
    if trt and engine_path is None and (why := trt_unavailable(device)):
        skipped.update({e.label: why for e in trt})
        log(f"skipping {', '.join(e.label for e in trt)}: {why}")
        trt = []
    exports: dict[tuple[str, str], Path] = {}     # (precision, target) -> export
    if model_path:
        meta = read_meta(model_path)
        exports[meta.precision, meta.target] = Path(model_path)
    if ir_path:
        exports[read_meta(ir_path).precision, "openvino"] = Path(ir_path)

    def onnx_at(precision: str, target: str = "onnxruntime") -> Path:
        if (precision, target) not in exports:
            out = workdir / f"onnx_{precision}_{target}"
            t0 = time.perf_counter()
            if precision == "int8":
                log(f"quantising the fp32 export to int8 ({out}) ...")
                exports[precision, target] = quantize_export(onnx_at("fp32", target), out).path
            else:
                log(f"exporting the network to ONNX ({out}, {precision}, {target}) with `sathmr export`'s defaults ...")
                exports[precision, target] = export_network(setup.network(), setup.body(), out, checkpoint=setup.checkpoint,
                                                            precision=precision, portable=target == "portable")[0].path
            log(f"  done in {time.perf_counter() - t0:.1f} s")
        return exports[precision, target]

    def ir_at(precision: str) -> Path:
        if (precision, "openvino") not in exports:
            log(f"converting the portable fp32 export to OpenVINO IR ({precision}) ...")
            exports[precision, "openvino"] = convert_export(onnx_at("fp32", "portable"), workdir / f"openvino_{precision}",
                                                            precision).path
        return exports[precision, "openvino"]

    for e in entries:
        if e.backend == "ort":
            files[e.label] = onnx_at(e.precision)
        elif e.backend == "openvino":     # converted from the portable fp32 graphs, as `sathmr export --format openvino`
            files[e.label] = ir_at(e.precision)
    engines = {read_meta(engine_path).precision: Path(engine_path)} if engine_path else {}
    for e in trt:
        if e.precision not in engines:     # standard operators only; strongly typed: the graph's own precision
            log(f"building TensorRT engines ({e.precision}) ...")
            engines[e.precision] = build_engines(onnx_at(e.precision, "portable"), workdir / f"trt_{e.precision}",
                                                 fp16=e.precision == "fp16").path
        files[e.label] = engines[e.precision]
    return files, skipped


def collect(samples: list[dict], into: dict) -> None:
    for s in samples:
        for k, v in s["times"].items():
            into["times"][k].append(v)
        for im in s["images"]:
            into["tokens"][im.pop("name")] = im
    for k in into["pass_times"]:      # one pass = every input once: the basis of the speed-ups
        into["pass_times"][k].append(sum(s["times"][k] for s in samples))


def run_passes(workers: list[Worker], iters: int, warmup: int, log: Log) -> dict[str, dict]:
    acc = {w.spec.label: {"times": {s: [] for s in STAGES}, "pass_times": {s: [] for s in STAGES}, "tokens": {}}
           for w in workers}
    n = len(workers)
    for it in range(warmup + iters):
        measured = it >= warmup
        t0 = time.perf_counter()
        for w in workers[it % n:] + workers[:it % n]:       # a different backend goes first each pass
            samples = w.call("pass", "samples")
            if measured:
                collect(samples, acc[w.spec.label])
        log(f"  pass {it + 1}/{warmup + iters}{' (warm-up)' if not measured else ''}: {time.perf_counter() - t0:.1f} s")
    return acc


def reference_label(labels: Sequence[str]) -> str:
    """What speed-ups and accuracy are measured against: PyTorch fp32 (the reference), else the first entry."""
    return "torch" if "torch" in labels else labels[0]


def accuracy(outputs: dict[str, list[dict]], ready: dict, threshold: float) -> dict[str, dict | None]:
    """Each entry's task-level accuracy against the reference entry (``ParityReport.accuracy``)."""
    ref = reference_label(list(outputs))
    res: dict[str, dict | None] = {}
    for label, outs in outputs.items():
        if label == ref:
            res[label] = None
            continue
        rep = ParityReport(ref, label, threshold, tol_mm=float("inf"),
                           precision_a=ready[ref]["info"].get("precision", "fp32"),
                           precision_b=ready[label]["info"].get("precision", "fp32"))
        rep.images = [compare_outputs(o["name"], o["cells"], (r["net"], r["decoded"]), (o["net"], o["decoded"]), threshold)
                      for r, o in zip(outputs[ref], outs)]
        res[label] = rep.accuracy()
    return res


def summarise(acc: dict, ready: dict, stats: dict, batch: int, accuracies: dict | None = None) -> dict:
    levels = ("level0", "level1", "level2")
    out = {}
    for name, a in acc.items():
        per_image = a["tokens"]
        out[name] = {
            "stages": {s: latency_stats(a["times"][s], batch) for s in STAGES},
            "pass_ms": {s: float(np.median(a["pass_times"][s]) * 1000.0) for s in STAGES},
            "peak_rss_mb": stats[name]["peak_rss_mb"],
            "baseline_rss_mb": ready[name]["baseline_rss_mb"],
            "loaded_rss_mb": ready[name]["loaded_rss_mb"],
            "rss_method": "VmHWM of the backend's own process (baseline: the process before loading it)",
            "cuda_max_memory_allocated_mb": stats[name]["cuda_max_memory_allocated_mb"],
            "tokens": {"mean": {k: float(np.mean([t[k] for t in per_image.values()])) for k in levels},
                       "per_image": per_image, "static_sequence": ready[name]["static_sequence"]},
            "info": ready[name]["info"],
            "params": ready[name]["params"],
            "precision": ready[name]["info"].get("precision", "fp32"),
            "compile_s": stats[name].get("compile_s"),
            "accuracy": (accuracies or {}).get(name),
        }
    # Speed-ups compare the median time of a whole pass over the inputs: with images of different sizes a
    # per-sample percentile straddles them (the p50 of 3 passes over 2 images is the mean of two images).
    ref = out.get("torch")
    for res in out.values():
        res["speedup_vs_torch"] = ref["pass_ms"]["end_to_end"] / res["pass_ms"]["end_to_end"] if ref else None
        res["network_speedup_vs_torch"] = ref["pass_ms"]["network"] / res["pass_ms"]["network"] if ref else None
    return out


def run_backends(specs: list[WorkerSpec], iters: int, warmup: int, log: Log) -> dict[str, dict]:
    workers = [Worker(s) for s in specs]
    try:
        ready = {w.spec.label: w.receive("ready") for w in workers}
        log(f"running {', '.join(ready)}: {warmup} warm-up + {iters} passes over {len(specs[0].images)} image(s), "
            f"batch {specs[0].batch}, {specs[0].threads} threads, one process per backend")
        acc = run_passes(workers, iters, warmup, log)
        stats = {w.spec.label: w.call("stats", "stats") for w in workers}
        log(f"accuracy against {reference_label(list(ready))}: every image once more through every entry")
        accuracies = accuracy({w.spec.label: w.call("outputs", "outputs") for w in workers}, ready, specs[0].threshold)
    finally:
        for w in workers:
            w.close()
    return summarise(acc, ready, stats, specs[0].batch, accuracies)


def bench(entries: Sequence[Entry | str], config: str | None = None, images=None, checkpoint=None, smpl_dir=None,
          model_path=None, engine_path=None, batch: int = 1, iters: int = 5, warmup: int = 1, threads: int | None = None,
          device: str = "cpu", scaling: bool = False, scaling_iters: int = 3, scaling_max_s: float = 10.0,
          threshold: float = 0.3, command: str = "sathmr bench", log: Log = lambda s: None, ir_path=None,
          workdir: Path | None = None) -> dict:
    """Everything `sathmr bench` does, as a dict (what --json writes); ``entries``: :class:`Entry` or their
    ``BACKEND[:PRECISION][+compile]`` text. ``workdir``: keep the exports made on the fly there (default: a
    temporary folder)."""
    entries = [e if isinstance(e, Entry) else Entry.parse(e) for e in entries]
    threads = threads or torch.get_num_threads()
    if threads < 1 or iters < 1 or warmup < 0 or batch < 1 or scaling_iters < 1:
        raise SathmrError("--threads, --iters, --batch-size and --scaling-iters must be >= 1, --warmup >= 0")
    torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SathmrError(f"--device {device} requested but PyTorch sees no CUDA device")
    setup = make_setup(config, checkpoint, smpl_dir)
    note = setup.note(smpl_dir is not None)
    log(note)
    inputs = load_images(images) if images else synthetic_images()
    result: dict = {
        "machine": machine_info(threads, device),
        "settings": {"backends": [e.label for e in entries], "config": setup.config, "batch": batch, "iters": iters,
                     "warmup": warmup, "threads": threads, "device": device, "threshold": threshold, "command": command,
                     "speedup_basis": "torch / backend median time of one pass over all inputs (end to end, and network alone)"},
        "model": {"config": setup.config, "random_weights": setup.random_weights, "checkpoint": setup.checkpoint,
                  "smpl_dir": str(setup.smpl_dir), "note": note},
        "inputs": {"source": str(images) if images else "synthetic", "names": [n for n, _ in inputs],
                   "sizes_hw": [list(img.shape[:2]) for _, img in inputs]},
        "backends": {}, "skipped": {},
    }
    network = None
    with contextlib.nullcontext(workdir) if workdir else tempfile.TemporaryDirectory(prefix="sathmr-bench-") as tmp:
        files, result["skipped"] = exported_files(entries, setup, Path(tmp), model_path, engine_path, device, log, ir_path)
        specs = [WorkerSpec(e, setup, inputs, batch, threads, device, threshold, files.get(e.label),
                            {"threads": threads} if "threads" in format_of_backend(e.backend).options else {})
                 for e in entries if e.label not in result["skipped"]]
        if specs:
            result["backends"] = run_backends(specs, iters, warmup, log)
    if scaling:
        log("scaling sweep (network only, PyTorch dynamic):")
        network = setup.network().to(device)
        result["scaling"] = run_scaling(network, device, scaling_iters, scaling_max_s, log=log)
    counted = [r["params"] for r in result["backends"].values() if r["params"]]
    result["model"]["params"] = (sum(p.numel() for p in network.parameters()) if network is not None
                                 else counted[0] if counted else setup.param_count())
    if hasattr(os, "getloadavg"):
        result["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result
