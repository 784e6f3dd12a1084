"""DN queries: group layout, attention mask, noise bounds, empty slots."""

import pytest
import torch
from torch import nn

from sathmr.train.dn import DNQueries, build_dn_queries, dn_attention_mask, resolve_num_groups
from sathmr.train.matcher import box_cxcywh_to_xyxy


def identity_enc() -> nn.Linear:
    enc = nn.Linear(82, 82)
    with torch.no_grad():
        enc.weight.copy_(torch.eye(82))
        enc.bias.zero_()
    return enc


def make_targets() -> list[dict]:
    g = torch.Generator().manual_seed(0)

    def t(n):
        boxes = torch.cat([torch.rand(n, 2, generator=g) * 0.2 + 0.4, torch.rand(n, 2, generator=g) * 0.1 + 0.1], 1)
        return {"boxes": boxes, "poses": torch.randn(n, 72, generator=g), "betas": torch.randn(n, 10, generator=g)}

    return [t(2), t(1)]


def test_mask_structure():
    m, groups, q = 2, 3, 5
    gs = 2 * m
    pad = gs * groups
    mask = dn_attention_mask(pad, q, gs)
    assert mask.shape == (pad + q, pad + q) and mask.dtype == torch.bool
    assert mask[pad:, :pad].all()                 # matching queries never see DN slots
    assert not mask[pad:, pad:].any()             # ... but see each other
    assert not mask[:pad, pad:].any()             # DN slots see the matching queries
    for g in range(groups):
        rows = slice(g * gs, (g + 1) * gs)
        assert not mask[rows, rows].any()         # positives and negatives of a group see each other
        others = [c for c in range(pad) if not g * gs <= c < (g + 1) * gs]
        assert mask[rows][:, others].all()        # groups are isolated


def test_group_rule():
    assert resolve_num_groups(10, 5) == 10
    assert resolve_num_groups(0, 5) == 1
    assert resolve_num_groups(100, 5) == 10
    assert resolve_num_groups(100, 80) == 1


def test_layout_and_noise_bounds():
    targets = make_targets()
    gen = torch.Generator().manual_seed(123)
    dn = build_dn_queries(targets, identity_enc(), num_queries=7, dn_number=4, box_noise_scale=0.4,
                          tgt_noise_scale=0.2, generator=gen)
    assert isinstance(dn, DNQueries)
    m, groups = 2, 4
    assert (dn.max_gt, dn.num_groups, dn.pad_size) == (m, groups, 2 * m * groups)
    assert dn.content.shape == (2, 16, 82) and dn.anchor_logit.shape == (2, 16, 4)
    assert dn.attn_mask.shape == (23, 23)

    for b, t in enumerate(targets):
        n = len(t["boxes"])
        params = torch.cat([t["poses"], t["betas"]], 1)
        gt_xyxy = box_cxcywh_to_xyxy(t["boxes"])
        half = t["boxes"][:, 2:].repeat(1, 2) / 2 * 0.4
        for g in range(groups):
            base = 2 * m * g
            for neg in (0, 1):
                slots = torch.arange(n) + base + neg * m
                d_box = (box_cxcywh_to_xyxy(dn.anchor_logit[b, slots].sigmoid()) - gt_xyxy).abs()
                d_par = (dn.content[b, slots] - params).abs()
                if neg == 0:   # positives come first in each group: |Δ| ≤ λ·w/2
                    assert (d_box <= half + 1e-5).all()
                    assert (d_par <= 0.2 + 1e-5).all()
                else:          # negatives: λ·w/2 ≤ |Δ| ≤ 2λ·w/2
                    assert (d_box >= half - 1e-5).all() and (d_box <= 2 * half + 1e-5).all()
                    assert (d_par >= 0.2 - 1e-5).all() and (d_par <= 0.4 + 1e-5).all()
            # image 1 has one GT: its second slot in each half-group is empty
            empty = [s for s in range(base, base + 2 * m) if (s - base) % m >= n]
            assert (dn.content[b, empty] == 0).all() and (dn.anchor_logit[b, empty] == 0).all()


def test_noise_is_random_and_reproducible():
    targets = make_targets()
    a = build_dn_queries(targets, identity_enc(), 7, generator=torch.Generator().manual_seed(5))
    b = build_dn_queries(targets, identity_enc(), 7, generator=torch.Generator().manual_seed(5))
    c = build_dn_queries(targets, identity_enc(), 7, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.content, b.content) and torch.equal(a.anchor_logit, b.anchor_logit)
    assert not torch.equal(a.content, c.content)


def test_positive_indices_and_none_without_gt():
    dn = DNQueries(torch.zeros(2, 12, 4), torch.zeros(2, 12, 4), torch.zeros(17, 17, dtype=torch.bool),
                   pad_size=12, num_groups=3, max_gt=2)
    (s0, g0), (s1, g1) = dn.positive_indices([2, 1])
    assert s0.tolist() == [0, 1, 4, 5, 8, 9] and g0.tolist() == [0, 1, 0, 1, 0, 1]
    assert s1.tolist() == [0, 4, 8] and g1.tolist() == [0, 0, 0]
    empty = [{"boxes": torch.zeros(0, 4), "poses": torch.zeros(0, 72), "betas": torch.zeros(0, 10)}]
    assert build_dn_queries(empty, identity_enc(), 7) is None


def test_missing_params_raise():
    with pytest.raises(ValueError):
        build_dn_queries([{"boxes": torch.rand(1, 4)}], identity_enc(), 7)


def test_content_goes_through_dn_enc_and_has_grad():
    enc = nn.Linear(82, 16)
    dn = build_dn_queries(make_targets(), enc, 7, dn_number=2)
    assert dn.content.shape == (2, 8, 16)
    dn.content.sum().backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0
