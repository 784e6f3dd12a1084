"""OpenVINO backend: runs a two-stage export converted by `sathmr export --format openvino`.

The two IR graphs run as two compiled models with the shared token selection between them
(``TwoStage``), exactly as the ONNX Runtime backend runs the ONNX graphs; every axis is dynamic.
Everything the graphs need comes from their metadata (``sathmr.backends.ir``).

What is forced, and why:
  * ``INFERENCE_PRECISION_HINT`` is f32 at every precision. OpenVINO's own default on CPUs with AMX or
    AVX512-BF16 (and on GPUs: f16) runs every float product in reduced precision; stage A's scale map
    is thresholded by the token selection, so a silent bf16 moves the token set. The compiled models'
    precision is read back and checked.
  * int8 exports (int8 weights in stages B/C) run with the CPU plugin's dynamic quantisation of the
    activations (``DYNAMIC_QUANTIZATION_GROUP_SIZE``: one scale per ``INT8_ACTIVATION_GROUP`` inputs of a
    token); fp32 ones with it off, so an fp32 run is float32 throughout.
  * A device OpenVINO does not offer is an error, never a silent fall-back to the CPU.

``performance_hint``: ``latency`` (the default: one stream using every thread, what one caller wants)
or ``throughput`` (OpenVINO's streams: each thread calling ``run`` gets its own inference requests, so
concurrent callers — `sathmr serve` — run side by side).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from sathmr.backends.exported import ExportedBackend
from sathmr.backends.ir import IR_SUFFIX
from sathmr.backends.meta import GRAPHS, QUERY_OUTPUTS, Artifact
from sathmr.backends.two_stage import selection_feeds
from sathmr.common.errors import SathmrError
from sathmr.common.optional import require
from sathmr.model.tokens import Selection

PERFORMANCE_HINTS = ("latency", "throughput")
#: inputs per activation scale of the int8 graphs' dynamic quantisation: 128 measured fastest on sat_644 (3.7 s a pass
#: over the photos, against 4.4 s at OpenVINO's default 32 and 5.0 s with one scale per token; ORT int8 3.7 s)
INT8_ACTIVATION_GROUP = 128


def ov_device(device: str, available: list[str]) -> str:
    """OpenVINO's name for ``device`` ('cpu', 'gpu', 'gpu.1' or 'gpu:1'); refuses what it does not offer."""
    dev = device.strip().upper().replace(":", ".")
    if dev == "CPU":
        return dev
    if dev == "GPU" or dev.startswith("GPU."):
        if dev not in available and not (dev == "GPU" and any(d.startswith("GPU") for d in available)):
            raise SathmrError(f"--device {device}: OpenVINO offers no such device here (available: {', '.join(available)});"
                              " it needs an Intel GPU and its compute runtime, or use --device cpu")
        return dev
    raise SathmrError(f"--device {device!r}: the openvino backend supports cpu, gpu, gpu.N")


def compile_config(device: str, precision: str, threads: int | None, hint: str | None) -> dict[str, str]:
    """The properties every graph is compiled with (see the module docstring)."""
    hint = (hint or "latency").lower()
    if hint not in PERFORMANCE_HINTS:
        raise SathmrError(f"performance hint {hint!r}: choose from {', '.join(PERFORMANCE_HINTS)}")
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": hint.upper()}
    if device == "CPU":
        cfg["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(INT8_ACTIVATION_GROUP if precision == "int8" else 0)
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = str(threads)
    elif threads:
        raise SathmrError("--threads: CPU threads of the openvino backend; it runs on a GPU here")
    return cfg


class OpenVinoBackend(ExportedBackend):
    """OpenVINO on the IR of ``sathmr export --format openvino`` (two-stage; CPU, Intel GPUs), at the
    precision it was exported with and never a lower one picked by the plugin (f32 hint, read back)."""
    name = "openvino"
    suffix = IR_SUFFIX

    def __init__(self, compiled: dict, artifact: Artifact, device: str, info: dict):
        self.compiled = compiled
        self.local = threading.local()      # this thread's inference requests, by graph
        super().__init__(artifact, device, info)

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu", threads: int | None = None,
                  performance_hint: str | None = None, config: str | None = None,
                  checkpoint: str | Path | None = None, precision: str | None = None) -> OpenVinoBackend:
        """Open the IR folder ``path``; ``config``/``checkpoint``/``precision``, when given, must be the ones it
        was exported with."""
        ov = require("openvino")
        art = cls.read_checked(path, config, checkpoint, precision)
        meta = art.meta
        core = ov.Core()
        dev = ov_device(device, core.available_devices)
        props = compile_config(dev, meta.precision, threads, performance_hint)
        compiled = {}
        for g, f in art.files.items():
            try:
                model = core.read_model(str(f))
            except RuntimeError as exc:      # a damaged .xml/.bin: the user's file
                raise SathmrError(f"OpenVINO cannot read {f}: {str(exc).splitlines()[0]}") from None
            names = tuple(i.get_any_name() for i in model.inputs)
            if names != GRAPHS[g][0]:
                raise SathmrError(f"{f}: graph inputs {list(names)} are not {list(GRAPHS[g][0])}; re-export it")
            compiled[g] = core.compile_model(model, dev, props)
        used = {c.get_property("INFERENCE_PRECISION_HINT") for c in compiled.values()}
        if used != {ov.Type.f32}:
            raise RuntimeError(f"OpenVINO compiled {path} at {used}, not the f32 it was asked for")   # never silently
        runtime = f"OpenVINO {ov.__version__.split('-')[0]}, {dev}"
        info = cls.describe(path, dev, runtime, art, runtime=runtime, batch="dynamic", inference_precision="f32",
                            performance_hint=props["PERFORMANCE_HINT"].lower(),
                            threads=threads or int(next(iter(compiled.values())).get_property("INFERENCE_NUM_THREADS")))
        return cls(compiled, art, dev, info)

    def run(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        images, img_hw = images.detach().cpu().float().contiguous(), img_hw.detach().cpu().to(torch.int64)
        return self.run_layout(images, img_hw)

    def _request(self, graph: str):
        requests = getattr(self.local, "requests", None)
        if requests is None:
            requests = self.local.requests = {g: c.create_infer_request() for g, c in self.compiled.items()}
        return requests[graph]

    # the images are read in place (share_inputs); stage A's tensors stay in its request's buffers until the
    # tokens graph has read them, and only what leaves the backend is copied out
    def _scale_map(self, images: torch.Tensor, img_hw: torch.Tensor):
        out = self._request("scale_map").infer({"images": images.numpy(), "img_hw": img_hw.numpy()},
                                               share_inputs=True, share_outputs=True)
        return torch.from_numpy(np.array(out["scale_map"])), (out["t1"], out["cls"])

    def _tokens(self, images: torch.Tensor, stage_a, sel: Selection) -> dict[str, torch.Tensor]:
        t1, cls = stage_a
        feeds = {"images": images.numpy(), "t1": t1, "cls": cls,
                 **{k: np.ascontiguousarray(v.numpy()) for k, v in selection_feeds(sel).items()}}
        out = self._request("tokens").infer(feeds, share_inputs=True, share_outputs=False)
        return {k: torch.from_numpy(out[k]) for k in QUERY_OUTPUTS}
