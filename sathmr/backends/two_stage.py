"""The host side of a two-stage export: the token selection between the two graphs.

Both exported engines (ONNX Runtime, TensorRT) run ``scale_map`` → select → ``tokens`` through this one
class, with the *same* ``TokenSelector`` module the PyTorch model calls, sized exactly to what the batch
needs (one slot at least: a zero-length token axis is a corner no runtime handles well, and a masked
slot changes nothing). The engines differ only in how they run each graph and where the stage-A
tensors live in between (host arrays, or device buffers that never leave the GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sathmr.backends.meta import QUERY_OUTPUTS
from sathmr.model.config import ModelConfig
from sathmr.model.tokens import Selection, TokenBudget, TokenSelector, cell_mask, token_layout, token_outputs

#: selection tensors fed to the tokens graph, by input name
SELECTION_INPUTS = ("sat_idx", "sat_valid", "ctx_idx", "ctx_valid")


class TwoStage:
    """``run(images, img_hw)`` = stage 1 → token selection → stage 2, returning ``NET_OUTPUTS``.

    ``scale_map_stage(images, img_hw)`` returns the scale map as a CPU tensor and an opaque handle on
    the stage-A tensors (t1, cls); ``tokens_stage(images, handle, selection)`` returns the query outputs
    by name. What the handle is — numpy arrays, ORT values on the GPU, TensorRT buffers — is the engine's.
    """

    def __init__(self, cfg: ModelConfig, scale_map_stage: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]],
                 tokens_stage: Callable[[torch.Tensor, Any, Selection], dict[str, torch.Tensor]]):
        self.cfg = cfg
        self.selector = TokenSelector(cfg.conf_thresh, cfg.scale_thresh, TokenBudget(min_slots=1))
        self.scale_map_stage, self.tokens_stage = scale_map_stage, tokens_stage

    def select(self, scale_map: torch.Tensor, img_hw: torch.Tensor) -> Selection:
        B, hc, wc, _ = scale_map.shape
        return self.selector(scale_map, cell_mask(img_hw.to(scale_map.device), hc, wc, self.cfg.pad_multiple))

    def run(self, images: torch.Tensor, img_hw: torch.Tensor,
            scale_map_override: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``scale_map_override`` selects the tokens from a given (B,Hc,Wc,2) map, as the model's own
        argument of that name does (forced layouts in tests and benchmarks)."""
        scale_map, stage_a = self.scale_map_stage(images, img_hw)
        sel = self.select(scale_map if scale_map_override is None else scale_map_override, img_hw)
        out = self.tokens_stage(images, stage_a, sel)
        hc, wc = scale_map.shape[1:3]
        return {**{k: out[k] for k in QUERY_OUTPUTS}, "scale_map": scale_map,
                **token_outputs(sel, token_layout(sel, hc, wc))}


def selection_feeds(sel: Selection) -> dict[str, torch.Tensor]:
    """The selection as the tokens graph's inputs (int64 indices, bool validity)."""
    return dict(zip(SELECTION_INPUTS, (sel.sat_idx, sel.sat_valid, sel.ctx_idx, sel.ctx_valid)))
