"""SMPL body model: safe loading of the official files, a synthetic stand-in, and the `assets` CLI."""

from sathmr.body.assets import default_smpl_dir, load_mean_params
from sathmr.body.smpl import BodyModel, load_body_model
from sathmr.body.synthetic import generate_synthetic

__all__ = ["BodyModel", "default_smpl_dir", "generate_synthetic", "load_body_model", "load_mean_params"]
