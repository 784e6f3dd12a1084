"""The SAT-HMR network: scale-adaptive ViT encoder, DAB-DETR decoder and SMPL parameter heads."""

from sathmr.model.sathmr import SATHMR, build_model

__all__ = ["SATHMR", "build_model"]
