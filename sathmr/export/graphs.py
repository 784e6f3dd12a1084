"""The exported graphs as modules: each one a thin view of the model's own seams, so an exported graph
is the PyTorch code of the dynamic model and cannot drift from it.

  * ``ScaleMapGraph``  (B,3,H,W) images, (B,2) img_hw → scale map (B,Hc,Wc,2), stage-A level-1 tokens
    (B,Hc,Wc,C) and CLS (B,1,C) — ``SATHMR.forward_scale_map``;
  * ``TokensGraph``    images, those tokens and the selection (indices and validity, (B,Ks) / (B,Kc))
    → the query outputs — ``SATHMR.forward_tokens`` + ``forward_decoder``;
  * ``StaticGraph``    the whole network with the fixed budgets of ``SATHMR.set_budget``.

Every interface tensor is float32 whatever the precision: a half-precision graph casts inside, so every
backend feeds and reads the same dtypes. Stage A always runs in float32, because the token selection
must not depend on the precision (it thresholds the scale map).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.export import Dim

from sathmr.backends.meta import QUERY_OUTPUTS, ExportMeta
from sathmr.model.sathmr import NET_OUTPUTS, SATHMR
from sathmr.model.tokens import Selection

#: the dtype each precision traces in (int8 is traced in float32; its weights are quantised afterwards)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.float32}


def _floats(out: dict[str, torch.Tensor], names) -> tuple[torch.Tensor, ...]:
    return tuple(out[k].float() if out[k].is_floating_point() else out[k] for k in names)


class ScaleMapGraph(nn.Module):
    def __init__(self, model: SATHMR):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, img_hw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        st = self.model.forward_scale_map(images, img_hw, always_mask=True)
        B, hc, wc, _ = st.scale_map.shape
        # level-1 tokens on their grid: (B, Hc, Wc, C) keeps every axis a linear function of H and W
        return st.scale_map, st.t1.reshape(B, hc, wc, -1), st.cls


class TokensGraph(nn.Module):
    def __init__(self, model: SATHMR, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, images, t1, cls, sat_idx, sat_valid, ctx_idx, ctx_valid) -> tuple[torch.Tensor, ...]:
        sel = Selection(sat_idx, sat_valid, ctx_idx, ctx_valid)
        mem = self.model.forward_tokens(images.to(self.dtype), t1.flatten(1, 2).to(self.dtype), cls.to(self.dtype),
                                        sel, always_mask=True)
        layers, _ = self.model.forward_decoder(mem, all_layers=False)
        return _floats(layers[-1], QUERY_OUTPUTS)


class StaticGraph(nn.Module):
    def __init__(self, model: SATHMR, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, images: torch.Tensor, img_hw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _floats(self.model.net_outputs(images.to(self.dtype), img_hw), NET_OUTPUTS)


def sample_inputs(graph: str, model: SATHMR, meta: ExportMeta) -> tuple[torch.Tensor, ...]:
    """Tracing inputs. Sizes avoid 0, 1 and coincidences (H ≠ W, Ks ≠ Kc, img_hw below the canvas) so
    that no axis is specialised to a constant or tied to another one."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    m = cfg.pad_multiple
    if graph == "static":
        H, W = meta.canvas_hw
        B = meta.batch or 2
        hw = torch.tensor([[H - m if H > m else H, W]] * B, dtype=torch.int64)
        return torch.randn(B, 3, H, W, generator=g), hw
    B, H, W = meta.batch or 2, cfg.input_size - m, cfg.input_size
    images = torch.randn(B, 3, H, W, generator=g)
    hw = torch.tensor([[H - 20, W], [H, W - m]] * (B // 2) + [[H, W]] * (B % 2), dtype=torch.int64)
    if graph == "scale_map":
        return images, hw
    hc, wc, C = H // cfg.cell_size, W // cfg.cell_size, cfg.embed_dim
    ks, kc = 5, 7
    return (images, torch.randn(B, hc, wc, C, generator=g), torch.randn(B, 1, C, generator=g),
            torch.randint(0, hc * wc, (B, ks), generator=g), torch.ones(B, ks, dtype=torch.bool),
            torch.randint(0, hc * wc + hc * wc // 4, (B, kc), generator=g), torch.ones(B, kc, dtype=torch.bool))


def dynamic_shapes(graph: str, meta: ExportMeta) -> dict | None:
    """The named dynamic axes of each graph (``batch``, ``h56``/``w56`` in units of 56 px, ``sat_cells``,
    ``ctx_tokens``), for ``torch.export``; every other axis is static."""
    ax = meta.axes()
    d = {name: Dim(name, min=lo, max=hi) for name, (lo, hi) in ax.items()}
    b = None if meta.batch else d["batch"]
    batch = {} if b is None else {0: b}
    if graph == "static":
        return {"images": batch, "img_hw": batch} if b is not None else None
    m = meta.cfg.pad_multiple
    images = {**batch, 2: m * d["h56"], 3: m * d["w56"]}
    if graph == "scale_map":
        return {"images": images, "img_hw": batch}
    ks, kc = {**batch, 1: d["sat_cells"]}, {**batch, 1: d["ctx_tokens"]}
    return {"images": images, "t1": {**batch, 1: 2 * d["h56"], 2: 2 * d["w56"]}, "cls": batch,
            "sat_idx": ks, "sat_valid": ks, "ctx_idx": kc, "ctx_valid": kc}


def graph_module(graph: str, model: SATHMR, precision: str) -> nn.Module:
    """The module exported as ``graph``. Stage A stays float32 at any precision (see the docstring)."""
    dtype = DTYPES[precision]
    if graph == "scale_map":
        return ScaleMapGraph(model)
    half = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    return TokensGraph(half, dtype) if graph == "tokens" else StaticGraph(half, dtype)
