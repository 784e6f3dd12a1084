"""Network invariants that can be checked without the original code (spec Appendix B)."""

import math

import pytest
import torch
import torch.nn.functional as F

from sathmr.model import build_model
from sathmr.model.config import get_config
from sathmr.model.geometry import (
    axis_angle_to_rotmat,
    rot6d_to_rotmat,
    rotmat_to_axis_angle,
    rotmat_to_rot6d,
    sine_embed,
    sine_xy,
)
from sathmr.model.tokens import TokenBudget, TokenSelector

TINY = get_config("tiny")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(TINY).eval()


def footprint(yx, lvl, grid0):
    """Level-0 cells covered by each token → coverage count map."""
    cover = torch.zeros(grid0, grid0, dtype=torch.int64)
    for (y, x), lv in zip(yx.tolist(), lvl.tolist()):
        s = 2 ** lv
        cover[y * s:(y + 1) * s, x * s:(x + 1) * s] += 1
    return cover


def scale_map_from(conf, scale):
    return torch.stack((conf, scale), -1)


@pytest.mark.parametrize("hw", [(8, 8), (4, 8), (8, 4), (2, 2)])
def test_selection_counts_and_coverage(hw):
    g = torch.Generator().manual_seed(1)
    hc, wc = hw
    conf = torch.rand(1, hc, wc, generator=g)
    scale = torch.rand(1, hc, wc, generator=g)
    sel = TokenSelector(0.3, 0.5)(scale_map_from(conf, scale), torch.ones(1, hc, wc, dtype=torch.bool))
    n0, nk, ng = sel.counts[0].tolist()
    ns = n0 // 4
    valid = conf > 0.3
    small = valid & (scale < 0.5)
    assert ns == int(small.sum())
    assert ns + nk + 4 * ng == hc * wc
    assert sel.overflow.sum() == 0
    # expected groups: all-invalid 2x2 blocks
    groups = ~valid[0].view(hc // 2, 2, wc // 2, 2).any(3).any(1)
    assert ng == int(groups.sum())


def test_every_cell_covered_exactly_once(tiny_model):
    torch.manual_seed(3)
    img = torch.randn(1, 3, 448, 336)
    hc, wc = 448 // 28, 336 // 28
    conf = torch.rand(1, hc, wc)
    scale = torch.rand(1, hc, wc)
    out = tiny_model(img, torch.tensor([[448, 336]]), scale_map_override=scale_map_from(conf, scale))
    tok = out["tokens"]
    lvl = tok["tok_lvl"][0]
    cover = footprint(tok["tok_yx"][0][lvl >= 0], lvl[lvl >= 0], TINY.grid0)
    assert (cover[: 2 * hc, : 2 * wc] == 1).all()
    assert cover.sum() == (2 * hc) * (2 * wc)
    n0, n1, n2 = tok["tok_counts"][0].tolist()
    assert n0 + n1 + n2 == int((lvl >= 0).sum())


@pytest.mark.parametrize("fill,expect", [(0.0, lambda n1: n1 // 4), (1.0, lambda n1: 4 * n1)])
def test_extreme_token_counts(tiny_model, fill, expect):
    hc = wc = 16
    smap = scale_map_from(torch.full((1, hc, wc), fill), torch.full((1, hc, wc), 0.1))
    out = tiny_model(torch.randn(1, 3, 448, 448), torch.tensor([[448, 448]]), scale_map_override=smap)
    assert int(out["tokens"]["tok_counts"].sum()) == expect(hc * wc)


def test_cells_outside_image_are_padding(tiny_model):
    # A 448x448 batch holding a 112-px-high image: only its own 4 cell rows may produce tokens.
    out = tiny_model(torch.randn(1, 3, 448, 448), torch.tensor([[100, 448]]))
    tok = out["tokens"]
    lvl = tok["tok_lvl"][0]
    cover = footprint(tok["tok_yx"][0][lvl >= 0], lvl[lvl >= 0], TINY.grid0)
    assert cover[:8].min() == 1 and cover[8:].sum() == 0
    assert not out["cell_mask"][0, 4:].any()


def test_level_embeddings_match_convolutions(tiny_model):
    """Level-1 token = conv14 of the 2x-mean-pooled image; level-0 children = conv14 at full resolution."""
    m = tiny_model
    img = torch.randn(1, 3, 56, 56)
    pooled = F.interpolate(img, scale_factor=0.5, mode="bilinear", align_corners=False)
    assert torch.allclose(pooled, F.avg_pool2d(img, 2), atol=1e-6)
    full = m.encoder_patch_proj[0](img)  # (1, C, 4, 4)
    cell = img[:, :, 28:56, 0:28]        # cell (y1=1, x1=0)
    children = m.encoder_patch_proj[0](cell).flatten(2)[0].T  # TL, TR, BL, BR
    expect = torch.stack([full[0, :, 2 + dy, 0 + dx] for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))])
    assert torch.allclose(children, expect, atol=1e-5)


def test_level1_position_table_is_bicubic_reduction(tiny_model):
    p = tiny_model.encoder_pos_embeds.detach()
    ref = F.interpolate(p.permute(2, 0, 1)[None], size=(TINY.grid1, TINY.grid1), mode="bicubic",
                        align_corners=False)[0].permute(1, 2, 0)
    assert torch.allclose(tiny_model.level1_pos_table(), ref, atol=1e-5)
    # impulse response: the 4-tap filter with edge clamping
    half = tiny_model._half
    assert torch.allclose(half[3, 5:9], torch.tensor([-0.09375, 0.59375, 0.59375, -0.09375]))
    assert math.isclose(float(half[0, 0]), -0.09375 + 0.59375, abs_tol=1e-7)


def test_sine_encoding():
    e0 = sine_embed(torch.tensor(0.0), 384)
    assert torch.equal(e0[0::2], torch.zeros(192)) and torch.equal(e0[1::2], torch.ones(192))
    assert math.isclose(float(sine_embed(torch.tensor(0.1), 384)[0]), math.sin(2 * math.pi * 0.1), rel_tol=1e-6)
    xy = sine_xy(torch.tensor(0.2), torch.tensor(0.7), 768)
    assert torch.allclose(xy[:384], sine_embed(torch.tensor(0.7), 384))  # y first


def test_rotations_roundtrip():
    torch.manual_seed(0)
    aa = torch.randn(500, 3) * 1.2
    R = axis_angle_to_rotmat(aa)
    assert torch.allclose(rot6d_to_rotmat(rotmat_to_rot6d(R)), R, atol=1e-5)
    assert torch.allclose(axis_angle_to_rotmat(rotmat_to_axis_angle(R)), R, atol=1e-4)
    assert torch.allclose(torch.linalg.det(rot6d_to_rotmat(torch.randn(10, 6))), torch.ones(10), atol=1e-5)
    # 6D is a row-major 3x2 matrix whose columns are used (SPIN convention)
    x = torch.tensor([1.0, 0, 0, 1, 0, 0])
    assert torch.allclose(rot6d_to_rotmat(x), torch.eye(3))
    assert torch.equal(rotmat_to_axis_angle(torch.eye(3)), torch.zeros(3))


def test_batch_equals_single_runs(tiny_model):
    torch.manual_seed(5)
    a, b = torch.randn(3, 448, 448), torch.randn(3, 224, 448)
    hw = torch.tensor([[448, 448], [224, 448]])
    batch = torch.zeros(2, 3, 448, 448)
    batch[0], batch[1, :, :224] = a, b
    with torch.no_grad():
        both = tiny_model.net_outputs(batch, hw)
        one = tiny_model.net_outputs(a[None], hw[:1])
        two = tiny_model.net_outputs(b[None], hw[1:])
    for k in ("pred_boxes", "pred_confs", "pred_pose6d", "pred_betas", "pred_cam"):
        assert torch.allclose(both[k][0], one[k][0], atol=2e-5), k
        assert torch.allclose(both[k][1], two[k][0], atol=2e-5), k
    assert torch.equal(both["tok_counts"][1], two["tok_counts"][0])


def test_static_budget_equals_dynamic(tiny_model):
    torch.manual_seed(6)
    img = torch.randn(1, 3, 448, 336)
    hw = torch.tensor([[448, 330]])
    with torch.no_grad():
        dyn = tiny_model.net_outputs(img, hw)
        tiny_model.set_budget(TokenBudget(sat_cells=200, context=256))
        canvas = torch.zeros(1, 3, 448, 448)
        canvas[..., :336] = img
        stat = tiny_model.net_outputs(canvas, hw)
        tiny_model.set_budget(None)
    assert int(stat["tok_overflow"].sum()) == 0
    assert torch.equal(stat["tok_counts"], dyn["tok_counts"])
    for k in ("pred_boxes", "pred_confs", "pred_pose6d", "pred_betas", "pred_cam"):
        assert torch.allclose(stat[k], dyn[k], atol=2e-5), k


def test_sat_overflow_demotes_largest_scale_first():
    hc = wc = 4
    conf = torch.ones(1, hc, wc)
    scale = torch.linspace(0.01, 0.4, hc * wc).view(1, hc, wc)
    sel = TokenSelector(0.3, 0.5, TokenBudget(sat_cells=5, context=16))(
        scale_map_from(conf, scale), torch.ones(1, hc, wc, dtype=torch.bool))
    kept = sorted(sel.sat_idx[0][sel.sat_valid[0]].tolist())
    assert kept == [0, 1, 2, 3, 4]              # the five smallest scales
    assert sel.overflow[0].tolist() == [11, 0]  # the rest went to level 1, nothing dropped
    assert sel.counts[0].tolist() == [20, 11, 0]


def test_position_table_kept_in_inference_and_refreshed_on_change():
    """Eager inference computes the level-1 table once; any change of the level-0 table recomputes it."""
    torch.manual_seed(1)
    m = build_model(TINY).eval()
    fresh = lambda: torch.einsum("ij,jkc,lk->ilc", m._half, m.encoder_pos_embeds.detach(), m._half)  # noqa: E731
    with torch.no_grad():
        first = m.level1_pos_table()
        assert m.level1_pos_table() is first                       # kept
        m.encoder_pos_embeds.add_(1.0)                             # in-place update (version bump)
        assert torch.equal(m.level1_pos_table(), fresh()) and not torch.equal(first, fresh())
        m.load_state_dict(build_model(TINY).state_dict())          # a reload copies in place
        assert torch.equal(m.level1_pos_table(), fresh())
        m.encoder_pos_embeds = torch.nn.Parameter(torch.randn_like(m.encoder_pos_embeds))  # replaced
        assert torch.equal(m.level1_pos_table(), fresh())
        m.double()                                                 # new dtype
        assert m.level1_pos_table().dtype == torch.float64
    # autograd on: computed in the graph every time, gradients reach the level-0 table
    m.float()
    m.level1_pos_table().sum().backward()
    assert m.encoder_pos_embeds.grad is not None and m.encoder_pos_embeds.grad.abs().sum() > 0


def test_inference_heads_equal_the_last_layer_of_all(tiny_model):
    """``all_layers=False`` skips the earlier layers' confidence and camera heads, nothing else."""
    torch.manual_seed(7)
    img, hw = torch.randn(1, 3, 448, 448), torch.tensor([[448, 400]])
    with torch.no_grad():
        every = tiny_model(img, hw)["layers"]
        last = tiny_model(img, hw, all_layers=False)["layers"]
    assert len(every) == TINY.dec_layers and len(last) == 1
    assert last[0].keys() == every[-1].keys()
    for k, v in last[0].items():
        assert torch.equal(v, every[-1][k]), k


def test_batched_inference_heads_equal_per_layer_heads(tiny_model):
    """Eager inference runs the six layers' pose/shape heads as one batched MLP each: same values as
    each layer's own heads (the path autograd and the exported graphs take)."""
    torch.manual_seed(8)
    hs = [torch.randn(2, TINY.num_queries, TINY.embed_dim) for _ in range(TINY.dec_layers)]
    boxes = [torch.rand(2, TINY.num_queries, 4) for _ in range(TINY.dec_layers)]
    with torch.no_grad():
        batched = tiny_model.heads(hs, boxes)
        assert tiny_model._stacked_heads._value is not None
    per_layer = tiny_model.heads(hs, boxes)              # autograd on: each layer's own heads
    for b, p in zip(batched, per_layer):
        for k in ("pred_pose6d", "pred_betas"):
            torch.testing.assert_close(b[k], p[k].detach(), rtol=1e-6, atol=1e-6)
