"""Training data: dataset readers (spec §6), the per-sample GT pipeline (§5.3) and synthetic scenes.

Import-light: the heavy pieces live in submodules (``readers``, ``pipeline``, ``synthetic``), and the names
below load on first use (PEP 562), so that ``sathmr data --help`` does not import torch.
"""


import importlib

_WHERE = {**dict.fromkeys(("BodyModels", "HMRDataset", "SampleBuilder", "collate", "stack_images"), "sathmr.train.data.pipeline"),
          **dict.fromkeys(("LAYOUTS", "DatasetReader", "ImageRecord", "open_dataset"), "sathmr.train.data.readers")}

__all__ = ["BodyModels", "DatasetReader", "HMRDataset", "ImageRecord", "LAYOUTS", "SampleBuilder", "collate",
           "open_dataset", "stack_images"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'sathmr.train.data' has no attribute {name!r}")
