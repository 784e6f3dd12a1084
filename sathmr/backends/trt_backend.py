"""TensorRT backend: runs an engine built by `sathmr export --format trt` on a CUDA GPU.

Buffers are torch CUDA tensors (no pycuda dependency). Config, canvas and budgets come from the
engine's JSON sidecar, which also pins the TensorRT version the engine was built with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sathmr.backends.base import Backend, fixed_batches
from sathmr.errors import SathmrError
from sathmr.export.meta import ExportMeta, file_sha256, sidecar
from sathmr.model.sathmr import NET_OUTPUTS
from sathmr.optional import require


class TrtBackend(Backend):
    name = "trt"

    def __init__(self, engine, meta: ExportMeta, device: torch.device, info: dict, max_batch: int):
        self.trt = require("tensorrt")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.meta = meta
        self.cfg = meta.cfg
        self.canvas_hw = meta.canvas_hw
        self.fixed_batch = meta.batch
        self.max_batch = max_batch
        self.device = device
        self.info = info

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cuda", config: str | None = None,
                  checkpoint: str | Path | None = None) -> "TrtBackend":
        trt = require("tensorrt")
        path = Path(path)
        if not path.is_file():
            raise SathmrError(f"engine file not found: {path}")
        dev = torch.device(device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            raise SathmrError(f"the trt backend needs a CUDA GPU (--device cuda); got --device {device}"
                              + ("" if torch.cuda.is_available() else " and PyTorch sees no CUDA device"))
        side = sidecar(path)
        if not side.is_file():
            raise SathmrError(f"{side} is missing: engines are only usable with the metadata "
                              "`sathmr export --format trt` writes next to them")
        props = json.loads(side.read_text())
        meta = ExportMeta.from_props(props, str(path))
        meta.check(config=config, checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None, source=str(path))
        if props.get("tensorrt.version") != trt.__version__:
            raise SathmrError(f"{path} was built with TensorRT {props.get('tensorrt.version')}, this is "
                              f"{trt.__version__}: rebuild it with `sathmr export --format trt`")
        with torch.cuda.device(dev):
            engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise SathmrError(f"TensorRT cannot load {path} (built for another GPU?)")
        info = {"path": str(path), "device": str(dev), "config": meta.cfg.name, "tensorrt": trt.__version__,
                "budget_sat": meta.budget.sat_cells, "budget_context": meta.budget.context,
                "fp16": json.loads(props.get("tensorrt.fp16", "false")), "note": f"model: {path} (TensorRT)"}
        return cls(engine, meta, dev, info, int(json.loads(props.get("tensorrt.max_batch", "1"))))

    def check_body_model(self, body_model) -> None:
        self.meta.check(body_fingerprint=getattr(body_model, "fingerprint", None), source=self.info["path"])

    def _dtype(self, name: str) -> torch.dtype:
        t = self.trt.DataType
        table = {t.FLOAT: torch.float32, t.HALF: torch.float16, t.INT32: torch.int32, t.INT64: torch.int64,
                 t.BOOL: torch.bool}
        return table[self.engine.get_tensor_dtype(name)]

    def _run_chunk(self, images: torch.Tensor, img_hw: torch.Tensor) -> list[torch.Tensor]:
        ctx = self.context
        feeds = {"images": images.to(self.device, self._dtype("images")).contiguous(),
                 "img_hw": img_hw.to(self.device, self._dtype("img_hw")).contiguous()}
        for name, t in feeds.items():
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in NET_OUTPUTS:
            t = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._dtype(name), device=self.device)
            ctx.set_tensor_address(name, t.data_ptr())
            outs.append(t)
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise SathmrError("TensorRT execution failed (see the TensorRT log)")
        stream.synchronize()
        return [o.float() if o.is_floating_point() else o.long() for o in outs]

    def run(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(images.shape[2:]) != tuple(self.canvas_hw):
            raise SathmrError(f"the engine takes {self.canvas_hw[0]}x{self.canvas_hw[1]} inputs, got "
                              f"{images.shape[2]}x{images.shape[3]}")
        parts = []
        step = self.fixed_batch or self.max_batch
        with torch.cuda.device(self.device):
            for xb, hb, m in fixed_batches(images, img_hw, step):
                if self.fixed_batch is None:
                    xb, hb = xb[:m], hb[:m]    # dynamic profile: run the real images only
                parts.append([o[:m].cpu() for o in self._run_chunk(xb, hb)])
        return {k: torch.cat([p[i] for p in parts]) for i, k in enumerate(NET_OUTPUTS)}
