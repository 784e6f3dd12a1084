"""The ViT blocks' MLPs as 1×1 convolutions in the fp32 ONNX Runtime export, for its CPU kernels.

Why: a block's MLP (fc1 → GELU → fc2) is a 1×1 convolution over the tokens laid out as a (C, L, 1)
image, and ONNX Runtime's CPU convolutions (MLAS's NCHWc kernels) run those two products faster than
its MatMul (MLAS's SGEMM) does — the products are the same, the cache blocking is not. Measured on
sat_644 (Xeon with AVX-512, 2 threads, alternated): one stage-C MLP of 1986 tokens 128 → 111 ms
(PyTorch/MKL: 104 ms), 1109 tokens 79 → 62 ms; ONNX Runtime's kernel time per image −20 % (tokens
graph) and −24 % (scale map). Against PyTorch's forward, interleaved on a noisy host, the two-stage ORT
network went from 0.90× to 0.93× (min) on the first test photo and from 0.83× to 0.92× on the second
(one quieter run: 1.03× and 1.27×).

How: each ``MatMul(x, W1) → BiasGelu(·, b1) → MatMul(·, W2)`` with constant weights becomes one call of
the model-local function ``sathmr.TokenMlp(x, W1, b1, W2)``, its two weights stored in convolution layout
under their own names (the file does not grow). ONNX Runtime inlines the function when it loads the
graph and turns the layout transposes around the convolutions into its own ReorderInput/ReorderOutput
(~1 ms each). Weights in convolution layout in the file, not transposed in the graph: a transpose that
ONNX Runtime folds at load time kept ~250 MB more resident on sat_644 (1.93 against 1.69 GB; the
MatMul form: 1.29 GB, whose packed weights replace the file's). :func:`mlps_as_matmuls` restores the
MatMul form exactly, for what needs MatMuls: the int8 quantiser and OpenVINO's converter, whose ONNX
frontend does not inline the function.

Only fp32 graphs of the ONNX Runtime target get it: int8 quantises these MatMuls, fp16 is for GPUs
(ONNX Runtime CUDA runs the convolutions with cuDNN's heuristic algorithm choice,
``backends.ort_backend.CUDA_OPTIONS``), and the portable graphs (TensorRT, OpenVINO) keep plain MatMuls.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

DOMAIN = "sathmr"
FUNCTION = "TokenMlp"
CONTRIB = "com.microsoft"


def token_mlp_function(opset: int) -> onnx.FunctionProto:
    """``y = fc2(GELU(fc1(x) + b1))`` for x (B, L, C) as two 1×1 convolutions over x viewed as the NHWC
    image (B, L, 1, C); the weights come in convolution layout, w1 (H, C, 1, 1) and w2 (C, H, 1, 1)."""
    n = helper.make_node
    body = [
        n("Constant", [], ["axis2"], value_ints=[2]),
        n("Unsqueeze", ["x", "axis2"], ["x_nhwc"]),                    # (B, L, 1, C)
        n("Transpose", ["x_nhwc"], ["x_nchw"], perm=[0, 3, 1, 2]),      # (B, C, L, 1)
        n("Conv", ["x_nchw", "w1", "b1"], ["hidden"]),
        n("Gelu", ["hidden"], ["act"], domain=CONTRIB),
        n("Conv", ["act", "w2"], ["y_nchw"]),
        n("Transpose", ["y_nchw"], ["y_nhwc"], perm=[0, 2, 3, 1]),
        n("Squeeze", ["y_nhwc", "axis2"], ["y"]),
    ]
    return helper.make_function(DOMAIN, FUNCTION, ["x", "w1", "b1", "w2"], ["y"], body,
                                [helper.make_opsetid("", opset), helper.make_opsetid(CONTRIB, 1)])


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _relayout(tensor: onnx.TensorProto, conv: bool) -> None:
    """A MatMul weight (K, N) ↔ the same weight in convolution layout (N, K, 1, 1), in place, same name."""
    w = numpy_helper.to_array(tensor)
    w = np.ascontiguousarray(w.T)[:, :, None, None] if conv else np.ascontiguousarray(w[:, :, 0, 0].T)
    tensor.CopyFrom(numpy_helper.from_array(w, tensor.name))


def readers_of(graph: onnx.GraphProto) -> dict[str, int]:
    """How many nodes (subgraphs included) and graph outputs read each tensor."""
    count: dict[str, int] = {o.name: 1 for o in graph.output}

    def visit(g: onnx.GraphProto) -> None:
        for node in g.node:
            for name in node.input:
                count[name] = count.get(name, 0) + 1
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    visit(sub)
    visit(graph)
    return count


def mlps_as_convs(model: onnx.ModelProto) -> int:
    """Rewrite every MLP of ``model``'s main graph as a ``sathmr.TokenMlp`` call (in place). Returns how
    many were rewritten; a graph without any is left untouched."""
    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    consts = {name: len(t.dims) for name, t in tensors.items()}
    producer = {o: node for node in graph.node for o in node.output}
    readers = readers_of(graph)
    fc2_of = {node.input[0]: node for node in graph.node if node.op_type == "MatMul"}
    calls: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for gelu in graph.node:
        if gelu.op_type != "BiasGelu" or gelu.domain != CONTRIB:
            continue
        fc1, fc2 = producer.get(gelu.input[0]), fc2_of.get(gelu.output[0])
        if (fc1 is None or fc2 is None or fc1.op_type != "MatMul" or consts.get(fc1.input[1]) != 2
                or consts.get(fc2.input[1]) != 2 or consts.get(gelu.input[1]) != 1
                or readers.get(fc1.output[0]) != 1 or readers.get(gelu.output[0]) != 1
                or readers.get(fc1.input[1]) != 1 or readers.get(fc2.input[1]) != 1):   # weights used here only
            continue
        for weight in (fc1.input[1], fc2.input[1]):
            _relayout(tensors[weight], conv=True)
        call = helper.make_node(FUNCTION, [fc1.input[0], fc1.input[1], gelu.input[1], fc2.input[1]],
                                [fc2.output[0]], name=fc1.name or fc2.output[0], domain=DOMAIN)
        call.metadata_props.extend(fc1.metadata_props)      # the module path (the quantiser picks by it)
        calls[id(fc1)] = call
        dropped |= {id(gelu), id(fc2)}
    if not calls:
        return 0
    nodes = [calls.get(id(node), node) for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    if not any(f.domain == DOMAIN and f.name == FUNCTION for f in model.functions):
        model.functions.append(token_mlp_function(_default_opset(model)))
    return len(calls)


def mlps_as_matmuls(model: onnx.ModelProto) -> int:
    """Undo :func:`mlps_as_convs` (in place): every call becomes MatMul → BiasGelu → MatMul on the same
    weights again. Returns how many calls were restored."""
    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    nodes, restored = [], 0
    for node in graph.node:
        if node.op_type != FUNCTION or node.domain != DOMAIN:
            nodes.append(node)
            continue
        x, w1, b1, w2 = node.input
        for weight in (w1, w2):
            _relayout(tensors[weight], conv=False)
        hidden, act = f"{node.name}/fc1", f"{node.name}/act"
        parts = [helper.make_node("MatMul", [x, w1], [hidden], name=node.name),
                 helper.make_node("BiasGelu", [hidden, b1], [act], name=f"{node.name}/gelu", domain=CONTRIB),
                 helper.make_node("MatMul", [act, w2], list(node.output), name=f"{node.name}/fc2")]
        for part in parts:
            part.metadata_props.extend(node.metadata_props)
        nodes += parts
        restored += 1
    if restored:
        del graph.node[:]
        graph.node.extend(nodes)
        keep = [f for f in model.functions if not (f.domain == DOMAIN and f.name == FUNCTION)]
        del model.functions[:]
        model.functions.extend(keep)
        imports = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(imports)
    return restored
