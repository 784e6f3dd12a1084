"""Contrastive denoising (DN) queries adapted to SMPL parameters (spec §5.6, DINO-style).

Each group holds ``max_gt`` positive slots (lightly noised copies of every GT) followed by ``max_gt``
negative slots (more strongly noised copies, trained only as "no person"). The groups are prepended to the
50 matching queries; an attention mask keeps the matching queries from seeing the noised GT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sathmr.model.geometry import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid


@dataclass
class DNQueries:
    """Denoising queries for one training forward.

    content:      (B, P, C) query content, ``dn_enc`` of the noised [pose ; betas]; empty slots are 0.
    anchor_logit: (B, P, 4) un-sigmoided cxcywh anchors; empty slots are 0 (= box (0.5, 0.5, 0.5, 0.5)).
    attn_mask:    (P+Q, P+Q) bool decoder self-attention mask where **True = BLOCKED** (official
                  convention). PyTorch SDPA's boolean ``attn_mask`` uses True = *allowed*: pass
                  ``~attn_mask`` there, or turn True into a -inf additive bias.
    pad_size:     P = 2 · max_gt · num_groups DN slots, prepended before the Q matching queries.
    num_groups:   G, the number of DN groups.
    max_gt:       m, the largest GT count of any image in the batch.
    """

    content: Tensor
    anchor_logit: Tensor
    attn_mask: Tensor
    pad_size: int
    num_groups: int
    max_gt: int

    @property
    def group_size(self) -> int:
        return 2 * self.max_gt

    def positive_indices(self, num_gts: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
        """Per image, (DN slot indices, GT indices) of the positive slots: each positive slot is matched
        to the GT it was copied from. Negatives are never regressed, so they are not listed."""
        out = []
        for n in num_gts:
            gt = torch.arange(n, dtype=torch.int64).repeat(self.num_groups)
            starts = torch.arange(self.num_groups, dtype=torch.int64).repeat_interleave(n) * self.group_size
            out.append((starts + gt, gt))
        return out


def resolve_num_groups(dn_number: int, max_gt: int) -> int:
    """Group count rule of the official code: values ≥ 100 mean a total slot budget, < 1 means 1."""
    if dn_number >= 100:
        return max(dn_number // (2 * max_gt), 1)
    return max(dn_number, 1)


def dn_attention_mask(pad_size: int, num_queries: int, group_size: int, device: torch.device | None = None) -> Tensor:
    """(P+Q, P+Q) bool mask, True = blocked: matching queries cannot see DN slots, DN groups cannot see
    each other, DN slots can see the matching queries, and positives/negatives of one group see each other."""
    size = pad_size + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[pad_size:, :pad_size] = True
    for start in range(0, pad_size, group_size):
        end = start + group_size
        mask[start:end, :start] = True
        mask[start:end, end:pad_size] = True
    return mask


def _signed_noise(shape: tuple[int, ...], negative: Tensor, generator: torch.Generator | None,
                  device: torch.device) -> Tensor:
    """±u per element with u ~ U(0,1) for positive rows and U(1,2) for negative rows (``negative`` is a
    bool per row)."""
    u = torch.rand(shape, generator=generator, device=device) + negative.view(-1, *([1] * (len(shape) - 1)))
    sign = torch.randint(0, 2, shape, generator=generator, device=device) * 2.0 - 1.0
    return u * sign


def build_dn_queries(targets: Sequence[Mapping[str, Tensor]], dn_enc: nn.Module, num_queries: int,
                     dn_number: int = 10, box_noise_scale: float = 0.4, tgt_noise_scale: float = 0.2,
                     generator: torch.Generator | None = None) -> DNQueries | None:
    """Noised GT queries for the batch, or None when no image has a GT person.

    ``targets`` need ``boxes`` (n,4) cxcywh/S, ``poses`` (n,72) axis-angle and ``betas`` (n,10); 2D-only
    datasets still carry their pseudo-GT parameters here. ``generator`` must live on the targets' device.
    """
    num_gts = [int(t["boxes"].shape[0]) for t in targets]
    max_gt = max(num_gts, default=0)
    if max_gt == 0:
        return None
    groups = resolve_num_groups(dn_number, max_gt)
    group_size = 2 * max_gt
    pad = group_size * groups
    ref = next(dn_enc.parameters(), None)
    device = targets[0]["boxes"].device

    # One row per (image, group, pos/neg, person): build all noised copies at once.
    boxes, params, batch_idx, slots, negative = [], [], [], [], []
    for b, (t, n) in enumerate(zip(targets, num_gts)):
        if n == 0:
            continue
        for key in ("poses", "betas"):
            if key not in t:
                raise ValueError(f"DN queries need target '{key}' (pseudo-GT is fine) for every image with people")
        p = torch.cat([t["poses"].reshape(n, -1), t["betas"].reshape(n, -1)], dim=1).float()
        for g in range(groups):
            for neg in (0, 1):
                boxes.append(t["boxes"].float())
                params.append(p)
                batch_idx.append(torch.full((n,), b, dtype=torch.int64))
                slots.append(g * group_size + neg * max_gt + torch.arange(n))
                negative.append(torch.full((n,), float(neg)))
    boxes_t = torch.cat(boxes).to(device)
    params_t = torch.cat(params).to(device)
    neg_t = torch.cat(negative).to(device)
    b_idx = torch.cat(batch_idx).to(device)
    s_idx = torch.cat(slots).to(device)

    xyxy = box_cxcywh_to_xyxy(boxes_t)
    half_wh = boxes_t[:, 2:].repeat(1, 2) / 2
    xyxy = (xyxy + _signed_noise(tuple(xyxy.shape), neg_t, generator, device) * half_wh * box_noise_scale).clamp(0, 1)
    anchors = inverse_sigmoid(box_xyxy_to_cxcywh(xyxy))
    noised = params_t + _signed_noise(tuple(params_t.shape), neg_t, generator, device) * tgt_noise_scale
    if ref is not None:
        noised = noised.to(device=ref.device, dtype=ref.dtype)
    content_rows = dn_enc(noised).to(device)

    batch = len(targets)
    content = content_rows.new_zeros(batch, pad, content_rows.shape[-1])
    anchor_logit = anchors.new_zeros(batch, pad, 4)
    content[b_idx, s_idx] = content_rows
    anchor_logit[b_idx, s_idx] = anchors
    return DNQueries(content=content, anchor_logit=anchor_logit,
                     attn_mask=dn_attention_mask(pad, num_queries, group_size, device),
                     pad_size=pad, num_groups=groups, max_gt=max_gt)
