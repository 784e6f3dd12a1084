"""PyTorch backends: dynamic (the reference) and static (the fixed-budget graph that is exported)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from sathmr.backends.base import Backend
from sathmr.errors import SathmrError
from sathmr.model.sathmr import SATHMR
from sathmr.model.tokens import TokenBudget, default_budget
from sathmr.weights import load_network


def pick_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SathmrError("--device cuda requested but no CUDA device is available to PyTorch")
    return dev


class TorchBackend(Backend):
    def __init__(self, model: SATHMR, device: str = "cpu", budget: TokenBudget | None = None,
                 canvas_hw: tuple[int, int] | None = None, info: dict | None = None):
        self.device = pick_device(device)
        if budget is not None and model.tokens.budget != budget:
            model = copy.deepcopy(model)  # the budget is per backend; never change a model shared with others
            model.set_budget(budget)
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.name = "torch-static" if budget is not None else "torch"
        if budget is not None:
            self.canvas_hw = canvas_hw or (self.cfg.input_size, self.cfg.input_size)
        self.info = {"device": str(self.device), **(info or {})}

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | None = None, config: str | None = None,
                        smpl_dir: str | Path | None = None, device: str = "cpu", static: bool = False,
                        budget: TokenBudget | None = None, model: SATHMR | None = None,
                        info: dict | None = None) -> TorchBackend:
        """From a checkpoint (official or ours, or the default one), or from an in-memory ``model``."""
        if model is None:
            model, info = load_network(checkpoint, config, smpl_dir)
            if static:
                model.set_budget(budget or default_budget(model.cfg))  # nobody else holds it: no copy
        info = info or {"checkpoint": "in-memory"}
        if static and budget is None:
            budget = model.tokens.budget if model.tokens.budget.is_static else default_budget(model.cfg)
        return cls(model, device, budget if static else None, info=info)

    @torch.inference_mode()
    def run(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model.net_outputs(images.to(self.device), img_hw.to(self.device))
        return {k: v.cpu() for k, v in out.items()}
