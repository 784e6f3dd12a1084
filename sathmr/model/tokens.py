"""Scale-adaptive token selection — the one place where the token set is decided.

The dynamic PyTorch model, the two-stage export (which runs this module between its two graphs) and the
fixed-budget single graph all call this same module; the only difference is the budget: ``None`` sizes
every buffer to exactly what the batch needs (no padding for a single image), fixed integers give the
static shapes a single exported graph needs. Everything here is tensor ops on a padded batch — no
per-token Python loops, no boolean indexing with data-dependent shapes.

Cells live on the batch's level-1 grid (Hc x Wc, raster order). The original processes cells in
z-order; order has no effect on results (attention is permutation-invariant and there is no relative
position bias, spec §1.5), only the 2x2 *grouping* does, and aligned 2x2 groups are explicit here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sathmr.model.config import ModelConfig
from sathmr.model.geometry import grid_divmod


@dataclass(frozen=True)
class TokenBudget:
    """Slots per image. ``None`` = dynamic (exactly what the batch needs; never overflows).

    sat_cells: SAT (small-person) cells; each becomes 4 level-0 tokens.
    context:   level-1 plus level-2 tokens. n_keep + n_groups <= N1 always, so context = N1 (the
               number of level-1 cells of the canvas) can never overflow.
    min_slots: the smallest number of slots of each kind (dynamic budgets only). The exported stage-2
               graph takes 1: a zero-length token axis is a corner no runtime handles well, and a masked
               slot changes nothing (it is never a key and its own output is dropped).
    """
    sat_cells: int | None = None
    context: int | None = None
    min_slots: int = 0

    @property
    def is_static(self) -> bool:
        """True when both budgets are fixed: the static export's fixed-shape graph, which may demote cells."""
        return self.sat_cells is not None and self.context is not None


@dataclass
class Selection:
    """The token set of a batch; shapes are (B, K) with K = the budget (or what the batch needs)."""
    sat_idx: torch.Tensor      # (B, Ks) cell indices (raster on the Hc x Wc grid)
    sat_valid: torch.Tensor    # (B, Ks) bool
    ctx_idx: torch.Tensor      # (B, Kc) indices into [N1 cells ; N1/4 groups]
    ctx_valid: torch.Tensor    # (B, Kc) bool
    counts: torch.Tensor | None = None      # (B, 3) tokens used per level
    overflow: torch.Tensor | None = None    # (B, 2) SAT cells demoted to level 1, context tokens dropped


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


def cell_mask(img_hw: torch.Tensor, hc: int, wc: int, pad_multiple: int) -> torch.Tensor:
    """(B, Hc, Wc) bool: level-1 cell inside the image's own ``pad_multiple``-padded extent.

    Cells beyond it (a larger image of the batch, or a fixed canvas) are padding, not background.
    """
    rows = (img_hw[:, 0] + pad_multiple - 1) // pad_multiple * 2
    cols = (img_hw[:, 1] + pad_multiple - 1) // pad_multiple * 2
    ys = torch.arange(hc, device=img_hw.device)
    xs = torch.arange(wc, device=img_hw.device)
    return (ys[None, :, None] < rows[:, None, None]) & (xs[None, None, :] < cols[:, None, None])


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
        """Pick the tokens of a batch from its scale map; thresholds always compare in float32.

        ``cell_mask`` marks the level-1 cells inside each image (padding is never selected). The same call
        runs inside the dynamic model and on the host between the two exported graphs, which is what makes
        the exports exact: identical scale maps give identical selections.
        """
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
            k_sat = max(int(small.sum(1).max()) if small.numel() else 0, self.budget.min_slots)
        sat_idx, sat_valid = topk_true(small, 1.0 - scale, k_sat)
        chosen = torch.zeros_like(small).scatter(1, sat_idx, sat_valid)
        demoted = small & ~chosen
        keep = keep | demoted

        ctx_mask = torch.cat((keep, to_l2), dim=1)
        # level-1 above level-2 when dropping; within level 1, higher confidence first
        ctx_priority = torch.cat((0.5 + 0.49 * conf, torch.zeros_like(to_l2, dtype=conf.dtype)), dim=1)
        k_ctx = self.budget.context
        if k_ctx is None:
            k_ctx = max(int(ctx_mask.sum(1).max()), self.budget.min_slots)
        ctx_idx, ctx_valid = topk_true(ctx_mask, ctx_priority, k_ctx)

        n1 = small.shape[1]
        is_l1 = ctx_valid & (ctx_idx < n1)
        counts = torch.stack((4 * sat_valid.sum(1), is_l1.sum(1), (ctx_valid & ~is_l1).sum(1)), dim=1)
        overflow = torch.stack((demoted.sum(1), ctx_mask.sum(1) - ctx_valid.sum(1)), dim=1)
        return Selection(sat_idx, sat_valid, ctx_idx, ctx_valid, counts, overflow)


