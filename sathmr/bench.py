"""`sathmr bench`: latency and throughput of every backend on the same inputs, per stage, in one process.

Honesty rules, because a benchmark that flatters is worse than none:
  * every backend runs the same prepared inputs, **interleaved** (pass i runs every backend before pass
    i+1, starting with a different backend each pass) so machine drift and thermal state hit all alike;
  * warm-up passes are excluded; threads are pinned (PyTorch and ONNX Runtime intra-op) and reported;
  * stages are timed separately around the shared functions every backend uses (``prepare``/``collate``,
    ``backend.run``, ``decode_outputs`` + ``select_people``), with CUDA events and a synchronisation on GPU;
  * without a checkpoint the weights are random (heads spread so the token set is a realistic mix) and
    the body model is synthetic: the output says so, and the numbers are about speed only.

The scaling sweep forces the token layout through ``scale_map_override`` to show how the network's
latency grows with the number of high-resolution (SAT) cells and with the input size — the curve that
shows what scale-adaptive tokens save compared with running every token at full resolution.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import click
import cv2
import numpy as np
import torch

from sathmr.backends.base import BACKENDS, Backend
from sathmr.config import ModelConfig, get_config
from sathmr.errors import SathmrError
from sathmr.model.sathmr import SATHMR
from sathmr.postprocess import as_arrays, decode_outputs, select_people
from sathmr.preprocess import collate, prepare

STAGES = ("preprocess", "network", "postprocess", "end_to_end")
PERCENTILES = (50, 90, 99)
# forced scale-map cells for the scaling sweep: (conf, scale)
SAT_CELL, LEVEL1_CELL, BACKGROUND_CELL = (1.0, 0.1), (1.0, 0.9), (0.0, 0.5)
SAT_FRACTIONS = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)    # of the 2x2 cell groups, for the SAT sweep
MIXED_LAYOUT = (1 / 8, 1 / 4)                               # SAT / level-1 group fractions at every input size
SIZE_FRACTIONS = (0.35, 0.5, 0.75, 1.0)                     # of the canvas side, rounded to multiples of 56
# Scale-head biases for random weights. Random features barely cluster in space, so the default spread
# (conf bias -1.5) marks nearly every 2x2 group as "person" and leaves no level-2 background. With these
# biases the sat_644 network selects on the two test images 912/1016/57 and 392/558/158 level-0/1/2
# tokens (1985 and 1108 in all): every level present, high-res tokens 20-45 % of the sequence, well
# inside the default static budget (792 SAT cells).
RANDOM_CONF_BIAS, RANDOM_SCALE_BIAS = -2.5, 0.0


# ------------------------------------------------------------------------------------------------
# Measuring
class StageTimer:
    """Marks points in time; ``intervals()`` returns the seconds between consecutive marks.

    On CUDA the marks are events on the current stream and ``intervals`` synchronises first, so GPU
    work is attributed to the stage that queued it; on CPU they are ``perf_counter`` readings.
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class PeakMemory:
    """Peak resident memory of the process while one backend runs.

    On Linux the kernel's high-water mark (VmHWM) is reset before each backend's turn (write 5 to
    /proc/self/clear_refs), so each backend gets its own peak; the peak still includes everything
    resident (the other backends' weights too). Elsewhere the process-lifetime ``ru_maxrss`` is used.
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.resettable = self._try_reset()
        self.method = "VmHWM, reset per backend turn" if self.resettable else "ru_maxrss (process lifetime)"

    @staticmethod
    def _try_reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.resettable:
            self._try_reset()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_rss_mb(self) -> float:
        if self.resettable:
            return _proc_status_mb("VmHWM")
        scale = 1 if sys.platform == "darwin" else 1024     # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20

    def peak_cuda_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None


def _proc_status_mb(key: str) -> float:
    return _proc_file_mb("/proc/self/status", key)


def _proc_file_mb(path: str, key: str) -> float:
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mb() -> float | None:
    try:
        return _proc_status_mb("VmRSS")
    except OSError:
        return None


def latency_stats(seconds: Sequence[float], images_per_sample: int) -> dict[str, float]:
    """p50/p90/p99/mean in ms and images/s (images per sample over the mean latency)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    stats = {f"p{p}_ms": float(np.percentile(ms, p)) for p in PERCENTILES}
    stats.update(mean_ms=float(ms.mean()), min_ms=float(ms.min()), n=int(ms.size),
                 images_per_s=float(images_per_sample * 1000.0 / ms.mean()) if ms.mean() > 0 else float("inf"))
    return stats


