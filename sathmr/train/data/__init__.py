"""Training data: dataset readers (spec §6), the per-sample GT pipeline (§5.3) and synthetic scenes.

Import-light: the heavy pieces live in submodules (``readers``, ``pipeline``, ``synthetic``).
"""

from sathmr.train.data.pipeline import BodyModels, HMRDataset, SampleBuilder, collate, stack_images
from sathmr.train.data.readers import LAYOUTS, DatasetReader, ImageRecord, open_dataset

__all__ = ["BodyModels", "DatasetReader", "HMRDataset", "ImageRecord", "LAYOUTS", "SampleBuilder", "collate",
           "open_dataset", "stack_images"]
