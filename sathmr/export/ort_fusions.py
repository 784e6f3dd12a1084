"""Fusions that make the exported graphs fast on ONNX Runtime (the default ``--format onnx`` target).

Five rewrites, all keeping the arithmetic (measured parity ≤ 1e-5 relative on every output):

  * **Attention** — every self-attention whose query, key and value share one head size (the 15 ViT
    blocks, the decoder's self-attention) is exported as one ``com.microsoft.MultiHeadAttention`` node
    (scores, scale, key-padding mask, softmax and the weighted sum in one CPU/CUDA kernel) instead of
    MatMul → Mul → Add(mask) → Softmax → MatMul over every L×L score. The additive 0/−inf key mask
    becomes MultiHeadAttention's key-padding mask. Everything else (the decoder's conditional
    cross-attention, whose query/key heads are twice the value head) keeps the standard decomposition.
  * **No mask when nothing is masked** — each masked MultiHeadAttention becomes an ``If`` on "every key
    valid": a batch of one image (budgets = what the image needs) or of equally sized images takes the
    unmasked kernel, which ONNX Runtime runs on its faster flash-attention path; a padded batch takes the
    masked one. Both branches compute the same attention (a masked key adds exactly 0 weight).
  * **Residual and bias fusions** of ONNX Runtime's own transformer optimizer
    (``onnxruntime.transformers``): bias Add + GELU → BiasGelu; Add + LayerNormalization →
    SkipLayerNormalization except in fp32 graphs, whose runtime is ORT's CPU, where the unfused pair
    is faster (:func:`fuse_residuals`).
  * **q, k, v as three products** (fp32, :func:`qkv_into_attention`): no copy of the packed qkv
    product per block; MultiHeadAttention adds the qkv bias as it lays out the heads.
  * **MLPs as 1×1 convolutions** (fp32, :mod:`sathmr.export.mlp_conv`): what its CPU runs faster
    than the same products as MatMuls.

All use ONNX Runtime contrib operators, which other runtimes do not have: ``sathmr export --portable``
(and the TensorRT build) leave them out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from onnxscript import ir
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.ops.nn import aten_scaled_dot_product_attention
from onnxscript.values import Op, Opset

from sathmr.common.optional import require
from sathmr.export.mlp_conv import CONTRIB, mlps_as_convs, readers_of

log = logging.getLogger("sathmr.export")


def _multi_head_attention_schema() -> onnx.defs.OpSchema:
    """The part of ONNX Runtime's contrib schema we use (onnx's registry does not know contrib operators,
    and the exporter needs a schema to trace a call)."""
    P = onnx.defs.OpSchema.FormalParameter
    opt = onnx.defs.OpSchema.FormalParameterOption.Optional
    A = onnx.defs.OpSchema.Attribute
    at = onnx.defs.OpSchema.AttrType
    return onnx.defs.OpSchema(
        "MultiHeadAttention", "com.microsoft", 1,
        inputs=[P("query", "T"), P("key", "T"), P("value", "T"), P("bias", "T", param_option=opt),
                P("key_padding_mask", "M", param_option=opt)],
        outputs=[P("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], "")],
        attributes=[A("num_heads", at.INT, "", required=True), A("mask_filter_value", at.FLOAT, "", required=False),
                    A("scale", at.FLOAT, "", required=False)])


MULTI_HEAD_ATTENTION = Op(Opset("com.microsoft", 1), "MultiHeadAttention", _multi_head_attention_schema())
FUSED_KINDS = ("MultiHeadAttention", "SkipLayerNormalization", "BiasGelu")   # what the log line reports
MASK_VALUE = -1e4     # what MultiHeadAttention adds to masked scores (exp underflows to exactly 0 in fp32)


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) else None


def sdpa_as_multi_head_attention(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None, enable_gqa: bool = False):
    """``aten.scaled_dot_product_attention`` on (B, H, L, d) tensors → one MultiHeadAttention node.

    Falls back to the standard decomposition for anything MultiHeadAttention does not express
    (different query/value head sizes, causal masks, dropout, grouped heads, a mask over queries)."""
    heads, d_q, d_v = _static(query.shape[1]), _static(query.shape[3]), _static(value.shape[3])
    mask_ok = attn_mask is None or (len(attn_mask.shape) == 4 and attn_mask.shape[1] == 1 and attn_mask.shape[2] == 1)
    if (heads is None or d_q is None or d_q != d_v or _static(key.shape[3]) != d_q or is_causal or dropout_p
            or enable_gqa or not mask_ok or (attn_mask is not None and attn_mask.dtype == ir.DataType.BOOL)):
        return aten_scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)

    def merge(t):   # (B, H, L, d) → (B, L, H·d)
        return op.Reshape(op.Transpose(t, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, heads * d_q]))

    padding = None
    if attn_mask is not None:   # additive 0 / −inf over keys → 1 / 0 key-padding mask (B, L)
        keys = op.Squeeze(attn_mask, op.Constant(value_ints=[1, 2]))
        padding = op.Cast(op.Equal(keys, op.CastLike(op.Constant(value_float=0.0), keys)), to=ir.DataType.INT32)
    kwargs = {"num_heads": heads, "mask_filter_value": MASK_VALUE}
    if scale is not None:
        kwargs["scale"] = float(scale)
    out = MULTI_HEAD_ATTENTION(merge(query), merge(key), merge(value), None, padding, **kwargs)
    # back to SDPA's (B, H, L, d)
    return op.Transpose(op.Reshape(out, op.Constant(value_ints=[0, 0, heads, d_q])), perm=[0, 2, 1, 3])


#: the custom translation the exporter applies for ONNX Runtime targets
TRANSLATIONS = {torch.ops.aten.scaled_dot_product_attention.default: sdpa_as_multi_head_attention}


def skip_full_masks(graph: onnx.GraphProto) -> int:
    """Wrap every masked MultiHeadAttention of ``graph`` in ``If(all keys valid) → unmasked, else masked``;
    the condition is computed once per mask tensor. Returns how many nodes were wrapped."""
    nodes: list[onnx.NodeProto] = []
    conds: dict[str, str] = {}
    wrapped = 0
    known = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    for node in graph.node:
        if not (node.op_type == "MultiHeadAttention" and node.domain == "com.microsoft"
                and len(node.input) >= 5 and node.input[4]):
            nodes.append(node)
            continue
        mask = node.input[4]
        if mask not in conds:
            conds[mask] = f"{mask}__all_valid"
            nodes += [onnx.helper.make_node("ReduceMin", [mask], [f"{mask}__min"], keepdims=0),
                      onnx.helper.make_node("Cast", [f"{mask}__min"], [conds[mask]], to=onnx.TensorProto.BOOL)]
        plain = list(node.input[:4])          # query, key, value and the bias, if any; no mask
        while not plain[-1]:
            plain.pop()
        dtype = known.get(node.output[0]) or known.get(node.input[0]) or onnx.TensorProto.FLOAT   # fp16 exports
        branches = {}
        for kind, inputs in (("plain", plain), ("masked", list(node.input))):
            inner = onnx.NodeProto()
            inner.CopyFrom(node)
            inner.name = f"{node.name}__{kind}"
            del inner.input[:], inner.output[:]
            inner.input.extend(inputs)
            inner.output.append(f"{node.output[0]}__{kind}")
            out = onnx.helper.make_tensor_value_info(inner.output[0], dtype, None)
            branches[kind] = onnx.helper.make_graph([inner], inner.name, [], [out])
        nodes.append(onnx.helper.make_node("If", [conds[mask]], list(node.output), name=f"{node.name}__if",
                                           then_branch=branches["plain"], else_branch=branches["masked"]))
        wrapped += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return wrapped


def _attr(node: onnx.NodeProto, name: str, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _ints(graph_consts: dict[str, onnx.TensorProto], producer: dict[str, onnx.NodeProto], name: str) -> list[int] | None:
    """The constant integers behind ``name``: an initializer, or a Concat whose parts are all known (the
    exporter's reshape targets mix a run-time batch/length with constant head sizes; unknown parts → -1)."""
    if name in graph_consts:
        return [int(v) for v in numpy_helper.to_array(graph_consts[name]).reshape(-1)]
    node = producer.get(name)
    if node is None or node.op_type != "Concat":
        return None
    parts = [_ints(graph_consts, producer, part) for part in node.input]
    return [v for part in parts for v in (part if part is not None else [-1])]


def qkv_into_attention(graph: onnx.GraphProto) -> int:
    """Feed each ViT block's MultiHeadAttention from three products instead of one packed one.

    The export computes ``x·W + b`` as one (L, 3·C) product, then views, transposes, splits and
    re-lays it out into q, k and v — on ORT's CPU a copy of the whole product per block. Instead each of
    q, k, v is its own MatMul with its third of ``W`` (the same dot products, column for column), and the
    bias goes to the attention, which adds it as it lays out the heads (the same fp32 sums). On sat_644
    (2 threads) one stage-C block's attention 149 → 141 ms. Applies where the timm layout is proven:
    ``MatMul(x, W[C, 3·C]) → Add(b[3·C]) → Reshape(.., 3, H, d) → Transpose(2, 0, 3, 1, 4) → Gather(0|1|2)
    → Transpose(0, 2, 1, 3) → Reshape → query | key | value``. Returns how many attentions were rewired."""
    consts = {t.name: t for t in graph.initializer}
    producer = {o: node for node in graph.node for o in node.output}
    readers = readers_of(graph)

    def source(name: str) -> tuple[onnx.NodeProto, int] | None:
        """The qkv Add and the Gather index behind one MultiHeadAttention input."""
        node, chain = producer.get(name), []
        while node is not None and node.op_type in ("Reshape", "Transpose") and readers.get(node.output[0]) == 1:
            chain.append(_attr(node, "perm", None) if node.op_type == "Transpose" else "view")
            node = producer.get(node.input[0])
        if chain != ["view", [0, 2, 1, 3]] or node is None or node.op_type != "Gather" or _attr(node, "axis", 0) != 0:
            return None
        index, permute = _ints(consts, producer, node.input[1]), producer.get(node.input[0])
        if index is None or len(index) != 1 or permute is None or permute.op_type != "Transpose" \
                or _attr(permute, "perm", None) != [2, 0, 3, 1, 4]:
            return None
        view = producer.get(permute.input[0])
        add = producer.get(view.input[0]) if view is not None and view.op_type == "Reshape" else None
        shape = _ints(consts, producer, view.input[1]) if add is not None else None
        if add is None or add.op_type != "Add" or shape is None or len(shape) != 5 or shape[2] != 3 \
                or readers.get(add.output[0]) != 1 or readers.get(view.output[0]) != 1:
            return None
        return add, index[0]

    rewired = 0
    for node in [n for n in graph.node if n.op_type == "MultiHeadAttention" and n.domain == CONTRIB]:
        if len(node.input) < 3 or (len(node.input) > 3 and node.input[3]):     # cross-attention, or biased
            continue
        found = [source(name) for name in node.input[:3]]
        if None in found or len({id(add) for add, _ in found}) != 1 or [i for _, i in found] != [0, 1, 2]:
            continue
        add = found[0][0]
        bias = [name for name in add.input if name in consts and len(consts[name].dims) == 1]
        matmul = producer.get(next((name for name in add.input if name not in bias), ""))
        weight = consts.get(matmul.input[1]) if matmul is not None and matmul.op_type == "MatMul" else None
        if len(bias) != 1 or weight is None or len(weight.dims) != 2 or weight.dims[1] != 3 * weight.dims[0] \
                or list(consts[bias[0]].dims) != [weight.dims[1]] or readers.get(matmul.output[0]) != 1:
            continue
        w, c = numpy_helper.to_array(weight), weight.dims[0]
        at = list(graph.node).index(matmul)
        outputs = []
        for i, part in enumerate("qkv"):
            graph.initializer.append(numpy_helper.from_array(w[:, i * c:(i + 1) * c].copy(), f"{weight.name}.{part}"))
            third = onnx.helper.make_node("MatMul", [matmul.input[0], f"{weight.name}.{part}"],
                                          [f"{matmul.output[0]}.{part}"], name=f"{matmul.name or matmul.output[0]}.{part}")
            third.metadata_props.extend(matmul.metadata_props)       # the module path int8 picks by
            graph.node.insert(at + i, third)
            outputs.append(third.output[0])
        node.input[:] = outputs + [bias[0]] + list(node.input[4:])
        if readers[weight.name] == 1:
            graph.initializer.remove(weight)
        rewired += 1        # each block's chain is its own: the maps stay valid for the other blocks
    if rewired:
        drop_unread(graph)
    return rewired


def drop_unread(graph: onnx.GraphProto) -> None:
    """Remove the main graph's nodes whose outputs nothing reads (what a rewiring left behind): one
    pass from the end of the (topologically ordered) node list, so a dead chain goes at once."""
    readers = readers_of(graph)
    for node in reversed(list(graph.node)):
        if not any(readers.get(o) for o in node.output):
            graph.node.remove(node)
            for name in node.input:
                readers[name] = readers.get(name, 0) - 1


def fuse_residuals(path: Path, cfg, cpu_kernels: bool = False) -> None:
    """ONNX Runtime's transformer optimizer in place (SkipLayerNormalization, BiasGelu), metadata kept.

    ``cpu_kernels`` (the fp32 export, for ORT's CPU): the forms its CPU kernels run fastest instead —
    residual Add and LayerNormalization left apart (on sat_644 its SkipLayerNormalization kernel took
    144 ms per image against 25 + 24 ms for the LayerNormalizations and the Adds it replaces), each qkv
    product split in three, the MLPs as 1×1 convolutions (:mod:`.mlp_conv`)."""
    optimizer = require("onnxruntime.transformers.optimizer")
    options = require("onnxruntime.transformers.fusion_options").FusionOptions("vit")
    options.enable_attention = False          # attention is already one node (see above)
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = not cpu_kernels
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    # from the file, not a loaded proto: that way the optimizer's shape inference (which the residual
    # fusions need to prove the two Add inputs have one shape) runs on the whole graph
    model = optimizer.optimize_model(str(path), model_type="vit", num_heads=cfg.num_heads, hidden_size=cfg.embed_dim,
                                     optimization_options=options, opt_level=0)
    fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v and k in FUSED_KINDS}
    fused_proto = model.model
    if cpu_kernels and (n := qkv_into_attention(fused_proto.graph)):
        fused["MultiHeadAttention fed by q, k, v products"] = n
    if n := skip_full_masks(fused_proto.graph):
        fused["MultiHeadAttention (mask skipped when all keys valid)"] = n
    if cpu_kernels and (n := mlps_as_convs(fused_proto)):
        fused["MLP as 1x1 convolutions"] = n
    del fused_proto.metadata_props[:]
    for k, v in props.items():
        fused_proto.metadata_props.add(key=k, value=v)
    external = path.with_name(path.name + ".data").is_file()
    onnx.save_model(fused_proto, str(path), save_as_external_data=external, location=path.name + ".data")
    log.info("    %s: fused %s", path.name, ", ".join(f"{v} {k}" for k, v in sorted(fused.items())) or "nothing")