def machine_info(threads: int, device: str) -> dict:
    info = {"cpu": _cpu_model(), "cores_logical": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gb": _mem_total_gb(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "threads": threads, "device": device}
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if hasattr(os, "getloadavg"):
        info["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)   # other work on the machine skews figures
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def _mem_total_gb() -> float | None:
    try:
        return round(_proc_file_mb("/proc/meminfo", "MemTotal") / 1024, 1)
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------------
# Setting up
@dataclass
class Setup:
    model: SATHMR
    body: torch.nn.Module
    smpl_dir: Path
    random_weights: bool
    note: str


def build_setup(config: str | None, checkpoint, smpl_dir, device: str, seed: int = 0) -> Setup:
    """The network and body model: a checkpoint's, or the full architecture with random (spread) weights."""
    from sathmr.body import load_body_model, load_mean_params
    from sathmr.model import build_model
    from sathmr.parity import spread_heads
    from sathmr.weights import synthetic_smpl_dir

    if checkpoint is not None:
        from sathmr.api import load_network
        model, info = load_network(checkpoint, config, smpl_dir)
        smpl = Path(info["smpl_dir"])
        note = f"weights: {checkpoint}; body model: {smpl}"
        random = False
    else:
        cfg = get_config(config or "sat_644")
        smpl = Path(smpl_dir) if smpl_dir else synthetic_smpl_dir("full" if cfg.name == "sat_644" else "tiny")
        pose, shape = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in load_mean_params(smpl))
        torch.manual_seed(seed)
        model = spread_heads(build_model(cfg, pose, shape).eval(), seed=seed, conf_bias=RANDOM_CONF_BIAS,
                             scale_bias=RANDOM_SCALE_BIAS)
        random = True
        note = (f"no checkpoint: the {cfg.name} architecture with RANDOM weights (scale and confidence heads spread "
                f"so the token set mixes SAT, level-1 and level-2 tokens) and "
                f"{f'the body model in {smpl}' if smpl_dir else 'the synthetic body model sathmr generates'}. "
                "Timings only: the people found are meaningless.")
    body = load_body_model(smpl)
    if device.startswith("cuda"):
        body = body.to(device)
    return Setup(model.eval(), body, smpl, random, note)


def build_backends(names: Sequence[str], setup: Setup, device: str, threads: int, batch: int, workdir: Path,
                   model_path=None, engine_path=None, checkpoint=None,
                   log: Callable[[str], None] = lambda s: None) -> tuple[list[Backend], dict[str, str], dict[str, float]]:
    """Backends by name → (backends, skipped name → reason, resident MB each added at load)."""
    from sathmr.backends import load_backend
    from sathmr.backends.torch_backend import TorchBackend
    from sathmr.export.budgets import default_budget

    backends, skipped, load_mb = [], {}, {}
    onnx_file: list[Path] = []    # exported at most once, shared by ort and trt

    def onnx_path() -> Path:
        if model_path is not None:
            return Path(model_path)
        if not onnx_file:
            onnx_file.append(export_for_bench(setup, workdir / "bench.onnx", batch, log))
        return onnx_file[0]

    if "ort" in names or ("trt" in names and engine_path is None and trt_unavailable(device) is None):
        onnx_path()    # export first, while the shared model is still on the CPU

    for name in names:
        before = current_rss_mb()
        if name == "torch":
            be = TorchBackend(setup.model, device, info={"weights": "random" if setup.random_weights else str(checkpoint)})
        elif name == "torch-static":
            # its own copy: set_budget mutates the model, and the dynamic backend must stay dynamic
            be = TorchBackend(copy.deepcopy(setup.model), device, default_budget(setup.model.cfg),
                              info={"weights": "random" if setup.random_weights else str(checkpoint)})
        elif name == "ort":
            if model_path is not None and checkpoint is None and setup.random_weights:
                log(f"note: --model {model_path} holds its own weights; the torch backends use random ones "
                    "(token sets may differ)")
            be = load_backend("ort", path=onnx_path(), device=device, threads=threads,
                              config=setup.model.cfg.name, checkpoint=checkpoint)
        elif name == "trt":
            reason = trt_unavailable(device)
            if reason:
                skipped[name] = reason
                log(f"skipping trt: {reason}")
                continue
            be = load_backend("trt", path=engine_path or build_trt_engine(onnx_path(), workdir, log), device=device,
                              config=setup.model.cfg.name, checkpoint=checkpoint)
        else:
            raise SathmrError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
        be.check_body_model(setup.body)
        after = current_rss_mb()
        load_mb[name] = (after - before) if after is not None and before is not None else None
        backends.append(be)
    return backends, skipped, load_mb


def export_for_bench(setup: Setup, path: Path, batch: int, log: Callable[[str], None]) -> Path:
    """Export the in-memory network with the default budgets (what `sathmr export` would write)."""
    from sathmr.export.budgets import default_budget
    from sathmr.export.onnx import ExportMeta, export_onnx

    cfg = setup.model.cfg
    meta = ExportMeta(cfg=cfg, budget=default_budget(cfg), canvas_hw=(cfg.input_size, cfg.input_size), batch=batch,
                      body_fingerprint=getattr(setup.body, "fingerprint", None))
    log(f"exporting the network to ONNX for the ort backend ({path}) ...")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):     # the exporter prints progress on stdout
        export_onnx(setup.model, path, meta, trace_batch=batch)
    log(f"  exported in {time.perf_counter() - t0:.1f} s")
    return path


