"""int8 export (``sathmr export --precision int8``): ONNX Runtime's dynamic quantisation of the tokens graph.

What is quantised, and why this kind (measured; figures in the README's performance section):
  * **dynamic** quantisation (``onnxruntime.quantization.quantize_dynamic``): weights to int8 once, at
    export; activations per tensor at run time. Static (QDQ) quantisation would need calibration images
    and activation ranges for token axes whose length changes with every image.
  * **the MatMul weights of stages B/C and of the decoder's memory projections** — the Linears of the
    ViT blocks on the selected tokens and ``feature_proj`` (~80 % of the FLOPs), and the cross-attention
    key/value projections that every decoder layer applies to those ~2000 tokens
    (``MEMORY_PROJECTIONS``; float32, they were ~10 % of the int8 graph's time on sat_644) where a graph
    has them — graphs exported now fold the cross-attention onto the queries' side and never project the
    memory (``sathmr.model.layers.folded_graphs``), so only exports of older releases do; nodes are
    picked by the module paths the exporter records on each node. The rest of the decoder (the 50
    queries' products) and the heads stay float32 for the reason bf16 keeps them
    (``sathmr.model.sathmr.precision_scopes``): cheap, but the source of most of the error — quantising
    them too moved joints 27 mm on the embedded model's synthetic scenes. The attention
    products of activations stay float as well (``MatMulConstBOnly``). ONNX Runtime's contrib operators of
    the default target (MultiHeadAttention, BiasGelu, SkipLayerNormalization where fused) pass through unchanged:
    the quantiser only rewrites the MatMul nodes that feed them (MatMulInteger + DynamicQuantizeLinear,
    standard ONNX operators, which ONNX Runtime fuses into DynamicQuantizeMatMul when it loads the graph).
  * **int8 weights on CPUs with VNNI/AMX, uint8 elsewhere** (:func:`weight_type`, decided by the CPU that
    exports): ONNX Runtime's U8S8 kernels use VNNI/AMX-INT8 (sat_644 on a Xeon with AMX: 1.45x the fp32
    PyTorch network, against 0.98x with uint8 weights); without VNNI, U8S8 saturates its 16-bit
    intermediate sums (vpmaddubsw), which costs an order of magnitude in accuracy, so U8U8 there.
  * **stage A stays float32** (the ``scale_map`` graph is not touched): the token selection thresholds
    its output and must not depend on the precision.
"""

from __future__ import annotations

import ast
import contextlib
import heapq
import logging
import os
import time
from pathlib import Path

import onnx

from sathmr.common import hardware
from sathmr.common.optional import require
from sathmr.export.mlp_conv import mlps_as_matmuls

log = logging.getLogger("sathmr.export")
QUANTISED_OPS = ("MatMul", "Gemm")
#: the modules whose matrix products are quantised: stages B/C (prefixes of the exporter's module paths)
STAGE_BC_MODULES = ("model.encoder.", "model.feature_proj")
#: the decoder's projections of the memory (the ~2000 stage-C tokens), ~90 % of its matrix-product FLOPs
#: with 50 queries; the query-side products and the heads stay float32
MEMORY_PROJECTIONS = (".ca_kcontent_proj", ".ca_kpos_proj", ".ca_v_proj")
SCOPE_KEY = "pkg.torch.onnx.name_scopes"    # the module path torch.onnx records on every node
#: "QUInt8": accurate on every x86 CPU. "QInt8" (U8S8) is ONNX Runtime's default and as accurate on CPUs
#: with VNNI, but on AVX2 without it the saturation moved joints ~26 mm on the tiny model (2.8 mm with QUInt8)
WEIGHT_TYPE = "QUInt8"
#: where VNNI/AMX make U8S8 both accurate and fast (U8U8 has no VNNI kernel in ONNX Runtime)
VNNI_WEIGHT_TYPE = "QInt8"
PRE_PROCESS_HINT = "Please consider to run pre-processing before quantization"


class _DropHint(logging.Filter):
    """quantize_dynamic logs a hint to run ``quant_pre_process`` (shape inference and ORT's graph
    optimisation) on the root logger; the exported graph is already shaped and fused, so it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return PRE_PROCESS_HINT not in record.getMessage()


@contextlib.contextmanager
def _quiet_root_logger():
    root, flt = logging.getLogger(), _DropHint()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def external_files(model: onnx.ModelProto) -> set[str]:
    """The side files an ONNX model keeps its large weights in (``location`` of external initializers)."""
    return {e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data if e.key == "location"}


def drop_initializer_value_info(model: onnx.ModelProto) -> int:
    """Remove ``value_info`` entries of initializers (they carry their own shapes). The exporter can leave
    a stale one behind when it folds a weight's transpose (sat_644: ``ref_point_head`` keeps its
    [768, 1536] entry on a [1536, 768] initializer), which fails the quantiser's shape inference."""
    names = {t.name for t in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in names]
    dropped = len(model.graph.value_info) - len(keep)
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    return dropped


def module_scopes(node: onnx.NodeProto) -> list[str]:
    """The modules a node was exported from, outermost first (``['', 'model.encoder.blocks.0', ...]``)."""
    scope = next((p.value for p in node.metadata_props if p.key == SCOPE_KEY), "")
    try:
        scopes = ast.literal_eval(scope) if scope else []     # a list literal
    except (ValueError, SyntaxError):
        return []
    return [s for s in scopes if isinstance(s, str)] if isinstance(scopes, list) else []


