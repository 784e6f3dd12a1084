"""The SAT-HMR network: scale-adaptive ViT encoder, DAB-DETR decoder and SMPL parameter heads.

``SATHMR`` and ``build_model`` load on first use (PEP 562), so that ``sathmr.model.config`` (the
architecture's dataclass, which light command modules read) does not import torch.
"""

import importlib

__all__ = ["SATHMR", "build_model"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("sathmr.model.sathmr"), name)
    raise AttributeError(f"module 'sathmr.model' has no attribute {name!r}")