@dataclass
class TokenLayout:
    """Where each memory token sits: what the decoder's positional code and the overlays need."""
    y: torch.Tensor            # (B, L) row on its level's grid
    x: torch.Tensor            # (B, L) column
    lvl: torch.Tensor          # (B, L) level 0/1/2; L = 4 Ks + Kc, level-0 tokens first
    valid: torch.Tensor        # (B, L) bool


# the four level-0 children of a cell, in the order TL, TR, BL, BR [must match §1.6]
CHILD_DY = (0, 0, 1, 1)
CHILD_DX = (0, 1, 0, 1)


def token_layout(sel: Selection, hc: int, wc: int) -> TokenLayout:
    """Grid coordinates, levels and validity of the memory tokens [level 0 ; level 1 and 2]."""
    dev = sel.sat_idx.device
    y1, x1 = grid_divmod(sel.sat_idx, wc)
    y0 = (2 * y1[..., None] + torch.tensor(CHILD_DY, device=dev)).flatten(1)
    x0 = (2 * x1[..., None] + torch.tensor(CHILD_DX, device=dev)).flatten(1)
    valid0 = sel.sat_valid.repeat_interleave(4, dim=1)
    n1 = hc * wc
    is_l1 = sel.ctx_idx < n1
    g = (sel.ctx_idx - n1).clamp(min=0)
    (y_1, x_1), (y_2, x_2) = grid_divmod(sel.ctx_idx, wc), grid_divmod(g, wc // 2)
    cy = torch.where(is_l1, y_1, y_2)
    cx = torch.where(is_l1, x_1, x_2)
    return TokenLayout(
        y=torch.cat((y0, cy), 1), x=torch.cat((x0, cx), 1),
        lvl=torch.cat((torch.zeros_like(y0), torch.where(is_l1, 1, 2)), 1),
        valid=torch.cat((valid0, sel.ctx_valid), 1))


def token_outputs(sel: Selection, layout: TokenLayout) -> dict[str, torch.Tensor]:
    """The token bookkeeping every backend returns (``tok_*`` of NET_OUTPUTS)."""
    return {
        "tok_yx": torch.stack((layout.y, layout.x), -1),
        "tok_lvl": torch.where(layout.valid, layout.lvl, -1),
        "tok_counts": sel.counts,
        "tok_overflow": sel.overflow,
    }


# ------------------------------------------------------------------------------------------------
# Fixed budgets of the single static graph (``sathmr export --static-budget``).
#
# A static graph pays for its budget on every image, used or not: stage B runs 1 + 4·Ks tokens through
# 3 blocks and stage C 1 + 4·Ks + Kc tokens through 9 blocks (spec §10.2 Option A, §10.3 condition 1).
# Context Kc = N1 (all level-1 cells of the canvas) can never overflow: every in-image cell yields at
# most one level-1 or level-2 token. SAT Ks = 3/8 · N1 (792 cells → 3168 level-0 tokens at 1288²):
# only people whose box diagonal is under 644 px make SAT cells, about d²/4000 cells each (~100 just
# under the limit, ~40 at 400 px); the basketball test photo needs ~450-550, so N1/4 = 528 is too small
# and 792 leaves ~50 % margin. Beyond it (dense crowds) the graph demotes the SAT cells of the largest
# people to level 1 and flags ``tok_overflow``. The default two-stage export has no budget at all.
SAT_FRACTION = 0.375
BUDGET_ROUND = 8      # budgets are multiples of 8 (friendlier GEMM shapes)


def canvas_cells(cfg: ModelConfig, canvas_hw: tuple[int, int] | None = None) -> int:
    """N1: the number of level-1 cells of the canvas (default: the full square canvas)."""
    h, w = canvas_hw or (cfg.input_size, cfg.input_size)
    return (h // cfg.cell_size) * (w // cfg.cell_size)


def default_budget(cfg: ModelConfig, canvas_hw: tuple[int, int] | None = None) -> TokenBudget:
    """The ``--static-budget`` export's default: 3/8 of the canvas cells as SAT slots, every cell as context.

    SAT slots are rounded down to a multiple of ``BUDGET_ROUND``; context = N1 can never overflow, so
    only crowded images beyond the SAT fraction are demoted (and flagged).
    """
    n1 = canvas_cells(cfg, canvas_hw)
    sat = max(BUDGET_ROUND, int(n1 * SAT_FRACTION) // BUDGET_ROUND * BUDGET_ROUND)
    return TokenBudget(sat_cells=min(sat, n1), context=n1)


def stage_lengths(budget: TokenBudget) -> dict[str, int]:
    """Sequence lengths (with CLS) a static graph runs per stage; for reports and the README."""
    return {"stage_b": 1 + 4 * budget.sat_cells, "stage_c": 1 + 4 * budget.sat_cells + budget.context}
