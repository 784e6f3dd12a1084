"""Hungarian matcher: hand-computed cost terms and the obvious assignment."""

import math

import pytest
import torch

from sathmr.train.matcher import HungarianMatcher, box_cxcywh_to_xyxy, generalized_box_iou

S = 1288


def person(seed: int, n_joints: int = 45) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"box": torch.rand(4, generator=g) * 0.3 + 0.2, "j2ds": torch.rand(n_joints, 2, generator=g) * S}


def test_cost_terms_by_hand():
    gt_box = torch.tensor([[0.6, 0.5, 0.2, 0.4]])
    pred_box = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    gt_j = torch.rand(1, 45, 2) * S
    pred_j = gt_j.clone()
    pred_j[:, :22, 0] += S * 0.01          # 0.01 on every x of the first 22 joints, 0 on y
    pred_j[:, 22:] += 1000.0               # joints beyond 22 must not enter the cost
    target = {"boxes": gt_box, "j2ds": gt_j, "j2ds_mask": torch.ones(1, 45, 2, dtype=torch.bool)}
    m = HungarianMatcher(canvas=S)
    terms = m.cost_terms(torch.tensor([[0.5]]), pred_box, pred_j, target)

    conf = 0.25 * 0.25 * -math.log(0.5 + 1e-8)
    assert terms["conf"].item() == pytest.approx(conf, rel=1e-6)
    assert terms["kpt"].item() == pytest.approx(0.005, rel=1e-4)      # 22·0.01 / 44 coordinates
    assert terms["bbox"].item() == pytest.approx(0.1, rel=1e-5)
    # xyxy (0.4,0.3,0.6,0.7) vs (0.5,0.3,0.7,0.7): inter 0.04, union 0.12, hull 0.12 -> GIoU 1/3
    assert terms["giou"].item() == pytest.approx(-1 / 3, rel=1e-4)
    total = m.cost_matrix(torch.tensor([[0.5]]), pred_box, pred_j, target).item()
    assert total == pytest.approx(conf + 20 * 0.005 + 0.1 - 1 / 3, rel=1e-4)

    # Only x coordinates visible: the mean is over the 22 visible coordinates.
    mask = torch.zeros(1, 45, 2, dtype=torch.bool)
    mask[..., 0] = True
    terms = m.cost_terms(torch.tensor([0.5]), pred_box, pred_j, {**target, "j2ds_mask": mask})
    assert terms["kpt"].item() == pytest.approx(0.01, rel=1e-4)


def test_conf_cost_is_positive_focal_term_only():
    m = HungarianMatcher(canvas=S)
    p = torch.tensor([0.0, 0.9, 1.0])
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]]), "j2ds": torch.zeros(1, 45, 2)}
    terms = m.cost_terms(p, torch.full((3, 4), 0.5), torch.zeros(3, 45, 2), target)
    expected = [0.25 * -math.log(1e-8), 0.25 * 0.01 * -math.log(0.9 + 1e-8), 0.0]
    assert terms["conf"][:, 0].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_picks_obvious_assignment():
    people = [person(1), person(2)]
    target = {"boxes": torch.stack([p["box"] for p in people]), "j2ds": torch.stack([p["j2ds"] for p in people])}
    # Query 3 copies GT 0, query 1 copies GT 1, queries 0 and 2 are junk.
    boxes = torch.tensor([[0.9, 0.9, 0.05, 0.05], [0, 0, 0, 0], [0.1, 0.9, 0.05, 0.05], [0, 0, 0, 0]])
    boxes[3], boxes[1] = people[0]["box"], people[1]["box"]
    j2ds = torch.rand(4, 45, 2) * S
    j2ds[3], j2ds[1] = people[0]["j2ds"], people[1]["j2ds"]
    confs = torch.tensor([0.2, 0.9, 0.3, 0.8])[:, None]
    layer = {"pred_boxes": boxes[None], "pred_j2ds": j2ds[None], "pred_confs": confs[None]}
    (src, tgt), = HungarianMatcher(canvas=S)(layer, [target])
    assert src.tolist() == [1, 3] and tgt.tolist() == [1, 0]


def test_empty_target_and_invisible_gt():
    m = HungarianMatcher(canvas=S)
    layer = {"pred_boxes": torch.rand(1, 3, 4), "pred_j2ds": torch.rand(1, 3, 45, 2), "pred_confs": torch.rand(1, 3, 1)}
    empty = {"boxes": torch.zeros(0, 4), "j2ds": torch.zeros(0, 45, 2)}
    (src, tgt), = m(layer, [empty])
    assert src.numel() == 0 and tgt.numel() == 0
    bad = {"boxes": torch.rand(1, 4), "j2ds": torch.rand(1, 45, 2), "j2ds_mask": torch.zeros(1, 45, 2, dtype=torch.bool)}
    with pytest.raises(ValueError):
        m(layer, [bad])


def test_giou_matches_hand_values_and_eps():
    a = box_cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.2]]))
    b = box_cxcywh_to_xyxy(torch.tensor([[0.8, 0.5, 0.2, 0.2]]))
    # disjoint: IoU 0, hull 0.5x0.2 = 0.1, union 0.08 -> GIoU = -(0.02/0.1) = -0.2
    assert generalized_box_iou(a, b).item() == pytest.approx(-0.2, rel=1e-4)
    point = torch.tensor([[0.3, 0.3, 0.3, 0.3]])
    assert torch.isfinite(generalized_box_iou(point, point)).all()
