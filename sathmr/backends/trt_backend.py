"""TensorRT backend: runs the engines `sathmr export --format trt` builds, on a CUDA GPU.

A two-stage export is a folder with ``scale_map.engine`` and ``tokens.engine`` (built with optimisation
profiles over batch, image size and token counts), run with the shared token selection between them
(``TwoStage``): the images and the stage-A tensors stay on the device, only the scale map comes to the
host. A static export is one engine. Every engine file starts with the sathmr metadata header (config,
hashes, TensorRT version), so the backend refuses an engine built for another model or TensorRT.
Buffers are torch CUDA tensors (no pycuda). Each engine runs on its own CUDA stream, ordered after the
caller's work and before it continues (``wait_stream`` both ways); its outputs are allocated once per
shape and reused by the next call of that shape (a caller copies what it keeps, as ``run`` does). A
shape outside the engine's profile is refused in one line naming the profile, never run unchecked.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sathmr.backends.base import fixed_batches
from sathmr.backends.exported import ExportedBackend
from sathmr.backends.meta import GRAPHS, QUERY_OUTPUTS, read_engine
from sathmr.backends.two_stage import selection_feeds
from sathmr.common.errors import SathmrError
from sathmr.common.optional import require
from sathmr.model.sathmr import NET_OUTPUTS
from sathmr.model.tokens import Selection


class Engine:
    """One deserialized engine with its execution context and CUDA stream."""

    def __init__(self, trt, engine, device: torch.device, name: str):
        self.trt, self.engine, self.device, self.name = trt, engine, device, name
        self.context = engine.create_execution_context()
        if self.context is None:
            raise SathmrError(f"TensorRT could not create an execution context for {name} (out of GPU memory?)")
        self.stream = torch.cuda.Stream(device)
        self.dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                       trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}
        self.outputs: dict[str, torch.Tensor] = {}     # reused while the shape stays

    def dtype(self, tensor: str) -> torch.dtype:
        return self.dtypes[self.engine.get_tensor_dtype(tensor)]

    def profile(self, tensor: str) -> str:
        lo, _, hi = self.engine.get_tensor_profile_shape(tensor, 0)
        return f"{tuple(lo)}..{tuple(hi)}"

    def _output(self, name: str) -> torch.Tensor:
        shape = tuple(self.context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise SathmrError(f"TensorRT cannot infer the shape of {name} in {self.name} from the inputs given")
        out = self.outputs.get(name)
        if out is None or tuple(out.shape) != shape:
            out = self.outputs[name] = torch.empty(shape, dtype=self.dtype(name), device=self.device)
        return out

    def __call__(self, feeds: dict[str, torch.Tensor], outputs: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Run once; returns float32/int64 views of the reused output buffers (valid until the next call)."""
        ctx, caller = self.context, torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)                  # inputs made on the caller's stream are ready
        with torch.cuda.stream(self.stream):
            bound = {k: v.to(self.device, self.dtype(k)).contiguous() for k, v in feeds.items()}
            for k, v in bound.items():
                if not ctx.set_input_shape(k, tuple(v.shape)):
                    raise SathmrError(f"{self.name}: input {k} of shape {tuple(v.shape)} is outside the engine's "
                                      f"profile {self.profile(k)}; rebuild with a larger --max-batch-size/--max-tokens")
                ctx.set_tensor_address(k, v.data_ptr())
            outs = {k: self._output(k) for k in outputs}
            for k, v in outs.items():
                ctx.set_tensor_address(k, v.data_ptr())
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise SathmrError(f"TensorRT execution of {self.name} failed (see the TensorRT log)")
            for v in bound.values():
                v.record_stream(self.stream)             # the caller's inputs outlive this stream's use of them
            result = {k: v.float() if v.is_floating_point() else v.long() for k, v in outs.items()}
        caller.wait_stream(self.stream)                  # the caller sees finished outputs
        for v in result.values():
            v.record_stream(caller)
        return result


class TrtBackend(ExportedBackend):
    """TensorRT on the engines of ``sathmr export --format trt`` (CUDA only)."""
    name = "trt"
    suffix = ".engine"

    def __init__(self, engines: dict[str, Engine], artifact, device: torch.device, info: dict):
        self.engines = engines
        self.max_batch = artifact.meta.batch or int(artifact.meta.extra.get("tensorrt_max_batch", 1))
        super().__init__(artifact, device, info)

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cuda", config: str | None = None,
                  checkpoint: str | Path | None = None, precision: str | None = None) -> TrtBackend:
        trt = require("tensorrt")
        dev = torch.device(device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            raise SathmrError(f"the trt backend needs a CUDA GPU (--device cuda); got --device {device}"
                              + ("" if torch.cuda.is_available() else " and PyTorch sees no CUDA device"))
        art = cls.read_checked(path, config, checkpoint, precision)
        built = art.meta.extra.get("tensorrt")
        if built != trt.__version__:
            raise SathmrError(f"{path} was built with TensorRT {built}, this is {trt.__version__}: rebuild it with "
                              "`sathmr export --format trt`")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engines = {}
        with torch.cuda.device(dev):
            for g, f in art.files.items():
                engine = runtime.deserialize_cuda_engine(read_engine(f)[1])
                if engine is None:
                    raise SathmrError(f"TensorRT cannot load {f} (built for another GPU?)")
                engines[g] = Engine(trt, engine, dev, f.name)
        info = cls.describe(path, dev, f"TensorRT {trt.__version__}", art, tensorrt=trt.__version__)
        return cls(engines, art, dev, info)

    def warmup(self) -> None:
        """One blank full-canvas image through every engine: kernels loaded, output buffers allocated."""
        side = self.canvas_hw or (self.cfg.input_size, self.cfg.input_size)
        self.run(torch.zeros(1, 3, *side), torch.tensor([list(side)]))
        torch.cuda.synchronize(self.device)

    def run(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = []
        with torch.cuda.device(self.device):
            for xb, hb, m in fixed_batches(images, img_hw, self.fixed_batch or self.max_batch):
                if self.fixed_batch is None:
                    xb, hb = xb[:m], hb[:m]    # dynamic profile: run the real images only
                out = self.run_layout(xb, hb)
                parts.append({k: v[:m].cpu() for k, v in out.items()})
        return {k: torch.cat([p[k] for p in parts]) for k in NET_OUTPUTS}

    def _static(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_canvas(images)
        return self.engines["static"]({"images": images, "img_hw": img_hw}, GRAPHS["static"][1])

    def _scale_map(self, images: torch.Tensor, img_hw: torch.Tensor):
        x = images.to(self.device)
        out = self.engines["scale_map"]({"images": x, "img_hw": img_hw}, GRAPHS["scale_map"][1])
        return out["scale_map"].cpu(), (x, out["t1"], out["cls"])

    def _tokens(self, images: torch.Tensor, stage_a, sel: Selection) -> dict[str, torch.Tensor]:
        x, t1, cls = stage_a
        return self.engines["tokens"]({"images": x, "t1": t1, "cls": cls, **selection_feeds(sel)}, QUERY_OUTPUTS)
