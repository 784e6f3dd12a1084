"""ONNX Runtime backend: runs a graph written by `sathmr export --format onnx`.

Everything the graph needs (config, canvas, budgets, fixed batch) comes from the file's metadata, so
the only user inputs are the file and the device. A requested execution provider that ONNX Runtime
cannot offer is an error, never a silent fall-back to CPU: a "CUDA" benchmark that quietly ran on the
CPU is worse than no number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sathmr.backends.base import Backend, fixed_batches
from sathmr.errors import SathmrError
from sathmr.export.meta import INPUT_NAMES, ExportMeta, file_sha256, read_meta
from sathmr.model.sathmr import NET_OUTPUTS
from sathmr.optional import require


def providers_for(device: str, available: list[str]) -> list:
    """The ORT provider list for ``device`` ('cpu', 'cuda', 'cuda:1'); refuses what is not installed."""
    dev = device.lower()
    if dev == "cpu":
        return ["CPUExecutionProvider"]
    if dev == "cuda" or dev.startswith("cuda:"):
        if "CUDAExecutionProvider" not in available:
            raise SathmrError(f"--device {device}: ONNX Runtime has no CUDAExecutionProvider here (available: "
                              f"{', '.join(available)}); install onnxruntime-gpu (pip install 'sathmr[gpu]') "
                              "or use --device cpu")
        index = int(dev.split(":", 1)[1]) if ":" in dev else 0
        # CPU stays in the list only for the few ops CUDA lacks (shape bookkeeping), as ORT intends
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise SathmrError(f"--device {device!r}: the ort backend supports cpu, cuda, cuda:N")


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, session, meta: ExportMeta, info: dict):
        self.session = session
        self.meta = meta
        self.cfg = meta.cfg
        self.canvas_hw = meta.canvas_hw
        self.fixed_batch = meta.batch
        self.info = info

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu", threads: int | None = None,
                  config: str | None = None, checkpoint: str | Path | None = None) -> "OrtBackend":
        """Open ``path``; ``config``/``checkpoint``, when given, must be the ones it was exported from."""
        ort = require("onnxruntime")
        path = Path(path)
        meta = read_meta(path)
        meta.check(config=config, checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None, source=str(path))
        providers = providers_for(device, ort.get_available_providers())
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        errors = ort.capi.onnxruntime_pybind11_state
        try:
            session = ort.InferenceSession(str(path), opts, providers=providers)
        except (errors.InvalidProtobuf, errors.InvalidGraph, errors.NoSuchFile) as exc:   # a bad file: the user's
            raise SathmrError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None
        used = session.get_providers()
        if providers[0] != "CPUExecutionProvider" and "CUDAExecutionProvider" not in used:
            raise SathmrError(f"--device {device}: ONNX Runtime could not start CUDA for {path} (providers: {used})")
        names = [i.name for i in session.get_inputs()]
        if tuple(names) != INPUT_NAMES:
            raise SathmrError(f"{path}: graph inputs {names} are not {list(INPUT_NAMES)}; re-export it")
        info = {"path": str(path), "device": device, "providers": ",".join(used), "config": meta.cfg.name,
                "budget_sat": meta.budget.sat_cells, "budget_context": meta.budget.context,
                "canvas": f"{meta.canvas_hw[0]}x{meta.canvas_hw[1]}", "batch": meta.batch or "dynamic",
                "fp16": meta.fp16, "note": f"model: {path} (ONNX Runtime, {used[0]})"}
        return cls(session, meta, info)

    def check_body_model(self, body_model) -> None:
        self.meta.check(body_fingerprint=getattr(body_model, "fingerprint", None), source=self.info["path"])

    def run(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(images.shape[2:]) != tuple(self.canvas_hw):
            raise SathmrError(f"the graph takes {self.canvas_hw[0]}x{self.canvas_hw[1]} inputs, got "
                              f"{images.shape[2]}x{images.shape[3]} (collate to backend.canvas_hw)")
        parts = []
        for xb, hb, m in fixed_batches(images.detach().cpu().float(), img_hw.detach().cpu().to(torch.int64),
                                        self.fixed_batch):
            outs = self.session.run(list(NET_OUTPUTS), {"images": np.ascontiguousarray(xb.numpy()),
                                                        "img_hw": hb.numpy()})
            parts.append([torch.from_numpy(o[:m]) for o in outs])
        return {k: torch.cat([p[i] for p in parts]) for i, k in enumerate(NET_OUTPUTS)}
