"""Shared fixtures: the real test photos (skipped with the reason when absent) and synthetic body models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sathmr.backends.meta import Artifact
from sathmr.body import load_body_model
from sathmr.export.onnx import export_from_checkpoint
from sathmr.model.checkpoint import save_checkpoint
from sathmr.zoo.random_weights import random_network
from sathmr.zoo.weights import synthetic_smpl_dir

REPO = Path(__file__).resolve().parents[1]
#: the real test photos: a folder given by SATHMR_TEST_IMAGES (``.ci/run`` sets it); the tests that need them skip without
IMAGES_DIR = Path(os.environ["SATHMR_TEST_IMAGES"]) if os.environ.get("SATHMR_TEST_IMAGES") else None
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def real_image_paths() -> list[Path]:
    return sorted(p for p in IMAGES_DIR.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if IMAGES_DIR and IMAGES_DIR.is_dir() else []


@pytest.fixture(scope="session")
def real_images() -> list[Path]:
    """The two real photos (sathmr_demo_img1.jpeg, sathmr_demo_img2.jpg)."""
    paths = real_image_paths()
    if not paths:
        pytest.skip(f"real test images not found in {IMAGES_DIR} (set SATHMR_TEST_IMAGES to a folder of photos)"
                    if IMAGES_DIR else "no real test images: set SATHMR_TEST_IMAGES to a folder of photos")
    return paths


@pytest.fixture(scope="session")
def smpl_tiny() -> Path:
    """The tiny synthetic SMPL-format body model (generated once into the cache)."""
    return synthetic_smpl_dir("tiny")


@pytest.fixture(scope="session")
def body_tiny(smpl_tiny):
    return load_body_model(smpl_tiny)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Every command falls back to the embedded default and its synthetic body model (made once per module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SATHMR_WEIGHTS", str(tmp_path_factory.mktemp("no_weights")))
        mp.setenv("SATHMR_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def tiny_random(smpl_tiny):
    """The tiny architecture with the benchmark's random, spread weights (every token level occurs)."""
    return random_network("tiny", smpl_tiny, seed=0)


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_random, tmp_path_factory) -> Path:
    return save_checkpoint(tiny_random, tmp_path_factory.mktemp("tiny_ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def tiny_export(tiny_ckpt, smpl_tiny, tmp_path_factory) -> Artifact:
    """`sathmr export`'s default (two-stage) of ``tiny_ckpt``, made once for the whole session."""
    return export_from_checkpoint(tmp_path_factory.mktemp("tiny_export") / "tiny_onnx", checkpoint=tiny_ckpt,
                                  smpl_dir=smpl_tiny)[0]
