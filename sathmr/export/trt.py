"""TensorRT engine build from an exported ONNX graph (`sathmr export --format trt`).

An engine file has no room for our metadata, so it is written next to a JSON sidecar
(``<engine>.json``) holding the ONNX file's ``metadata_props`` plus the TensorRT version: the engine
is only valid for that TensorRT version and GPU, and the backend refuses a mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

from sathmr.errors import SathmrError
from sathmr.export.meta import read_meta, sidecar
from sathmr.io import atomic_write
from sathmr.optional import require

#: largest batch a dynamic-batch ONNX graph is built for in TensorRT (optimisation profile max)
DEFAULT_MAX_BATCH = 8


def build_engine(onnx_path: str | Path, output: str | Path, fp16: bool = False, workspace_gb: float = 4.0,
                 max_batch: int = DEFAULT_MAX_BATCH) -> Path:
    """Parse ``onnx_path`` and build a serialized engine at ``output`` (plus its JSON sidecar)."""
    trt = require("tensorrt")
    onnx_path, output = Path(onnx_path), Path(output)
    meta = read_meta(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)   # explicit batch is the only mode in TensorRT >= 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise SathmrError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if meta.batch is None:
        H, W = meta.canvas_hw
        profile = builder.create_optimization_profile()
        profile.set_shape("images", (1, 3, H, W), (1, 3, H, W), (max_batch, 3, H, W))
        profile.set_shape("img_hw", (1, 2), (1, 2), (max_batch, 2))
        config.add_optimization_profile(profile)
    data = builder.build_serialized_network(network, config)
    if data is None:
        raise SathmrError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    props = meta.to_props()
    props.update({"tensorrt.version": trt.__version__, "tensorrt.fp16": json.dumps(fp16),
                  "tensorrt.max_batch": json.dumps(max_batch if meta.batch is None else meta.batch)})
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, bytes(data))
    atomic_write(sidecar(output), json.dumps(props, indent=1).encode())
    return output
