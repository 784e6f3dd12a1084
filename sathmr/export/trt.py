"""TensorRT engines from an exported ONNX model (`sathmr export --format trt`).

A two-stage export becomes a folder of two engines, each built with one optimisation profile spanning
the graph's dynamic axes (``ExportMeta.axes``: batch, image size in units of 56 px, SAT cells, context
tokens) — so no layer has a data-dependent shape and every image runs at its own size. Every engine
file starts with the sathmr metadata header (``sathmr.backends.meta.engine_bytes``), TensorRT version
included: an engine is only valid for the TensorRT version and GPU that built it.

Supported: TensorRT 10.16+ and 11.x (``sathmr.common.optional.TENSORRT_SUPPORTED``; others are refused in one line). Both build
**strongly typed** networks — the one mode TensorRT 11 has (it removed ``BuilderFlag.FP16``, layer
precisions and output types), available in 10 too — so one code path builds the same engine on both,
and the precision is the graph's own: ``--precision fp16`` builds the tokens engine from an fp16 export whose
normalisations and softmaxes are cast to fp32 around (:func:`pin_fp32`; DINOv2-family models overflow
in fp16 LayerNorm). TF32 is off in every engine: the scale-map engine must be exactly fp32 because the
token selection thresholds its output, and fp32 means fp32 in the tokens engine too.

Engines are sized to memory: the tokens profile's largest corner (batch × stage-C sequence) decides
the largest attention-score tensor TensorRT must plan for (:func:`score_bytes`), which must fit
``TRT_ACTIVATION_BUDGET_GB``; ``--max-tokens``/``--max-batch-size`` trade one for the other. The default (batch
1, every token count the canvas allows) builds on a 24 GB GPU; a larger batch runs in chunks.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path

import onnx

from sathmr.backends.formats import DEFAULT_TRT_MAX_BATCH, TRT_ACTIVATION_BUDGET_GB
from sathmr.backends.meta import Artifact, ExportMeta, engine_bytes, read_artifact
from sathmr.common.errors import SathmrError
from sathmr.common.files import atomic_write
from sathmr.common.optional import require
from sathmr.export.onnx import replace_folder

log = logging.getLogger("sathmr.export")
#: the ops kept in fp32 inside an fp16 engine
FP32_OPS = ("LayerNormalization", "Softmax")


def token_maxima(meta: ExportMeta, max_tokens: int | None) -> tuple[int, int]:
    """Largest SAT cells and context tokens of the tokens profile; None: all the canvas allows.

    ``max_tokens`` bounds the stage-C sequence at the profile's corner (4 level-0 tokens per SAT cell +
    the context tokens), the one TensorRT plans memory for. Context keeps as much of its range as it can
    (up to half the bound), so images with few SAT cells always fit; the SAT cells take the rest.
    """
    ax = meta.axes()
    ks, kc = ax["sat_cells"][1], ax["ctx_tokens"][1]
    if max_tokens is None:
        return ks, kc
    if max_tokens < 8:
        raise SathmrError(f"--max-tokens {max_tokens}: at least 8")
    kc = min(kc, max_tokens // 2)
    return max(1, min(ks, (max_tokens - kc) // 4)), kc


def score_bytes(meta: ExportMeta, batch: int, max_tokens: int | None, itemsize: int = 4) -> int:
    """Bytes of one attention-score tensor at the tokens profile's largest corner (batch, heads, L, L)."""
    ks, kc = token_maxima(meta, max_tokens)
    seq = 4 * ks + kc + 1
    return batch * meta.cfg.num_heads * seq * seq * itemsize


def max_tokens_for(meta: ExportMeta, batch: int) -> int:
    """The largest ``--max-tokens`` whose score tensor at ``batch`` fits ``TRT_ACTIVATION_BUDGET_GB``."""
    return int(math.sqrt(TRT_ACTIVATION_BUDGET_GB * 2**30 / (batch * meta.cfg.num_heads * 4))) - 1


