"""PyTorch backends: dynamic (the reference) and static (the exact graph that is exported)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from sathmr.backends.base import Backend
from sathmr.model.sathmr import SATHMR
from sathmr.model.tokens import TokenBudget


def pick_device(device: str) -> torch.device:
    from sathmr.errors import SathmrError

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
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.name = "torch-static" if budget is not None else "torch"
        if budget is not None:
            model.set_budget(budget)
            self.canvas_hw = canvas_hw or (self.cfg.input_size, self.cfg.input_size)
        self.info = {"device": str(self.device), **(info or {})}

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | None = None, config: str | None = None,
                        smpl_dir: str | Path | None = None, device: str = "cpu", static: bool = False,
                        budget: TokenBudget | None = None, model: SATHMR | None = None, **_) -> "TorchBackend":
        from sathmr.export.budgets import default_budget

        fresh = model is None
        if fresh:
            from sathmr.api import load_network
            model, info = load_network(checkpoint, config, smpl_dir)
        else:
            info = {"checkpoint": "in-memory"}
        if static and budget is None:
            budget = default_budget(model.cfg)
        if static and fresh:
            model.set_budget(budget)  # nobody else holds this model: fix its budget in place, no copy
        return cls(model, device, budget if static else None, info=info)

    @torch.inference_mode()
    def run(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model.net_outputs(images.to(self.device), img_hw.to(self.device))
        return {k: v.cpu() for k, v in out.items()}
