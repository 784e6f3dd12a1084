"""Default token budgets of the static graph.

context = N1 (all level-1 cells of the canvas) can never overflow, because every in-image cell
yields at most one level-1 or level-2 token (n_keep + n_groups <= N1). Only the SAT budget can
overflow; its default is chosen in ``sathmr.export`` documentation (README, "Export").
"""

from __future__ import annotations

from sathmr.config import ModelConfig
from sathmr.model.tokens import TokenBudget

# Fraction of the canvas's level-1 cells that may be SAT (small-person) cells, default.
SAT_FRACTION = 0.125


def default_budget(cfg: ModelConfig, canvas_hw: tuple[int, int] | None = None) -> TokenBudget:
    h, w = canvas_hw or (cfg.input_size, cfg.input_size)
    n1 = (h // cfg.cell_size) * (w // cfg.cell_size)
    return TokenBudget(sat_cells=max(4, int(round(n1 * SAT_FRACTION / 4)) * 4), context=n1)
