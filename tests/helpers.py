"""Test-only helpers: ONNX graph inspection and a backend wrapper with a known edit."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from sathmr.backends.base import Backend
from sathmr.model import build_model
from sathmr.model.checkpoint import load_model, to_official
from sathmr.model.config import ModelConfig
from sathmr.zoo.weights import EMBEDDED


def graph_op_types(path: str | Path) -> set[str]:
    """Every op type in the graph (to prove there is no data-dependent NonZero)."""
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def output_shapes(path: str | Path) -> dict[str, list[int | str]]:
    proto = onnx.load(str(path), load_external_data=False)
    return {o.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in o.type.tensor_type.shape.dim]
            for o in proto.graph.output}


class Shifted(Backend):
    """Another backend's outputs with a known edit: a parity report must reveal exactly it."""

    def __init__(self, inner: Backend, edit):
        self.inner, self.edit = inner, edit
        self.cfg, self.canvas_hw, self.name, self.info = inner.cfg, inner.canvas_hw, "shifted", {}

    def run(self, images, img_hw):
        out = {k: v.clone() for k, v in self.inner.run(images, img_hw).items()}
        self.edit(out)
        return out


def random_official_state_dict(cfg: ModelConfig, seed: int = 0, body_buffers=None) -> dict[str, torch.Tensor]:
    """A state dict in the official layout with random weights."""
    torch.manual_seed(seed)
    return to_official(build_model(cfg).state_dict(), cfg, body_buffers)


def embedded_config() -> ModelConfig:
    """The embedded default's architecture, as its file says (tests follow a retrained default)."""
    return load_model(EMBEDDED)[0].cfg
