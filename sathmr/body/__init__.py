"""SMPL body model: safe loading of the official files, a synthetic stand-in, and the `assets` CLI.

The names below load on first use (PEP 562), so that ``sathmr assets --help`` does not import torch."""

import importlib

_WHERE = {"BodyModel": "sathmr.body.smpl", "load_body_model": "sathmr.body.smpl", "default_smpl_dir": "sathmr.body.assets",
          "load_mean_params": "sathmr.body.assets", "generate_synthetic": "sathmr.body.synthetic"}

__all__ = ["BodyModel", "default_smpl_dir", "generate_synthetic", "load_body_model", "load_mean_params"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'sathmr.body' has no attribute {name!r}")
