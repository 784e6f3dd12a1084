"""Scale-adaptive token selection — the one place where the token set is decided.

The dynamic PyTorch model and the static export run this same module; the only difference is the
budget: ``None`` sizes every buffer to exactly what the batch needs (no padding for a single image),
fixed integers give the static shapes an exported graph needs. Everything here is tensor ops on a
padded batch — no per-token Python loops, no boolean indexing with data-dependent shapes.

Cells live on the batch's level-1 grid (Hc x Wc, raster order). The original processes cells in
z-order; order has no effect on results (attention is permutation-invariant and there is no relative
position bias, spec §1.5), only the 2x2 *grouping* does, and aligned 2x2 groups are explicit here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TokenBudget:
    """Slots per image. ``None`` = dynamic (exactly what the batch needs; never overflows).

    sat_cells: SAT (small-person) cells; each becomes 4 level-0 tokens.
    context:   level-1 plus level-2 tokens. n_keep + n_groups <= N1 always, so context = N1 (the
               number of level-1 cells of the canvas) can never overflow.
    """
    sat_cells: int | None = None
    context: int | None = None

    @property
    def is_static(self) -> bool:
        return self.sat_cells is not None and self.context is not None


@dataclass
class Selection:
    sat_idx: torch.Tensor      # (B, Ks) cell indices (raster on the Hc x Wc grid)
    sat_valid: torch.Tensor    # (B, Ks) bool
    ctx_idx: torch.Tensor      # (B, Kc) indices into [N1 cells ; N1/4 groups]
    ctx_valid: torch.Tensor    # (B, Kc) bool
    counts: torch.Tensor       # (B, 3) tokens used per level
    overflow: torch.Tensor     # (B, 2) SAT cells demoted to level 1, context tokens dropped


def group_any(mask: torch.Tensor) -> torch.Tensor:
    """(B, Hc, Wc) bool → (B, Hc/2, Wc/2): OR over each aligned 2x2 group."""
    B, Hc, Wc = mask.shape
    return mask.view(B, Hc // 2, 2, Wc // 2, 2).any(dim=4).any(dim=2)


def expand_groups(g: torch.Tensor) -> torch.Tensor:
    """(B, Hg, Wg) → (B, 2Hg, 2Wg), each group value copied to its 4 cells."""
    return g.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)


def topk_true(mask: torch.Tensor, priority: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of up to ``k`` True entries per row, highest ``priority`` first, and their validity.

    ``priority`` must lie in [0, 1); True entries rank above all False ones.
    """
    score = mask.float() * 2.0 + priority.clamp(0.0, 0.999)
    k = min(k, mask.shape[1])
    idx = score.topk(k, dim=1).indices
    return idx, torch.gather(mask, 1, idx)


class TokenSelector(nn.Module):
    """Thresholds the scale map into SAT / level-1 / level-2 tokens and compacts them into budgets.

    Rules [must match, spec §1.6]: valid = conf > conf_thresh; small = valid & scale < scale_thresh;
    a cell stays at level 1 iff its 2x2 group has any valid cell and it is not small; a group becomes one
    level-2 token iff none of its cells is valid; SAT cells are replaced by their four children.

    Overflow (static budgets only) [documented deviation, only when a budget is exceeded]:
    SAT cells beyond ``sat_cells`` are demoted to level 1, the ones with the largest predicted scale
    first (the biggest people lose the least from the lower resolution); context tokens beyond
    ``context`` are dropped, level-2 background first, then level-1 cells of lowest confidence.
    """

    def __init__(self, conf_thresh: float, scale_thresh: float, budget: TokenBudget | None = None):
        super().__init__()
        self.conf_thresh = conf_thresh
        self.scale_thresh = scale_thresh
        self.budget = budget or TokenBudget()

    def forward(self, scale_map: torch.Tensor, cell_mask: torch.Tensor) -> Selection:
        B, Hc, Wc, _ = scale_map.shape
        conf, scale = scale_map[..., 0].float(), scale_map[..., 1].float()  # threshold in fp32
        valid = (conf > self.conf_thresh) & cell_mask
        small = valid & (scale < self.scale_thresh)
        group_valid = group_any(valid)
        group_in = group_any(cell_mask)   # groups are wholly inside or outside (grids are even)
        keep = expand_groups(group_valid) & ~small
        to_l2 = group_in & ~group_valid

        small, keep, conf, scale = (t.flatten(1) for t in (small, keep, conf, scale))
        to_l2 = to_l2.flatten(1)

        k_sat = self.budget.sat_cells
        if k_sat is None:
            k_sat = int(small.sum(1).max()) if small.numel() else 0
        sat_idx, sat_valid = topk_true(small, 1.0 - scale, k_sat)
        chosen = torch.zeros_like(small).scatter(1, sat_idx, sat_valid)
        demoted = small & ~chosen
        keep = keep | demoted

        ctx_mask = torch.cat((keep, to_l2), dim=1)
        # level-1 above level-2 when dropping; within level 1, higher confidence first
        ctx_priority = torch.cat((0.5 + 0.49 * conf, torch.zeros_like(to_l2, dtype=conf.dtype)), dim=1)
        k_ctx = self.budget.context
        if k_ctx is None:
            k_ctx = int(ctx_mask.sum(1).max())
        ctx_idx, ctx_valid = topk_true(ctx_mask, ctx_priority, k_ctx)

        n1 = small.shape[1]
        is_l1 = ctx_valid & (ctx_idx < n1)
        counts = torch.stack((4 * sat_valid.sum(1), is_l1.sum(1), (ctx_valid & ~is_l1).sum(1)), dim=1)
        overflow = torch.stack((demoted.sum(1), ctx_mask.sum(1) - ctx_valid.sum(1)), dim=1)
        return Selection(sat_idx, sat_valid, ctx_idx, ctx_valid, counts, overflow)
