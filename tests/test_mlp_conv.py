"""The fp32 ONNX Runtime export runs the ViT blocks' MLPs as 1×1 convolutions (``sathmr.export.mlp_conv``):
every MLP is rewritten, ONNX Runtime really runs them on its NCHWc convolution kernels, the MatMul form
comes back exactly for the int8 quantiser, and both forms compute the same network."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest

from sathmr.export.mlp_conv import DOMAIN, FUNCTION, mlps_as_convs, mlps_as_matmuls

ort = pytest.importorskip("onnxruntime")


def _calls(model: onnx.ModelProto) -> int:
    return sum(n.op_type == FUNCTION and n.domain == DOMAIN for n in model.graph.node)


def test_every_mlp_of_the_fp32_export_is_a_convolution_call(tiny_export):
    cfg = tiny_export.meta.cfg
    total = 0
    for graph, path in tiny_export.files.items():
        proto = onnx.load(str(path), load_external_data=False)
        assert not any(n.op_type == "BiasGelu" for n in proto.graph.node), graph     # none left as MatMuls
        assert [f.name for f in proto.functions if f.domain == DOMAIN] == [FUNCTION], graph
        assert any(o.domain == DOMAIN for o in proto.opset_import), graph
        total += _calls(proto)
        shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
        for call in (n for n in proto.graph.node if n.op_type == FUNCTION):
            hidden = int(cfg.embed_dim * cfg.mlp_ratio)     # weights stored in convolution layout (no transposes)
            assert [shapes[w] for w in call.input[1:]] == [[hidden, cfg.embed_dim, 1, 1], [hidden],
                                                           [cfg.embed_dim, hidden, 1, 1]], graph
    assert total == cfg.split_layer + cfg.depth      # stage A's blocks in scale_map, stages B/C's in tokens


def test_onnx_runtime_runs_them_on_its_nchwc_convolutions(tiny_export, tmp_path):
    """What the rewrite is for: after ONNX Runtime inlines the function and optimises the graph, each MLP
    is two convolutions of its NCHWc kernels."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tiny_export.files["tokens"]), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    calls = _calls(onnx.load(str(tiny_export.files["tokens"]), load_external_data=False))
    kinds = [(n.op_type, n.domain) for n in optimized.graph.node]
    assert kinds.count(("Conv", "com.microsoft.nchwc")) >= 2 * calls


def test_the_matmul_form_comes_back_exactly(tiny_export):
    """int8 quantises MatMuls: mlps_as_matmuls undoes the rewrite, and rewriting again gives the file's graph
    byte for byte (same nodes, names, weights and module paths)."""
    fp32 = onnx.load(str(tiny_export.files["tokens"]))
    restored = copy.deepcopy(fp32)
    n = mlps_as_matmuls(restored)
    assert n == _calls(fp32) and n > 0 and _calls(restored) == 0
    assert not restored.functions and not any(o.domain == DOMAIN for o in restored.opset_import)
    assert sum(x.op_type == "BiasGelu" for x in restored.graph.node) == n
    assert mlps_as_convs(restored) == n
    assert restored.SerializeToString() == fp32.SerializeToString()


def test_both_forms_compute_the_same_stage_a(tiny_export):
    """The scale map (stage A's blocks, whose output the token selection thresholds) from the conv form and
    from the restored MatMul form; ONNX Runtime against PyTorch for the whole network: test_export.py."""
    conv = onnx.load(str(tiny_export.files["scale_map"]))
    matmul = copy.deepcopy(conv)
    assert mlps_as_matmuls(matmul) > 0
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (conv, matmul))
    hw = next(i for i in a.get_inputs() if i.name == "img_hw")
    feeds = {"images": np.random.default_rng(0).standard_normal((1, 3, 224, 336)).astype(np.float32),
             "img_hw": np.array([[224, 300]], np.int64 if "int64" in hw.type else np.float32)}
    for out, x, y in zip(a.get_outputs(), a.run(None, feeds), b.run(None, feeds)):
        assert x.shape == y.shape, out.name
        if x.dtype.kind == "f":
            assert np.abs(x - y).max() <= 1e-5 * (np.abs(y).max() + 1e-12), out.name
        else:
            np.testing.assert_array_equal(x, y, err_msg=out.name)


def test_a_graph_without_the_pattern_is_untouched():
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])], [w])
    model = helper.make_model(g)
    before = model.SerializeToString()
    assert mlps_as_convs(model) == 0 and mlps_as_matmuls(model) == 0
    assert model.SerializeToString() == before
