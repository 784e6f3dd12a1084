"""One backend in a process of its own, driven pass by pass by the benchmark runner.

A process per backend makes its memory figure honest: the high-water mark of the process is what that
backend costs (weights, arenas, activations, plus the interpreter and torch, reported separately as the
baseline), not the sum of every engine loaded so far. The runner sends one command at a time and waits
for the answer, so backends never compete for the CPU and passes stay interleaved.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import torch

from sathmr.backends import Backend, load_backend
from sathmr.backends.precision import BACKEND_PRECISIONS, TORCH_BACKENDS, precision_kwargs
from sathmr.bench.measure import current_rss_mb, peak_rss_mb
from sathmr.bench.setup import Setup
from sathmr.common.errors import SathmrError
from sathmr.common.timing import StageTimer
from sathmr.model.tokens import default_budget, stage_lengths
from sathmr.runtime.predictor import Predictor


@dataclass(frozen=True)
class Entry:
    """One benchmarked configuration: a backend at a precision, optionally torch.compile'd.
    Written ``BACKEND[:PRECISION][+compile]`` (``torch:bf16``, ``ort:int8``, ``torch+compile``)."""
    backend: str
    precision: str = "fp32"
    compile: bool = False

    @property
    def label(self) -> str:
        return self.backend + ("" if self.precision == "fp32" else f":{self.precision}") + ("+compile" if self.compile else "")

    @classmethod
    def parse(cls, text: str) -> Entry:
        body, plus, flag = text.strip().partition("+")
        name, _, precision = body.partition(":")
        if name not in BACKEND_PRECISIONS:
            raise SathmrError(f"--backend: unknown {name!r} in {text!r}; choose from {', '.join(BACKEND_PRECISIONS)}")
        precision = precision or "fp32"
        if precision not in BACKEND_PRECISIONS[name]:
            raise SathmrError(f"--backend {text}: {name} runs {', '.join(BACKEND_PRECISIONS[name])}, not {precision!r}")
        if plus and (flag != "compile" or name not in TORCH_BACKENDS):
            raise SathmrError(f"--backend {text}: the only suffix is +compile, on torch backends")
        return cls(name, precision, bool(plus))


@dataclass
class WorkerSpec:
    entry: Entry
    setup: Setup
    images: list[tuple[str, np.ndarray]]
    batch: int
    threads: int
    device: str
    threshold: float
    model_path: Path | None = None            # the exported file of an ort/trt backend
    options: dict = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return self.entry.backend

    @property
    def label(self) -> str:
        return self.entry.label


def open_backend(spec: WorkerSpec) -> Backend:
    e = spec.entry
    if e.backend in TORCH_BACKENDS:
        model = spec.setup.network()
        if e.backend == "torch-static":
            model.set_budget(default_budget(model.cfg))     # this process owns the model: no copy
        # emulated bf16 runs (and says so in its label): a benchmark measures what the user asked for
        return load_backend(e.backend, model=model, device=spec.device,
                            info={"weights": "random" if spec.setup.random_weights else spec.setup.checkpoint},
                            **precision_kwargs(e.precision, e.compile, allow_emulated=True, backend=e.backend))
    return load_backend(e.backend, model_path=spec.model_path, device=spec.device, config=spec.setup.config,
                        checkpoint=spec.setup.checkpoint, precision=e.precision, **spec.options)


def static_lengths(backend: Backend) -> dict[str, int] | None:
    """Stage B / C sequence lengths a static backend runs whatever the image (None when dynamic)."""
    meta = getattr(backend, "meta", None)
    budget = getattr(meta, "budget", None)
    model = getattr(backend, "model", None)
    if budget is None and model is not None:
        budget = model.tokens.budget
    return stage_lengths(budget) if budget is not None and budget.is_static else None


def run_pass(predictor: Predictor, spec: WorkerSpec) -> list[dict]:
    """Every batch once, each stage timed: exactly the path `sathmr infer` takes (files decoded beforehand)."""
    cuda = spec.device.startswith("cuda")
    samples = []
    for s in range(0, len(spec.images), spec.batch):
        chunk = spec.images[s:s + spec.batch]
        timer = StageTimer(cuda)
        if cuda:
            torch.cuda.synchronize()
        timer.mark()
        items = [predictor.prepare(img) for _, img in chunk]
        out = predictor.run_batch(items, [name for name, _ in chunk], timer)
        pre, network, post = timer.intervals()
        samples.append({"times": {"preprocess": pre, "network": network, "postprocess": post,
                                  "end_to_end": pre + network + post},
                        "images": [{"name": r.name, **r.tokens.to_json(), "people": len(r.people[spec.threshold])}
                                   for r in out.results]})
    return samples


def outputs(predictor: Predictor, spec: WorkerSpec) -> list[dict]:
    """Every image once, alone: the network and decoded outputs the parent compares across entries
    (``sathmr.parity.compare_outputs``), and each image's own level-1 grid."""
    res = []
    for name, img in spec.images:
        item = predictor.prepare(img)
        out = predictor.run_batch([item], [name])
        cells = tuple(s // predictor.cfg.cell_size for s in item.tensor.shape[1:])
        res.append({"name": name, "cells": cells, "net": {k: v.numpy() for k, v in out.net.items()},
                    "decoded": out.decoded})
    return res


def serve(conn: Connection, spec: WorkerSpec) -> None:
    """Process entry point: build the backend, report, then answer 'pass' / 'outputs' / 'stats' until 'quit'."""
    try:
        torch.set_num_threads(spec.threads)
        baseline = current_rss_mb()
        try:
            backend = open_backend(spec)
            body = spec.setup.body(spec.device)
            backend.check_body_model(body)
        except SathmrError as exc:
            conn.send(("error", str(exc)))
            return
        predictor = Predictor(backend, body, (spec.threshold,))
        backend.warmup()
        conn.send(("ready", {"name": backend.name, "baseline_rss_mb": baseline, "loaded_rss_mb": current_rss_mb(),
                             "static_sequence": static_lengths(backend),
                             "params": sum(p.numel() for p in backend.model.parameters()) if hasattr(backend, "model") else None,
                             "info": {k: v for k, v in backend.info.items() if isinstance(v, (str, int, float, bool))}}))
        if spec.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        while (cmd := conn.recv()) != "quit":
            if cmd == "pass":
                conn.send(("samples", run_pass(predictor, spec)))
            elif cmd == "outputs":
                conn.send(("outputs", outputs(predictor, spec)))
            elif cmd == "stats":
                cuda = torch.cuda.max_memory_allocated() / 2**20 if spec.device.startswith("cuda") else None
                conn.send(("stats", {"peak_rss_mb": peak_rss_mb(), "cuda_max_memory_allocated_mb": cuda,
                                     "compile_s": getattr(backend, "compile_seconds", None)}))
    except BaseException:   # noqa: BLE001 - shipped to the parent, which re-raises it with this traceback
        conn.send(("crash", traceback.format_exc()))
