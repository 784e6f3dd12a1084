"""The backend interface: what every engine that runs the network provides."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch

from sathmr.model.config import ModelConfig


class Backend(ABC):
    """Runs the network on a preprocessed batch. Nothing else differs between backends."""

    name: str = "?"
    cfg: ModelConfig
    #: fixed (H, W) input of a static graph; None = any multiple of 56 up to the canvas
    canvas_hw: tuple[int, int] | None = None
    #: fixed batch size of a static graph; None = any
    fixed_batch: int | None = None
    #: what the backend was built from (checkpoint, providers, budgets...), for logs and bench
    info: dict

    @abstractmethod
    def run(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B,3,H,W) float32 normalised, img_hw (B,2) int64 → NET_OUTPUTS as CPU tensors."""

    def check_body_model(self, body_model) -> None:
        """Refuse a body model the backend was not built for (exported graphs record a fingerprint)."""

    def warmup(self) -> None:
        """Allocate what the first real call would (kernels, arenas, engines); default: nothing to do."""


def fixed_batches(images: torch.Tensor, img_hw: torch.Tensor, fixed: int | None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Split a batch into the graph's fixed batch size: (images, img_hw, number of real images).

    A short last chunk is filled with copies of its last image (never zeros: an all-padding image
    would have no valid key and produce NaN); the caller drops the extra outputs. Images are
    independent in the graph (per-image masks), so the fill cannot change the real ones.
    """
    n = images.shape[0]
    step = fixed or n
    for s in range(0, n, step):
        xb, hb = images[s:s + step], img_hw[s:s + step]
        m = xb.shape[0]
        if m < step:
            xb = torch.cat([xb, xb[-1:].expand(step - m, *xb.shape[1:])])
            hb = torch.cat([hb, hb[-1:].expand(step - m, *hb.shape[1:])])
        yield xb, hb, m
