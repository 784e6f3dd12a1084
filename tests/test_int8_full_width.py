"""`sathmr export --precision int8` at the full width of sat_644 (768 channels, 12 heads, 50 queries), at reduced
depth and canvas so that it stays cheap in CI.

The tiny model's int8 export always passed; the full-size one failed onnx.checker ("Nodes in a graph must
be topologically sorted"): the quantiser re-sorts the graph by explicit inputs only, and moved the
``If`` nodes of the attention fusion (whose branches read outer-scope tensors) ahead of their producers.
This width reproduces it; depth, decoder layers and canvas do not matter to it.
"""

from __future__ import annotations

import dataclasses

import onnx
import pytest
import torch

from sathmr.backends import OrtBackend, TorchBackend
from sathmr.common import hardware
from sathmr.export.onnx import export_network
from sathmr.export.quantize import topological_sort, weight_type
from sathmr.model import build_model
from sathmr.model.config import get_config
from sathmr.zoo.random_weights import spread_heads

#: sat_644's width with 3 blocks (1 before the split), 1 decoder layer and a 448-px canvas
FULL_WIDTH = dataclasses.replace(get_config("sat_644"), depth=3, split_layer=1, dec_layers=1, input_size=448)


@pytest.fixture(scope="module")
def full_width_int8(body_tiny, tmp_path_factory):
    torch.manual_seed(0)
    model = spread_heads(build_model(FULL_WIDTH).eval(), seed=0)
    art, _ = export_network(model, body_tiny, tmp_path_factory.mktemp("fw") / "int8", precision="int8")
    return model, art


def test_full_width_int8_export_passes_the_checker_and_keeps_the_tokens(full_width_int8):
    model, art = full_width_int8
    tokens = onnx.load(str(art.files["tokens"]))
    onnx.checker.check_model(tokens, full_check=False)
    assert sum(n.op_type == "MatMulInteger" for n in tokens.graph.node) == 4 * FULL_WIDTH.depth + 1
    assert any(n.op_type == "If" for n in tokens.graph.node)        # the fusion's branches are there
    be = OrtBackend.from_file(art.path, threads=2)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 448, 392, generator=g)
    hw = torch.tensor([[448, 392], [336, 392]])
    ref, out = TorchBackend(model).run(images, hw), be.run(images, hw)
    for k in ("tok_counts", "tok_yx", "tok_lvl"):       # stage A is fp32: the same token set
        assert torch.equal(out[k], ref[k]), k
    assert torch.allclose(out["scale_map"], ref["scale_map"], atol=1e-4)
    assert (ref["tok_counts"][:, 0] > 0).all()          # some SAT cells, so stages B/C see level-0 tokens


def test_sort_places_if_nodes_after_what_their_branches_read():
    """The rule the quantiser broke, on a three-node graph: a branch's outer-scope input counts."""
    h = onnx.helper
    branch = h.make_graph([h.make_node("Identity", ["y"], ["z"])], "b", [],
                          [h.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1])])
    nodes = [h.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch, name="if"),
             h.make_node("Neg", ["x"], ["y"], name="neg")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1]),
                                      h.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
                         [h.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model)
    topological_sort(model.graph)
    assert [n.name for n in model.graph.node] == ["neg", "if"]
    onnx.checker.check_model(model)


@pytest.mark.parametrize(("flags", "expected"), [(["avx2", "fma"], "QUInt8"), (["avx2", "avx_vnni"], "QInt8"),
                                                 (["avx512f", "avx512_vnni", "amx_int8"], "QInt8")])
def test_weight_type_follows_the_cpu(monkeypatch, flags, expected):
    """U8S8 where VNNI/AMX run it fast and exactly (1.45x vs 0.98x on a Xeon with AMX), U8U8 where U8S8 would
    saturate (no VNNI)."""
    monkeypatch.setattr(hardware, "cpu_info", lambda: {"cpu": "test CPU", "cpu_flags": flags})
    assert weight_type() == expected
