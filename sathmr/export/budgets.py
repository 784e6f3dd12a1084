"""Default token budgets of the static graph, and why they are what they are.

A static graph pays for its budget on every image, used or not: stage B runs ``1 + 4·Ks`` tokens
through 3 blocks and stage C runs ``1 + 4·Ks + Kc`` tokens through 9 blocks. The budgets trade that
fixed cost against the risk of overflow (spec §10.2 Option A, §10.3 condition 1).

**Context budget Kc = N1** (all level-1 cells of the canvas, 2116 at 1288²). Every in-image cell
yields at most one level-1 or level-2 token (a kept cell is one token, a background group of four
cells is one token, a SAT cell is none), so ``n_keep + n_groups <= N1``: the context can never
overflow. A smaller Kc would save little (a typical image has hundreds of level-1/2 tokens, not
tens) and would make the graph wrong on busy images; N1 is also below TensorRT's TopK limit (3840).

**SAT budget Ks = 3/8 · N1** (792 cells → 3168 level-0 tokens at 1288²; stage C length
4·792 + 2116 + 1 = 5285, 62 % of the 8465 tokens the non-SAT model runs through all 12 blocks).
Only people whose box diagonal d is below 644 px (0.5 of the 1288 canvas) produce SAT cells, and only
the 28-px cells their silhouette covers (conf > 0.3). A standing person's box is about
0.93·d × 0.37·d and the silhouette fills about half of it (0.17·d² px²); with partly covered border
cells that is roughly ``d² / 4000`` cells: ~100 cells just under the 644-px limit, ~55 at d = 470,
~10 at d = 200 and 2-4 at d ≤ 100. The real test images (``/work/shared/data/images``, measured by
eye on the 1288 canvas): six people on a lawn at d ≈ 400 px (~40 cells each, ~250 in all) and ten
basketball players at d ≈ 450-500 px, partly occluding each other, plus a few tiny figures on the
beach (~450-550 in all) — the second image alone rules out N1/4 = 528. 792 covers it with ~50 %
margin, or ~8 people each just under the SAT limit, ~20 at d = 400, ~80 at d = 200: small people
covering 37 % of the canvas, i.e. 2/3 of a 16:9 landscape image. Beyond that (dense crowds) the
graph still runs, flags ``tok_overflow`` and demotes the SAT cells of the largest people to level 1
(``TokenSelector``), which costs those people resolution, not presence. Raise ``--budget-sat`` for
crowd footage (N1 = 2116 can never overflow); ``sathmr infer`` reports the overflow per image in its
JSON (``tokens.sat_overflow``), so the need is visible. These counts are geometric estimates: with
official weights, check them against the ``tokens.level0`` / 4 that ``sathmr infer`` reports.

Budgets are rounded to multiples of 8 (friendlier shapes for GEMM kernels).
"""

from __future__ import annotations

from sathmr.config import ModelConfig
from sathmr.model.tokens import TokenBudget

#: Fraction of the canvas's level-1 cells that may be SAT (small-person) cells, default.
SAT_FRACTION = 0.375
ROUND = 8


def canvas_cells(cfg: ModelConfig, canvas_hw: tuple[int, int] | None = None) -> int:
    """N1: the number of level-1 cells of the canvas (default: the full square canvas)."""
    h, w = canvas_hw or (cfg.input_size, cfg.input_size)
    return (h // cfg.cell_size) * (w // cfg.cell_size)


def default_budget(cfg: ModelConfig, canvas_hw: tuple[int, int] | None = None) -> TokenBudget:
    n1 = canvas_cells(cfg, canvas_hw)
    sat = max(ROUND, int(n1 * SAT_FRACTION) // ROUND * ROUND)
    return TokenBudget(sat_cells=min(sat, n1), context=n1)


def stage_lengths(budget: TokenBudget) -> dict[str, int]:
    """Sequence lengths (with CLS) the static graph runs per stage; for reports and the README."""
    return {"stage_b": 1 + 4 * budget.sat_cells, "stage_c": 1 + 4 * budget.sat_cells + budget.context}
