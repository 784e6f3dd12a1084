"""TensorRT engines from an exported ONNX model (`sathmr export --format trt`).

A two-stage export becomes a folder of two engines, each built with one optimisation profile spanning
the graph's dynamic axes (``ExportMeta.axes``: batch, image size in units of 56 px, SAT cells, context
tokens) — so no layer has a data-dependent shape and every image runs at its own size. With ``fp16``
only the tokens engine is reduced, and inside it every normalisation and softmax layer is pinned to
float32 (DINOv2-family models overflow in fp16 LayerNorm); the scale-map engine stays float32 whole,
because the token selection thresholds its output and must not depend on the precision. Every engine
file starts with the sathmr metadata header (``sathmr.export.meta.engine_bytes``), TensorRT version
included: an engine is only valid for the TensorRT version and GPU that built it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from sathmr.errors import SathmrError
from sathmr.export.meta import Artifact, ExportMeta, engine_bytes, read_artifact
from sathmr.export.onnx import replace_folder
from sathmr.formats import DEFAULT_TRT_MAX_BATCH
from sathmr.io import atomic_write
from sathmr.optional import require

log = logging.getLogger("sathmr.export")
#: largest batch the dynamic profiles are built for (a larger batch is run in chunks)
DEFAULT_MAX_BATCH = DEFAULT_TRT_MAX_BATCH


def profile_shapes(meta: ExportMeta, graph: str, max_batch: int) -> dict[str, tuple[tuple, tuple, tuple]]:
    """(min, opt, max) shape of every input of ``graph``; opt = one 16:9 landscape image with a typical
    token mix (an eighth of its cells SAT, a third context)."""
    cfg, m = meta.cfg, meta.cfg.pad_multiple
    C = cfg.embed_dim
    if meta.layout == "static":
        H, W = meta.canvas_hw
        b = (1, 1, max_batch) if meta.batch is None else (meta.batch,) * 3
        return {"images": tuple((n, 3, H, W) for n in b), "img_hw": tuple((n, 2) for n in b)}
    ax = meta.axes()
    side = ax["h56"][1]
    opt_hw = (side, max(1, round(side * 9 / 16)))
    cells = (2 * opt_hw[0]) * (2 * opt_hw[1])
    batch = (1, 1, max_batch) if meta.batch is None else (meta.batch,) * 3
    hw = ((1, 1), opt_hw, (side, side))
    shapes = {"images": tuple((b, 3, m * h, m * w) for b, (h, w) in zip(batch, hw))}
    if graph == "scale_map":
        shapes["img_hw"] = tuple((b, 2) for b in batch)
        return shapes
    ks = (1, max(1, cells // 8), ax["sat_cells"][1])
    kc = (1, max(1, cells // 3), ax["ctx_tokens"][1])
    shapes["t1"] = tuple((b, 2 * h, 2 * w, C) for b, (h, w) in zip(batch, hw))
    shapes["cls"] = tuple((b, 1, C) for b in batch)
    for name, k in (("sat_idx", ks), ("sat_valid", ks), ("ctx_idx", kc), ("ctx_valid", kc)):
        shapes[name] = tuple((b, n) for b, n in zip(batch, k))
    return shapes


def pin_fp32(trt, network) -> int:
    """Keep every normalisation and softmax layer of ``network`` in float32; returns how many."""
    pinned = 0
    kinds = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def build_engine(onnx_path: Path, meta: ExportMeta, graph: str, fp16: bool, workspace_gb: float,
                 max_batch: int) -> bytes:
    """One serialized engine (with the sathmr header) from one ONNX graph."""
    trt = require("tensorrt")
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)   # explicit batch is the only mode in TensorRT >= 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise SathmrError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    reduced = fp16 and graph != "scale_map"
    if reduced:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log.info("  %s: %d normalisation/softmax layers pinned to fp32", graph, pin_fp32(trt, network))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(meta, graph, max_batch).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    data = builder.build_serialized_network(network, config)
    if data is None:
        raise SathmrError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    built = meta.with_extra(tensorrt=trt.__version__, tensorrt_fp16=reduced, tensorrt_max_batch=max_batch)
    log.info("  %s: engine built in %.1f s (%.0f MB)", graph, time.perf_counter() - t0, len(data) / 2**20)
    return engine_bytes(built.to_props(graph), bytes(data))


def build_engines(onnx_model: str | Path, output: str | Path, fp16: bool = False, workspace_gb: float = 4.0,
                  max_batch: int = DEFAULT_MAX_BATCH) -> Artifact:
    """Engines for every graph of an exported ONNX model: a folder for two-stage, a file for static."""
    art = read_artifact(onnx_model)
    if art.meta.precision == "int8":
        raise SathmrError(f"{onnx_model} is an int8 export (ONNX Runtime's dynamic quantisation, which TensorRT does "
                          "not build): give TensorRT an fp32 export")
    if art.meta.target != "portable":
        raise SathmrError(f"{onnx_model} uses ONNX Runtime's own operators, which TensorRT cannot parse: export it "
                          "with `sathmr export --portable`, or let `sathmr export --format trt` export one itself")
    meta = replace(art.meta, precision="fp16") if fp16 else art.meta
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if meta.layout == "static":
        atomic_write(output, build_engine(art.files["static"], meta, "static", fp16, workspace_gb, max_batch))
        return read_artifact(output, suffix=".engine")
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
        folder = Path(tmp) / "engines"
        folder.mkdir()
        for graph in meta.graphs:
            (folder / f"{graph}.engine").write_bytes(build_engine(art.files[graph], meta, graph, fp16, workspace_gb,
                                                                  max_batch))
        replace_folder(folder, output)
    return read_artifact(output, suffix=".engine")