def trt_unavailable(device: str) -> str | None:
    """Why the trt backend cannot run here (None when it can)."""
    import importlib.util

    if not device.startswith("cuda"):
        return "TensorRT needs --device cuda"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'sathmr[gpu]')"
    return None


def build_trt_engine(onnx: Path, workdir: Path, log: Callable[[str], None]) -> Path:
    from sathmr.export.trt import build_engine

    out = workdir / "bench.engine"
    log(f"building a TensorRT engine from {onnx} ...")
    build_engine(onnx, out)
    return out


def synthetic_images(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """A landscape (16:9) and a portrait (4:5) image with smooth structure, as phone photos have."""
    rng = np.random.default_rng(seed)
    out = []
    for name, (h, w) in (("synthetic_landscape", (1080, 1920)), ("synthetic_portrait", (1350, 1080))):
        small = rng.integers(0, 256, (h // 40 + 1, w // 40 + 1, 3), dtype=np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        out.append((name, img))
    return out


def load_images(images_dir) -> list[tuple[str, np.ndarray]]:
    from sathmr.io import iter_inputs

    return [(it.name, it.load()) for it in iter_inputs(images_dir)]


# ------------------------------------------------------------------------------------------------
# Running
@dataclass
class Sample:
    times: dict[str, float]          # stage → seconds
    counts: np.ndarray               # (B, 3) tokens per level
    overflow: np.ndarray             # (B, 2) SAT cells demoted, context tokens dropped
    people: list[int]                # per image, above the first threshold


def run_batch(backend: Backend, body, images: list[np.ndarray], threshold: float, cuda: bool) -> Sample:
    """One batch through one backend, every stage timed: exactly the path `sathmr infer` takes."""
    cfg = backend.cfg
    timer = StageTimer(cuda)
    if cuda:
        torch.cuda.synchronize()
    timer.mark()
    items = [prepare(img, cfg.input_size, cfg.pad_multiple) for img in images]
    x, img_hw = collate(items, backend.canvas_hw)
    timer.mark()
    net = backend.run(x, img_hw)
    timer.mark()
    arrays = as_arrays(decode_outputs(net, img_hw, body, cfg), cfg)
    people = [len(select_people(arrays, i, threshold, it.scale)) for i, it in enumerate(items)]
    timer.mark()
    pre, network, post = timer.intervals()
    return Sample({"preprocess": pre, "network": network, "postprocess": post, "end_to_end": pre + network + post},
                  net["tok_counts"].numpy(), net["tok_overflow"].numpy(), people)


def static_lengths(backend: Backend) -> dict[str, int] | None:
    """Stage B / C sequence lengths a static backend runs whatever the image (None when dynamic)."""
    from sathmr.export.budgets import stage_lengths

    meta = getattr(backend, "meta", None)
    if meta is not None:
        return stage_lengths(meta.budget)
    model = getattr(backend, "model", None)
    if model is not None and model.tokens.budget.is_static:
        return stage_lengths(model.tokens.budget)
    return None


def run_bench(backends: list[Backend], body, inputs: list[tuple[str, np.ndarray]], batch: int, iters: int,
              warmup: int, threshold: float = 0.3, cuda: bool = False,
              log: Callable[[str], None] = lambda s: None) -> dict[str, dict]:
    """Interleaved passes over ``inputs`` in batches; returns per-backend stage statistics and tokens."""
    if iters < 1 or warmup < 0 or batch < 1:
        raise SathmrError("--iters must be >= 1, --warmup >= 0 and --batch >= 1")
    batches = [inputs[s:s + batch] for s in range(0, len(inputs), batch)]
    mem = PeakMemory(cuda)
    times = {be.name: {s: [] for s in STAGES} for be in backends}
    peak_rss = {be.name: 0.0 for be in backends}
    peak_cuda: dict[str, float | None] = {be.name: None for be in backends}
    tokens: dict[str, dict[str, dict]] = {be.name: {} for be in backends}
    n = len(backends)
    for it in range(warmup + iters):
        measured = it >= warmup
        order = backends[it % n:] + backends[:it % n]     # a different backend goes first each pass
        t0 = time.perf_counter()
        for be in order:
            mem.reset()
            for chunk in batches:
                s = run_batch(be, body, [img for _, img in chunk], threshold, cuda)
                if not measured:
                    continue
                for k, v in s.times.items():
                    times[be.name][k].append(v)
                for (name, _), c, o, p in zip(chunk, s.counts, s.overflow, s.people):
                    tokens[be.name][name] = {"level0": int(c[0]), "level1": int(c[1]), "level2": int(c[2]),
                                             "sat_overflow": int(o[0]), "context_overflow": int(o[1]), "people": p}
            if measured:
                peak_rss[be.name] = max(peak_rss[be.name], mem.peak_rss_mb())
                cuda_mb = mem.peak_cuda_mb()
                if cuda_mb is not None:
                    peak_cuda[be.name] = max(peak_cuda[be.name] or 0.0, cuda_mb)
        log(f"  pass {it + 1}/{warmup + iters}{' (warm-up)' if not measured else ''}: {time.perf_counter() - t0:.1f} s")
    out = {}
    for be in backends:
        per_image = tokens[be.name]
        levels = ("level0", "level1", "level2")
        out[be.name] = {
            "stages": {s: latency_stats(times[be.name][s], batch) for s in STAGES},
            "peak_rss_mb": peak_rss[be.name],
            "rss_method": mem.method,
            "cuda_max_memory_allocated_mb": peak_cuda[be.name],
            "tokens": {"mean": {k: float(np.mean([t[k] for t in per_image.values()])) for k in levels},
                       "per_image": per_image, "static_sequence": static_lengths(be)},
            "info": {k: v for k, v in be.info.items() if isinstance(v, (str, int, float, bool))},
        }
    ref = out.get("torch")
    for res in out.values():
        res["speedup_vs_torch"] = (ref["stages"]["end_to_end"]["p50_ms"] / res["stages"]["end_to_end"]["p50_ms"]
                                   if ref else None)
    return out


# ------------------------------------------------------------------------------------------------
# Scaling: network latency vs the token layout and the input size (PyTorch dynamic)
def forced_layout(hc: int, wc: int, sat_groups: int, level1_groups: int) -> torch.Tensor:
    """A (1, hc, wc, 2) [conf, scale] map: the first aligned 2x2 groups (raster order) SAT, the next
    level-1, the rest background — so the token count is exactly 16·sat + 4·level1 + background groups."""
    n = (hc // 2) * (wc // 2)
    if not (0 <= sat_groups and 0 <= level1_groups and sat_groups + level1_groups <= n):
        raise ValueError(f"{sat_groups} + {level1_groups} groups do not fit {n}")
    kinds = torch.full((n,), 2)
    kinds[:sat_groups] = 0
    kinds[sat_groups:sat_groups + level1_groups] = 1
    table = torch.tensor([SAT_CELL, LEVEL1_CELL, BACKGROUND_CELL])
    g = table[kinds].view(hc // 2, wc // 2, 2)
    return g.repeat_interleave(2, 0).repeat_interleave(2, 1)[None]


def time_network(model: SATHMR, side: int, sat_groups: int, level1_groups: int, iters: int, max_seconds: float,
                 device: str) -> dict:
    """Median network latency (PyTorch dynamic) of a square ``side`` input with a forced layout."""
    cfg = model.cfg
    hc = wc = side // cfg.cell_size
    dev = torch.device(device)
    g = torch.Generator().manual_seed(side)
    x = torch.randn(1, 3, side, side, generator=g).to(dev)
    hw = torch.tensor([[side, side]], device=dev)
    smap = forced_layout(hc, wc, sat_groups, level1_groups).to(dev)
    cuda = dev.type == "cuda"
    samples, counts = [], None
    with torch.inference_mode():
        while len(samples) < iters and (not samples or sum(samples) < max_seconds):
            timer = StageTimer(cuda)
            timer.mark()
            out = model(x, hw, scale_map_override=smap)
            timer.mark()
            samples.append(timer.intervals()[0])
            counts = out["tokens"]["tok_counts"][0].tolist()
    tokens = sum(counts)
    return {"side": side, "cells": hc * wc, "sat_cells": 4 * sat_groups, "level1_cells": 4 * level1_groups,
            "tokens": {"level0": counts[0], "level1": counts[1], "level2": counts[2], "total": tokens},
            "stage_c_sequence": tokens + 1, "median_ms": float(np.median(samples) * 1000), "n": len(samples)}


def run_scaling(model: SATHMR, device: str = "cpu", iters: int = 3, max_seconds: float = 10.0,
                sat_fractions: Sequence[float] = SAT_FRACTIONS, size_fractions: Sequence[float] = SIZE_FRACTIONS,
                log: Callable[[str], None] = lambda s: None) -> dict:
    """Two sweeps. Budget: 0 → all SAT cells on the full canvas (all = every token at full resolution,
    the model SAT avoids running), background elsewhere, plus the all-level-1 (low-resolution) point.
    Input size: square inputs of growing side with a fixed mixed layout and with everything high-res."""
    cfg = model.cfg
    S, m = cfg.input_size, cfg.pad_multiple
    cache: dict[tuple[int, int, int], dict] = {}

    def point(side: int, sat: int, l1: int) -> dict:
        key = (side, sat, l1)
        if key not in cache:
            cache[key] = time_network(model, side, sat, l1, iters, max_seconds, device)
            r = cache[key]
            log(f"  side {side}, {r['sat_cells']} SAT + {r['level1_cells']} level-1 cells: {r['tokens']['total']} tokens, "
                f"{r['median_ms']:.1f} ms (n={r['n']})")
        return cache[key]

    groups = (S // cfg.cell_size // 2) ** 2
    time_network(model, S, 0, 0, 1, 0.0, device)     # warm-up at the cheapest point, not reported
    budget = [dict(point(S, round(f * groups), 0), fraction=f) for f in sat_fractions]
    low_res = point(S, 0, groups)
    sides = sorted({max(1, round(S / m * f)) * m for f in size_fractions})
    sizes = []
    for side in sides:
        n = (side // cfg.cell_size // 2) ** 2
        sat, l1 = round(MIXED_LAYOUT[0] * n), round(MIXED_LAYOUT[1] * n)
        sizes.append({"side": side, "mixed": point(side, sat, l1), "all_high_res": point(side, n, 0)})
    return {"backend": "torch", "device": device, "canvas": S, "budget": budget, "all_level1": low_res,
            "sizes": sizes, "mixed_layout": {"sat_group_fraction": MIXED_LAYOUT[0],
                                             "level1_group_fraction": MIXED_LAYOUT[1]},
            "iters": iters, "max_seconds_per_point": max_seconds}


def plot_scaling(scaling: dict, path: Path) -> Path:
    """The two sweeps side by side as a PNG (matplotlib, imported only here)."""
    from sathmr.optional import require

    mpl = require("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    bud = scaling["budget"]
    a.plot([p["sat_cells"] for p in bud], [p["median_ms"] for p in bud], "o-", label="SAT cells, rest background")
    lo = scaling["all_level1"]
    a.axhline(lo["median_ms"], color="grey", ls="--", label=f"all level-1 ({lo['tokens']['total']} tokens, low-res)")
    for p in bud:
        a.annotate(f"{p['tokens']['total']} tok", (p["sat_cells"], p["median_ms"]), textcoords="offset points",
                   xytext=(4, -12), fontsize=7)
    a.set_xlabel(f"high-resolution (SAT) cells on the {scaling['canvas']}² canvas")
    a.set_ylabel("network latency, median ms")
    a.set_title("Latency vs high-res token budget")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    sides = [s["side"] for s in scaling["sizes"]]
    b.plot(sides, [s["mixed"]["median_ms"] for s in scaling["sizes"]], "o-", label="scale-adaptive (mixed layout)")
    b.plot(sides, [s["all_high_res"]["median_ms"] for s in scaling["sizes"]], "s-", label="every token at full resolution")
    b.set_xlabel("input side (px, square)")
    b.set_ylabel("network latency, median ms")
    b.set_title("Latency vs input size")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.suptitle(f"SAT-HMR network, PyTorch dynamic, {scaling['device']}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------
# Reporting
def _fmt_mb(mb: float | None) -> str:
    return f"{mb:.0f}" if mb is not None else "-"


def _fmt_tokens(t: dict) -> str:
    return f"{t['level0']:.0f}/{t['level1']:.0f}/{t['level2']:.0f}"


def backend_rows(result: dict) -> list[list[str]]:
    rows = []
    for name, r in result["backends"].items():
        for s in STAGES:
            st = r["stages"][s]
            rows.append([name, s, f"{st['p50_ms']:.1f}", f"{st['p90_ms']:.1f}", f"{st['p99_ms']:.1f}",
                         f"{st['images_per_s']:.3f}",
                         f"{r['speedup_vs_torch']:.2f}x" if s == "end_to_end" and r["speedup_vs_torch"] else ""])
    return rows


BACKEND_HEADER = ["backend", "stage", "p50 ms", "p90 ms", "p99 ms", "images/s", "vs torch"]


def resource_rows(result: dict) -> list[list[str]]:
    rows = []
    for name, r in result["backends"].items():
        seq = r["tokens"]["static_sequence"]
        cuda = r["cuda_max_memory_allocated_mb"]
        rows.append([name, _fmt_tokens(r["tokens"]["mean"]),
                     f"static {seq['stage_c']}" if seq else "dynamic",
                     f"{r['peak_rss_mb']:.0f}", _fmt_mb(result["load_rss_mb"].get(name)),
                     _fmt_mb(cuda)])
    return rows


RESOURCE_HEADER = ["backend", "tokens L0/L1/L2 (mean)", "stage-C sequence", "peak RSS MB", "RSS added at load MB",
                   "CUDA max alloc MB"]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if i > 1 else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
                      *("| " + " | ".join(map(str, r)) + " |" for r in rows)])


def scaling_rows(scaling: dict) -> tuple[list[list[str]], list[list[str]]]:
    budget = [[str(p["sat_cells"]), f"{p['fraction']:.3g}", str(p["tokens"]["total"]), f"{p['median_ms']:.1f}", str(p["n"])]
              for p in scaling["budget"]]
    lo = scaling["all_level1"]
    budget.append([f"0 (all {lo['level1_cells']} level-1)", "-", str(lo["tokens"]["total"]), f"{lo['median_ms']:.1f}", str(lo["n"])])
    sizes = [[str(s["side"]), str(s["mixed"]["tokens"]["total"]), f"{s['mixed']['median_ms']:.1f}",
              str(s["all_high_res"]["tokens"]["total"]), f"{s['all_high_res']['median_ms']:.1f}",
              f"{s['all_high_res']['median_ms'] / s['mixed']['median_ms']:.2f}x"] for s in scaling["sizes"]]
    return budget, sizes


SCALING_BUDGET_HEADER = ["SAT cells", "fraction", "tokens", "network ms (median)", "n"]
SCALING_SIZE_HEADER = ["side px", "mixed tokens", "mixed ms", "all-high-res tokens", "all-high-res ms", "saving"]


def format_report(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    lines = [result["model"]["note"], "",
             f"machine: {m['cpu']}, {m['cores_logical']} logical cores; torch {m['torch']}, onnxruntime "
             f"{m['onnxruntime']}; threads {m['threads']}; device {m['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}; "
             f"load average {m.get('load_average_1m_at_start')} -> {m.get('load_average_1m_at_end')}",
             f"inputs: {', '.join(result['inputs']['names'])} ({result['inputs']['source']}); batch {s['batch']}, "
             f"{s['iters']} measured passes after {s['warmup']} warm-up, backends interleaved", ""]
    if result["backends"]:
        lines += [text_table(BACKEND_HEADER, backend_rows(result)), "", text_table(RESOURCE_HEADER, resource_rows(result))]
    for name, why in result["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    if result.get("scaling"):
        budget, sizes = scaling_rows(result["scaling"])
        lines += ["", f"scaling (network only, PyTorch dynamic, square {result['scaling']['canvas']} canvas):",
                  text_table(SCALING_BUDGET_HEADER, budget), "", text_table(SCALING_SIZE_HEADER, sizes)]
    return "\n".join(lines)


def format_markdown(result: dict, plot_name: str | None = None) -> str:
    m, s = result["machine"], result["settings"]
    out = ["## Performance", "",
           f"Measured with `{s['command']}` on {m['cpu']} ({m['cores_logical']} logical cores, {m['threads']} threads, "
           f"device {m['device']}{', ' + m['gpu'] if m.get('gpu') else ''}), torch {m['torch']}, onnxruntime "
           f"{m['onnxruntime']}, {m['platform']}; 1-minute load average {m.get('load_average_1m_at_start')} at the "
           f"start, {m.get('load_average_1m_at_end')} at the end (other processes share the machine when it exceeds "
           "the thread count).", "",
           f"*{result['model']['note']}*", "",
           f"Inputs: {', '.join(result['inputs']['names'])}; batch {s['batch']}; {s['iters']} measured passes after "
           f"{s['warmup']} warm-up; backends interleaved pass by pass. Pre-processing excludes file decoding; "
           "post-processing includes SMPL (vertices) and thresholding. Token counts are per image (level 0 = high-res).", ""]
    if result["backends"]:
        out += [md_table(BACKEND_HEADER, backend_rows(result)), "", md_table(RESOURCE_HEADER, resource_rows(result)), ""]
    if result.get("scaling"):
        budget, sizes = scaling_rows(result["scaling"])
        out += ["### Scaling (network only, PyTorch dynamic)", "",
                f"Token layout forced through the scale map on a square {result['scaling']['canvas']} canvas: SAT cells "
                "become 4 full-resolution tokens each, the rest of the image is background (one level-2 token per 2x2 "
                "group). All cells SAT = every token at full resolution, the cost SAT avoids.", "",
                md_table(SCALING_BUDGET_HEADER, budget), "",
                f"Input size: mixed layout = {MIXED_LAYOUT[0]:g} of the 2x2 groups SAT, {MIXED_LAYOUT[1]:g} level-1, "
                "the rest background.", "", md_table(SCALING_SIZE_HEADER, sizes), ""]
        if plot_name:
            out += [f"![scaling]({plot_name})", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
def bench(backend_names: Sequence[str], config: str | None = None, images=None, checkpoint=None, smpl_dir=None,
          model_path=None, engine_path=None, batch: int = 1, iters: int = 5, warmup: int = 1, threads: int | None = None,
          device: str = "cpu", scaling: bool = False, scaling_iters: int = 3, scaling_max_s: float = 10.0,
          threshold: float = 0.3, command: str = "sathmr bench", log: Callable[[str], None] = lambda s: None) -> dict:
    """Everything `sathmr bench` does, as a dict (what --json writes)."""
    threads = threads or torch.get_num_threads()
    if threads < 1 or iters < 1 or warmup < 0 or batch < 1 or scaling_iters < 1:
        raise SathmrError("--threads, --iters, --batch and --scaling-iters must be >= 1, --warmup >= 0")
    torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SathmrError(f"--device {device} requested but PyTorch sees no CUDA device")
    setup = build_setup(config, checkpoint, smpl_dir, device)
    log(setup.note)
    inputs = load_images(images) if images else synthetic_images()
    result: dict = {
        "machine": machine_info(threads, device),
        "settings": {"backends": list(backend_names), "config": setup.model.cfg.name, "batch": batch, "iters": iters,
                     "warmup": warmup, "threads": threads, "device": device, "threshold": threshold, "command": command,
                     "speedup_basis": "torch end_to_end p50 / backend end_to_end p50"},
        "model": {"config": setup.model.cfg.name, "params": sum(p.numel() for p in setup.model.parameters()),
                  "random_weights": setup.random_weights, "checkpoint": str(checkpoint) if checkpoint else None,
                  "smpl_dir": str(setup.smpl_dir), "note": setup.note},
        "inputs": {"source": str(images) if images else "synthetic", "names": [n for n, _ in inputs],
                   "sizes_hw": [list(img.shape[:2]) for _, img in inputs]},
        "backends": {}, "skipped": {}, "load_rss_mb": {},
    }
    with tempfile.TemporaryDirectory(prefix="sathmr-bench-") as tmp:
        if backend_names:
            backends, result["skipped"], result["load_rss_mb"] = build_backends(
                backend_names, setup, device, threads, batch, Path(tmp), model_path, engine_path, checkpoint, log)
            if backends:
                log(f"running {', '.join(b.name for b in backends)}: {warmup} warm-up + {iters} passes over "
                    f"{len(inputs)} image(s), batch {batch}, {threads} threads")
                result["backends"] = run_bench(backends, setup.body, inputs, batch, iters, warmup, threshold,
                                               device.startswith("cuda"), log)
            del backends
    if scaling:
        log("scaling sweep (network only, PyTorch dynamic):")
        result["scaling"] = run_scaling(setup.model.to(device), device, scaling_iters, scaling_max_s, log=log)
    if hasattr(os, "getloadavg"):
        result["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


def command_line() -> str:
    """The current `sathmr bench` invocation, from the options that differ from their defaults."""
    ctx = click.get_current_context()
    parts = [ctx.command_path]
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        if v is None or v is False or v == p.default:
            continue
        flag = max(p.opts, key=len)
        parts.append(flag if v is True else f"{flag} {v}")
    return " ".join(parts)


def parse_backends(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if bad:
        raise SathmrError(f"--backend: unknown {', '.join(bad)}; choose from {', '.join(BACKENDS)}")
    if len(set(names)) != len(names):
        raise SathmrError(f"--backend {text}: a backend is listed twice")
    return names


@click.command("bench")
@click.option("--backend", "backend_text", default="torch,ort", show_default=True,
              help=f"Comma-separated backends to compare ({', '.join(BACKENDS)}); empty with --scaling for the sweep only.")
@click.option("--config", default=None, help="Model config (default sat_644: the full-size network).")
@click.option("--images", type=click.Path(exists=True), help="Image or folder of images (default: two synthetic images).")
@click.option("--synthetic", is_flag=True, help="Use two synthetic images (the default when --images is not given).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Weights (default: random weights of the full architecture).")
@click.option("--smpl-dir", type=click.Path(file_okay=False), help="SMPL folder (default: the synthetic body model).")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), help="Exported .onnx for ort (default: export on the fly).")
@click.option("--engine", "engine_path", type=click.Path(exists=True, dir_okay=False), help="TensorRT engine for trt (default: built on the fly).")
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--iters", type=int, default=5, show_default=True, help="Measured passes over the inputs.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Warm-up passes (not measured).")
@click.option("--threads", type=int, default=None, help="Intra-op threads for PyTorch and ONNX Runtime (default: PyTorch's).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--scaling", is_flag=True, help="Also sweep network latency vs high-res tokens and input size.")
@click.option("--scaling-iters", type=int, default=3, show_default=True, help="Runs per scaling point (fewer when slow).")
@click.option("--scaling-max-s", type=float, default=10.0, show_default=True, help="Stop repeating a scaling point after this many seconds.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write the scaling plot here (PNG; needs matplotlib).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every figure and the machine description as JSON.")
def bench_command(backend_text, config, images, synthetic, checkpoint, smpl_dir, model_path, engine_path, batch, iters,
                  warmup, threads, device, scaling, scaling_iters, scaling_max_s, plot_path, json_path):
    """Latency and throughput per stage for several backends on the same inputs, interleaved."""
    from sathmr.io import write_json

    if synthetic and images:
        raise SathmrError("--synthetic and --images exclude each other")
    names = parse_backends(backend_text)
    if not names and not scaling:
        raise SathmrError("nothing to do: give --backend and/or --scaling")
    if plot_path and not scaling:
        raise SathmrError("--plot draws the scaling sweep: add --scaling")
    log = lambda s: click.echo(s, err=True)  # noqa: E731 - progress on stderr, the table on stdout
    result = bench(names, config, images, checkpoint, smpl_dir, model_path, engine_path, batch, iters, warmup, threads,
                   device, scaling, scaling_iters, scaling_max_s, command=command_line(), log=log)
    click.echo(format_report(result))
    if scaling and plot_path:
        click.echo(f"wrote {plot_scaling(result['scaling'], Path(plot_path))}")
    if json_path:
        write_json(Path(json_path), result)
        click.echo(f"wrote {json_path}")
