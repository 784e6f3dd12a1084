"""PyTorch backends: dynamic (the reference) and static (the fixed-budget graph that is exported), at
fp32 (the reference) or a reduced precision after the token selection (``sathmr.backends.precision``), optionally
through ``torch.compile``."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from sathmr.backends.base import Backend
from sathmr.backends.precision import plan_precision
from sathmr.common.errors import SathmrError
from sathmr.model.sathmr import SATHMR
from sathmr.model.tokens import TokenBudget, default_budget
from sathmr.zoo.weights import load_network


def pick_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SathmrError("--device cuda requested but no CUDA device is available to PyTorch")
    return dev


def _tf32_knobs() -> list[tuple[object, str, object]]:
    """(object, attribute, exact value) of every switch that lets CUDA fp32 run as TF32 (cuDNN convolutions
    default to TF32 in PyTorch); the ``fp32_precision`` API where PyTorch has it (2.9+), else ``allow_tf32``."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return [(conv, "fp32_precision", "ieee"), (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """No TF32 on ``device`` inside: fp32 means fp32 (the token selection thresholds stage A's scale map,
    and TF32 changes sat_644's token set). Reduced precisions are autocast's, unaffected. Restored after."""
    if device.type != "cuda":
        yield
        return
    knobs = _tf32_knobs()
    saved = [getattr(obj, name) for obj, name, _ in knobs]
    for obj, name, value in knobs:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for (obj, name, _), value in zip(knobs, saved):
            setattr(obj, name, value)


class TorchBackend(Backend):
    """``precision``: see :mod:`sathmr.backends.precision` (``allow_emulated`` runs bf16 on hardware that only
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
        with exact_fp32(self.device):
            out = self._net(images.to(self.device), img_hw.to(self.device), reduced=self.precision.dtype)
        out = {k: v.cpu() for k, v in out.items()}
        if self.compiled and self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - t0
            self.info["compile_s"] = round(self.compile_seconds, 1)
        return out
