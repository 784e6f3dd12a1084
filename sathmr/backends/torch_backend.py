"""PyTorch backends: dynamic (the reference) and static (the fixed-budget graph that is exported), at
fp32 (the reference) or a reduced precision after the token selection (``sathmr.precision``), optionally
through ``torch.compile``."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from sathmr.backends.base import Backend
from sathmr.errors import SathmrError
from sathmr.model.sathmr import SATHMR
from sathmr.model.tokens import TokenBudget, default_budget
from sathmr.precision import plan_precision
from sathmr.weights import load_network


def pick_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SathmrError("--device cuda requested but no CUDA device is available to PyTorch")
    return dev


class TorchBackend(Backend):
    """``precision``: see :mod:`sathmr.precision` (``allow_emulated`` runs bf16 on hardware that only
    emulates it, for accuracy checks). ``compile``: run the network through ``torch.compile`` (dynamic
    shapes, since every image has its own token counts); the first calls compile (``compile_seconds``)."""

    def __init__(self, model: SATHMR, device: str = "cpu", budget: TokenBudget | None = None,
                 canvas_hw: tuple[int, int] | None = None, info: dict | None = None, precision: str | None = None,
                 compile: bool = False, allow_emulated: bool = False):
        self.device = pick_device(device)
        self.precision = plan_precision(precision or "fp32", self.device, allow_emulated)
        if budget is not None and model.tokens.budget != budget:
            model = copy.deepcopy(model)  # the budget is per backend; never change a model shared with others
            model.set_budget(budget)
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.name = "torch-static" if budget is not None else "torch"
        if budget is not None:
            self.canvas_hw = canvas_hw or (self.cfg.input_size, self.cfg.input_size)
        self.compiled = compile
        self.compile_seconds: float | None = None     # the first call's time when compiled (compilation included)
        self._net = torch.compile(self.model.net_outputs, dynamic=True) if compile else self.model.net_outputs
        self.info = {"device": str(self.device), **(info or {}), "precision": self.precision.label, "compile": compile}
        if "note" in self.info:
            self.info["note"] = self.info["note"].rstrip(".") + f"; {self.precision.describe()}" + ("; torch.compile" if compile else "")

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | None = None, config: str | None = None,
                        smpl_dir: str | Path | None = None, device: str = "cpu", static: bool = False,
                        budget: TokenBudget | None = None, model: SATHMR | None = None,
                        info: dict | None = None, **options) -> TorchBackend:
        """From a checkpoint (official or ours, or the default one), or from an in-memory ``model``;
        ``options``: ``precision``, ``compile``, ``allow_emulated`` (see the class)."""
        if model is None:
            model, info = load_network(checkpoint, config, smpl_dir)
            if static:
                model.set_budget(budget or default_budget(model.cfg))  # nobody else holds it: no copy
        info = info or {"checkpoint": "in-memory"}
        if static and budget is None:
            budget = model.tokens.budget if model.tokens.budget.is_static else default_budget(model.cfg)
        return cls(model, device, budget if static else None, info=info, **options)

    @torch.inference_mode()
    def run(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        out = self._net(images.to(self.device), img_hw.to(self.device), reduced=self.precision.dtype)
        out = {k: v.cpu() for k, v in out.items()}
        if self.compiled and self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - t0
            self.info["compile_s"] = round(self.compile_seconds, 1)
        return out
