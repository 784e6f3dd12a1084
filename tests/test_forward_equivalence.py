"""Eager inference's shortcuts equal the plain arithmetic they replace (autograd, tracing and export take the
plain path): the folded decoder cross-attention, the 2x2 pools, the fused LayerScale residual."""

import pytest
import torch
import torch.nn.functional as F

from sathmr.model import build_model
from sathmr.model.config import get_config
from sathmr.model.decoder import DecoderLayer, _heads, _merge
from sathmr.model.layers import Block, key_mask_bias, max_pool2, mean_pool2
from sathmr.zoo.random_weights import spread_heads

TINY = get_config("tiny")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).double().norm() / b.double().norm())


def projected_cross_attention(layer: DecoderLayer, qc, qs, memory, mem_pos, valid):
    """The original's conditional cross-attention written out: project the memory, per head
    [content ; position] halves, scale 1/sqrt(2d), padding keys masked."""
    n = layer.nhead
    kc, kp = layer.ca_kcontent_proj(memory), layer.ca_kpos_proj(mem_pos)
    if layer.ca_qpos_proj is not None:
        kc = kc + kp
    q = torch.cat((_heads(qc, n), _heads(qs, n)), -1)
    k = torch.cat((_heads(kc, n), _heads(kp, n)), -1)
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    return s.softmax(-1) @ _heads(layer.ca_v_proj(memory), n)


@pytest.mark.parametrize("first", [True, False])
def test_folded_cross_attention_equals_projected(first):
    """Keys and values folded onto the queries (first layer: the positional key also meets the content
    query), with padding keys in a batch of two: equal to the projected form up to float rounding."""
    torch.manual_seed(1)
    C, heads, Q, L = 64, 4, 7, 30
    layer = DecoderLayer(C, heads, 128)
    for p in layer.parameters():           # biases too: the fold must drop the key biases, keep the value bias
        torch.nn.init.normal_(p, std=0.3)
    if not first:
        layer.ca_qpos_proj = None
    qc, qs = torch.randn(2, Q, C), torch.randn(2, Q, C)
    memory, mem_pos = torch.randn(2, L, C), torch.randn(2, L, C)
    valid = torch.ones(2, L, dtype=torch.bool)
    valid[1, 20:] = False
    with torch.no_grad():
        want = projected_cross_attention(layer, qc, qs, memory, mem_pos, valid)
        got = layer.folded_cross_attention(qc, qs, memory, torch.cat((memory, mem_pos), -1),
                                           key_mask_bias(valid))
        torch.testing.assert_close(_merge(got), _merge(want), rtol=1e-5, atol=1e-5)
        # the padding keys take no part: changing them changes nothing
        memory[1, 20:], mem_pos[1, 20:] = 1e3, -1e3
        again = layer.folded_cross_attention(qc, qs, memory, torch.cat((memory, mem_pos), -1),
                                             key_mask_bias(valid))
        assert torch.equal(again[1], got[1])


def test_eager_network_equals_the_graph_path():
    """The whole tiny network in eager inference (folded decoder, pools, fused residuals) against the path
    autograd and the exporters take, on a padded batch of two: within 1e-5 relative on every output."""
    torch.manual_seed(2)
    model = spread_heads(build_model(TINY).eval())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):          # LayerScale away from 1, where x + h·1 would be exact anyway
                p.uniform_(0.1, 1.0)
    imgs = torch.randn(2, 3, TINY.input_size, TINY.input_size)
    hw = torch.tensor([[TINY.input_size, TINY.input_size], [TINY.input_size // 2, TINY.input_size]])
    with torch.inference_mode():
        eager = model.net_outputs(imgs, hw)
    graph = {k: v.detach() for k, v in model.net_outputs(imgs, hw).items()}   # autograd on: the plain path
    for k, v in eager.items():
        if v.is_floating_point():
            assert rel(v, graph[k]) < 1e-5, k
        else:
            assert torch.equal(v, graph[k]), k
    assert not all(torch.equal(eager[k], graph[k]) for k in ("pred_boxes", "pred_confs", "pred_betas")), \
        "the eager shortcuts did not run"


def test_pools_are_bit_exact():
    """The elementwise 2x2 mean and max of eager inference give exactly ``avg_pool2d`` / ``amax``."""
    torch.manual_seed(3)
    x = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        assert torch.equal(mean_pool2(x), F.avg_pool2d(x, 2))
        t = torch.randn(2, 6 * 8, 16)
        want = t.view(2, 3, 2, 4, 2, 16).amax(dim=(2, 4)).reshape(2, -1, 16)
        assert torch.equal(max_pool2(t, 6, 8), want)
    assert torch.equal(mean_pool2(x.requires_grad_()), F.avg_pool2d(x, 2))      # the graph path: the op itself


def test_fused_layerscale_residual():
    """x + h·gamma in one ``addcmul``: exact for gamma = 1 (random init), one rounding apart otherwise."""
    torch.manual_seed(4)
    blk = Block(64, 4).eval()
    x = torch.randn(2, 9, 64)
    plain = lambda: blk.ls2(blk.mlp(blk.norm2(y := x + blk.ls1(blk.attn(blk.norm1(x), None))))) + y  # noqa: E731
    with torch.no_grad():
        assert torch.equal(blk(x), plain())
        blk.ls1.gamma.uniform_(0.1, 1.0)
        blk.ls2.gamma.uniform_(0.1, 1.0)
        torch.testing.assert_close(blk(x), plain(), rtol=1e-6, atol=1e-6)