def check_budget(meta: ExportMeta, max_batch: int, max_tokens: int | None) -> None:
    """Refuse profiles whose worst case does not fit ``TRT_ACTIVATION_BUDGET_GB``, naming what would fit."""
    if max_batch < 1:
        raise SathmrError(f"--max-batch-size {max_batch}: at least 1")
    need = score_bytes(meta, max_batch, max_tokens)
    budget = TRT_ACTIVATION_BUDGET_GB * 2**30
    if need <= budget:
        return
    ks, kc = token_maxima(meta, max_tokens)
    fits = max_tokens_for(meta, max_batch)
    raise SathmrError(f"--max-batch-size {max_batch} with up to {4 * ks + kc} tokens per image needs "
                      f"{need / 2**30:.1f} GB for one attention-score tensor (budget {TRT_ACTIVATION_BUDGET_GB:g} GB): "
                      f"use --max-tokens {fits} at this batch, or a smaller --max-batch-size")


def profile_shapes(meta: ExportMeta, graph: str, max_batch: int, max_tokens: int | None = None
                   ) -> dict[str, tuple[tuple, tuple, tuple]]:
    """(min, opt, max) shape of every input of ``graph``; opt = one 16:9 landscape image with a typical
    token mix (an eighth of its cells SAT, a third context), within the maxima."""
    cfg, m = meta.cfg, meta.cfg.pad_multiple
    C = cfg.embed_dim
    if meta.layout == "static":
        H, W = meta.canvas_hw
        b = (1, 1, max_batch) if meta.batch is None else (meta.batch,) * 3
        return {"images": tuple((n, 3, H, W) for n in b), "img_hw": tuple((n, 2) for n in b)}
    side = meta.axes()["h56"][1]
    opt_hw = (side, max(1, round(side * 9 / 16)))
    cells = (2 * opt_hw[0]) * (2 * opt_hw[1])
    batch = (1, 1, max_batch) if meta.batch is None else (meta.batch,) * 3
    hw = ((1, 1), opt_hw, (side, side))
    shapes = {"images": tuple((b, 3, m * h, m * w) for b, (h, w) in zip(batch, hw))}
    if graph == "scale_map":
        shapes["img_hw"] = tuple((b, 2) for b in batch)
        return shapes
    ks_max, kc_max = token_maxima(meta, max_tokens)
    ks = (1, min(ks_max, max(1, cells // 8)), ks_max)
    kc = (1, min(kc_max, max(1, cells // 3)), kc_max)
    shapes["t1"] = tuple((b, 2 * h, 2 * w, C) for b, (h, w) in zip(batch, hw))
    shapes["cls"] = tuple((b, 1, C) for b in batch)
    for name, k in (("sat_idx", ks), ("sat_valid", ks), ("ctx_idx", kc), ("ctx_valid", kc)):
        shapes[name] = tuple((b, n) for b, n in zip(batch, k))
    return shapes


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def pin_fp32(model: onnx.ModelProto) -> int:
    """Cast the inputs of every fp16 normalisation and softmax to fp32 and its outputs back, in place —
    how a strongly typed network keeps them in fp32 (TensorRT computes every layer in its input's
    type). Returns how many nodes were pinned."""
    types = _elem_types(model)
    half, full = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    nodes, pinned = [], 0
    for node in model.graph.node:
        if node.op_type not in FP32_OPS or types.get(node.input[0]) != half:
            nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if name and types.get(name) == half:
                cast = f"{name}__fp32_{node.name}"
                nodes.append(onnx.helper.make_node("Cast", [name], [cast], to=full, name=f"{node.name}__in{i}"))
                node.input[i] = cast
        nodes.append(node)
        for j, name in enumerate(node.output):
            if name and types.get(name) == half:     # (LayerNormalization's mean/inv-std outputs are fp32 already)
                wide = f"{name}__fp32"
                node.output[j] = wide
                nodes.append(onnx.helper.make_node("Cast", [wide], [name], to=half, name=f"{node.name}__out{j}"))
        pinned += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return pinned


def _parse(trt, builder, logger, onnx_path: Path, graph: str, meta: ExportMeta):
    """A strongly typed network from ``onnx_path`` (fp16 graphs with their normalisations pinned to fp32)."""
    strongly_typed = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(strongly_typed)
    parser = trt.OnnxParser(network, logger)
    if meta.precision == "fp16" and graph != "scale_map":
        model = onnx.load(str(onnx_path))
        log.info("  %s: %d normalisation/softmax nodes pinned to fp32", graph, pin_fp32(model))
        ok = parser.parse(model.SerializeToString(), str(onnx_path))
    else:
        ok = parser.parse_from_file(str(onnx_path))
    if not ok:
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise SathmrError(f"TensorRT cannot parse {onnx_path}: {errors}")
    return network, parser


def build_engine(onnx_path: Path, meta: ExportMeta, graph: str, workspace_gb: float, max_batch: int,
                 max_tokens: int | None = None) -> bytes:
    """One serialized engine (with the sathmr header) from one ONNX graph, in the graph's own precision."""
    trt = require("tensorrt")
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path, graph, meta)   # the parser owns the weights
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.clear_flag(trt.BuilderFlag.TF32)     # fp32 means fp32 (the token selection thresholds stage A)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(meta, graph, max_batch, max_tokens).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    data = builder.build_serialized_network(network, config)
    if data is None:
        raise SathmrError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    reduced = meta.precision == "fp16" and graph != "scale_map"
    built = meta.with_extra(tensorrt=trt.__version__, tensorrt_fp16=reduced, tensorrt_max_batch=max_batch,
                            tensorrt_max_tokens=max_tokens)
    log.info("  %s: engine built in %.1f s (%.0f MB)", graph, time.perf_counter() - t0, data.nbytes / 2**20)
    return engine_bytes(built.to_props(graph), bytes(memoryview(data)))


def build_engines(onnx_model: str | Path, output: str | Path, fp16: bool = False, workspace_gb: float = 4.0,
                  max_batch: int = DEFAULT_TRT_MAX_BATCH, max_tokens: int | None = None) -> Artifact:
    """Engines for every graph of an exported ONNX model: a folder for two-stage, a file for static. The
    precision is the export's (``fp16`` only confirms that it is an fp16 one)."""
    art = read_artifact(onnx_model)
    meta = art.meta
    if meta.precision == "int8":
        raise SathmrError(f"{onnx_model} is an int8 export (ONNX Runtime's dynamic quantisation, which TensorRT does "
                          "not build): give TensorRT an fp32 or fp16 export")
    if meta.target != "portable":
        raise SathmrError(f"{onnx_model} uses ONNX Runtime's own operators, which TensorRT cannot parse: export it "
                          "with `sathmr export --portable`, or let `sathmr export --format trt` export one itself")
    if fp16 and meta.precision != "fp16":
        raise SathmrError(f"{onnx_model} is an {meta.precision} export; TensorRT builds strongly typed engines, whose "
                          "precision is the graph's: give it an `sathmr export --portable --precision fp16` export, or let "
                          "`sathmr export --format trt --precision fp16` export one itself")
    if meta.precision == "fp16" and meta.layout == "static":
        raise SathmrError(f"{onnx_model}: an fp16 --static-budget graph holds stage A in fp16 too; TensorRT builds "
                          "fp16 from the two-stage export only (stage A stays fp32)")
    if meta.batch is None and max_batch > meta.max_batch:
        raise SathmrError(f"--max-batch-size {max_batch}: {onnx_model} was exported for batches up to {meta.max_batch}")
    check_budget(meta, meta.batch or max_batch, max_tokens if meta.layout == "two-stage" else None)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    opts = dict(workspace_gb=workspace_gb, max_batch=meta.batch or max_batch, max_tokens=max_tokens)
    if meta.layout == "static":
        atomic_write(output, build_engine(art.files["static"], meta, "static", **opts))
        return read_artifact(output, suffix=".engine")
    ks, kc = token_maxima(meta, max_tokens)
    log.info("TensorRT profiles: batch <= %d, SAT cells <= %d, context tokens <= %d (stage C <= %d tokens; one "
             "attention-score tensor %.1f GB at most)", opts["max_batch"], ks, kc, 4 * ks + kc,
             score_bytes(meta, opts["max_batch"], max_tokens) / 2**30)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
        folder = Path(tmp) / "engines"
        folder.mkdir()
        for graph in meta.graphs:
            (folder / f"{graph}.engine").write_bytes(build_engine(art.files[graph], meta, graph, **opts))
        replace_folder(folder, output)
    return read_artifact(output, suffix=".engine")