def module_path(node: onnx.NodeProto) -> str:
    """The top module a node was exported from (``model.encoder.blocks.0``), "" when not recorded."""
    scopes = module_scopes(node)
    return scopes[1] if len(scopes) > 1 else ""


def quantised_module(node: onnx.NodeProto) -> bool:
    """Whether ``node`` belongs to stages B/C or is one of the decoder's memory projections."""
    scopes = module_scopes(node)
    return (len(scopes) > 1 and scopes[1].startswith(STAGE_BC_MODULES)) or \
        any(s.startswith("model.decoder.") and s.endswith(MEMORY_PROJECTIONS) for s in scopes)


def quantised_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the matrix products with a constant weight to quantise (:func:`quantised_module`)."""
    consts = {t.name for t in model.graph.initializer}
    picked = []
    for node in model.graph.node:
        if node.op_type not in QUANTISED_OPS or len(node.input) < 2 or node.input[1] not in consts:
            continue
        if quantised_module(node):
            picked.append(node.name)
    if not picked:   # the exporter no longer records module paths: a bug to fix here, not the user's
        raise RuntimeError(f"no stage-B/C matrix product found to quantise (no {SCOPE_KEY} metadata on the nodes?)")
    return picked


def outer_inputs(graph: onnx.GraphProto) -> set[str]:
    """The tensors ``graph`` reads without producing them (a subgraph's outer-scope captures included)."""
    made = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    read: set[str] = set()
    for node in graph.node:
        read.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                read |= outer_inputs(sub)
        made.update(node.output)
    return read - made


def topological_sort(graph: onnx.GraphProto) -> None:
    """Order ``graph``'s nodes so that each comes after everything it reads — what onnx.checker demands.

    ONNX Runtime's quantiser re-sorts by explicit inputs only, so an ``If`` of the attention fusion (whose
    branches read outer-scope tensors) can land ahead of those tensors' producers; at sat_644's width it
    does, and the int8 export failed the checker. A stable sort: nodes keep their order where they may.
    """
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
    needs = []
    for node in graph.node:
        reads = set(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                reads |= outer_inputs(sub)
        needs.append({producer[r] for r in reads if r in producer})
    users: dict[int, list[int]] = {k: [] for k in range(len(needs))}
    for k, deps in enumerate(needs):
        for d in deps:
            users[d].append(k)
    waiting = [len(d) for d in needs]
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users[k]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(needs):
        raise RuntimeError("the quantised graph has a cycle")    # a quantiser bug: keep the traceback
    nodes = [graph.node[k] for k in order]
    del graph.node[:]
    graph.node.extend(nodes)


def weight_type() -> str:
    """The weight type for this CPU: int8 where it has VNNI or AMX-INT8, uint8 elsewhere (see the docstring)."""
    flags = hardware.cpu_info()["cpu_flags"]
    return VNNI_WEIGHT_TYPE if any(f in flags for f in hardware.INT8_CPU_FLAGS) else WEIGHT_TYPE


def quantize_weights(path: Path, output: Path | None = None, props: dict[str, str] | None = None) -> int:
    """Quantise the MatMul/Gemm weights of the ONNX file ``path`` to int8 into ``output`` (default: in
    place), with ``props`` as its metadata (default: the file's own). Returns the number of quantised
    matrix products.

    The result is one file: int8 weights are a quarter of the float32 ones, so it stays below protobuf's
    2 GiB even where the float32 graph needed a side file (removed when quantising in place).
    """
    quant = require("onnxruntime.quantization")
    t0 = time.perf_counter()
    output = output or path
    original = onnx.load(str(path))
    sides = external_files(original)
    props = props if props is not None else {p.key: p.value for p in original.metadata_props}
    before = path.stat().st_size + sum((path.parent / f).stat().st_size for f in sides)
    drop_initializer_value_info(original)
    mlps_as_matmuls(original)            # an fp32 export's MLPs are 1x1 convolutions (mlp_conv); int8 takes MatMuls
    tmp = output.with_name(f".{output.name}.int8")
    wtype = weight_type()
    with _quiet_root_logger():
        quant.quantize_dynamic(original, tmp, op_types_to_quantize=list(QUANTISED_OPS),
                               weight_type=getattr(quant.QuantType, wtype), per_channel=False,
                               reduce_range=False, nodes_to_quantize=quantised_nodes(original),
                               extra_options={"MatMulConstBOnly": True})
    model = onnx.load(str(tmp))
    topological_sort(model.graph)
    del model.metadata_props[:]          # exactly the export's metadata (the quantiser adds its own keys)
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    n = sum(node.op_type == "MatMulInteger" for node in model.graph.node)
    onnx.save_model(model, str(tmp))
    os.replace(tmp, output)
    if output == path:
        for f in sides:
            (path.parent / f).unlink(missing_ok=True)
    log.info("  %s: %d matrix products with int8 weights (%s) in %.1f s, %.0f -> %.0f MB", output.name, n, wtype,
             time.perf_counter() - t0, before / 2**20, output.stat().st_size / 2**20)
    return n
