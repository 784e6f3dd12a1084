"""Hungarian matching of decoder queries to ground-truth people (spec §5.4) and the box helpers it shares
with the losses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from sathmr.model.geometry import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh  # noqa: F401 (re-exported)

GIOU_EPS = 1e-6
CONF_COST_EPS = 1e-8
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
MATCH_JOINTS = 22      # the keypoint cost uses the body joints only (no hands, no face/feet extras)


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of xyxy boxes with broadcasting over leading dims (pass ``a[:, None], b[None]`` for a
    pairwise matrix). Both denominators carry +1e-6, as the official code does, so degenerate boxes
    give finite values instead of NaN."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    iou = inter / (union + GIOU_EPS)
    lt_c = torch.minimum(a[..., :2], b[..., :2])
    rb_c = torch.maximum(a[..., 2:], b[..., 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    area_c = wh_c[..., 0] * wh_c[..., 1]
    return iou - (area_c - union) / (area_c + GIOU_EPS)


class HungarianMatcher:
    """Per-image optimal assignment with cost 1·C_conf + 20·C_kpt + 1·C_L1 + 1·C_giou.

    ``canvas`` is the canvas side S (cfg.input_size) that normalises the 2D keypoint error. Each decoder
    layer is matched on its own; the caller decides which layer dict to pass.
    """

    def __init__(self, canvas: int = 1288, cost_conf: float = 1.0, cost_kpt: float = 20.0,
                 cost_bbox: float = 1.0, cost_giou: float = 1.0, num_kpts: int = MATCH_JOINTS) -> None:
        self.canvas = float(canvas)
        self.weights = {"conf": cost_conf, "kpt": cost_kpt, "bbox": cost_bbox, "giou": cost_giou}
        self.num_kpts = num_kpts

    @torch.no_grad()
    def cost_terms(self, confs: Tensor, boxes: Tensor, j2ds: Tensor, target: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Unweighted (Q, n) cost matrices of one image. ``confs`` (Q,) or (Q,1) probabilities, ``boxes``
        (Q,4) cxcywh/S, ``j2ds`` (Q,J,2) canvas pixels."""
        p = confs.reshape(-1).float()
        pred_boxes = boxes.float()
        tgt_boxes = target["boxes"].float().to(p.device)
        k = self.num_kpts
        pred_kp = j2ds[:, :k].float() / self.canvas
        tgt_kp = target["j2ds"][:, :k].float().to(p.device) / self.canvas
        mask = target.get("j2ds_mask")
        mask = torch.ones_like(tgt_kp) if mask is None else mask[:, :k].to(device=p.device, dtype=torch.float32)
        n_vis = mask.flatten(1).sum(-1)
        if bool((n_vis < 1).any()):
            raise ValueError("every ground-truth person needs at least one visible keypoint coordinate")

        conf = FOCAL_ALPHA * (1 - p) ** FOCAL_GAMMA * -torch.log(p + CONF_COST_EPS)
        n = tgt_boxes.shape[0]
        diff = (pred_kp[:, None] - tgt_kp[None]).abs() * mask[None]          # (Q, n, k, 2)
        kpt = diff.flatten(2).sum(-1) / n_vis[None]
        return {
            "conf": conf[:, None].expand(-1, n),
            "kpt": kpt,
            "bbox": torch.cdist(pred_boxes, tgt_boxes, p=1),
            "giou": -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes)[:, None],
                                         box_cxcywh_to_xyxy(tgt_boxes)[None]),
        }

    @torch.no_grad()
    def cost_matrix(self, confs: Tensor, boxes: Tensor, j2ds: Tensor, target: Mapping[str, Tensor]) -> Tensor:
        terms = self.cost_terms(confs, boxes, j2ds, target)
        return sum(self.weights[k] * v for k, v in terms.items())

    @torch.no_grad()
    def __call__(self, layer: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Return, per image, (query indices, GT indices) as int64 CPU tensors sorted by query index."""
        out: list[tuple[Tensor, Tensor]] = []
        for b, target in enumerate(targets):
            if target["boxes"].shape[0] == 0:
                empty = torch.empty(0, dtype=torch.int64)
                out.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(layer["pred_confs"][b], layer["pred_boxes"][b], layer["pred_j2ds"][b], target)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out
