"""Python API: images in, people out — the one data path every command uses.

    image → preprocess → backend (any engine) → decode_outputs (SMPL, camera) → threshold → results

``Predictor.run_batch`` is the single batch runner: infer, bench, parity and eval all call it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sathmr.backends import Backend, open_model
from sathmr.backends.precision import precision_kwargs
from sathmr.body import load_body_model
from sathmr.common.errors import SathmrError
from sathmr.common.timing import StageTimer
from sathmr.inputs.images import read_image
from sathmr.model.config import ModelConfig
from sathmr.runtime.postprocess import ImageResult, as_arrays, decode_outputs, image_result
from sathmr.runtime.preprocess import Prepared, collate, prepare
from sathmr.zoo.weights import resolve


@dataclass
class BatchOutput:
    """What one batch produced: per-image results and, for parity and evaluation, all queries."""
    results: list[ImageResult]
    net: dict[str, torch.Tensor]        # the backend's NET_OUTPUTS (CPU)
    decoded: dict[str, np.ndarray]      # every query after SMPL and projection, canvas frame
    times: dict[str, float]             # seconds: network, postprocess


class Predictor:
    """Runs any backend with the shared pre- and post-processing: the one batch runner of infer, bench,
    parity, eval and serve, so that every command sees the same people for the same network outputs.

    Args:
        backend: any :class:`~sathmr.backends.base.Backend` (``sathmr.backends.open_model`` builds one).
        body_model: the SMPL model post-processing poses (checked against the backend's fingerprint by
            :func:`load_body_for`).
        thresholds: confidence thresholds τ; each image gets its people at every one of them.
        with_verts: also compute the 6890 vertices per person (meshes, overlays); off for joints only.
    """

    def __init__(self, backend: Backend, body_model, thresholds: Sequence[float] = (0.3,),
                 with_verts: bool = True):
        self.backend = backend
        self.cfg: ModelConfig = backend.cfg
        self.body_model = body_model
        self.thresholds = tuple(sorted(set(float(t) for t in thresholds)))
        if not self.thresholds or any(not 0.0 <= t < 1.0 for t in self.thresholds):
            raise SathmrError(f"thresholds must be in [0, 1): {thresholds}")
        self.with_verts = with_verts

    def prepare(self, image: str | Path | np.ndarray) -> Prepared:
        img = read_image(image) if isinstance(image, (str, Path)) else image
        return prepare(img, self.cfg.input_size, self.cfg.pad_multiple)

    def predict(self, images: Sequence[str | Path | np.ndarray], batch_size: int = 1) -> list[ImageResult]:
        """Image files or BGR arrays → one result per image (the simplest way in from Python)."""
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            names = [Path(im).stem if isinstance(im, (str, Path)) else f"image{start + i}" for i, im in enumerate(chunk)]
            results.extend(self.run_batch([self.prepare(im) for im in chunk], names).results)
        return results

    @torch.inference_mode()
    def run_batch(self, items: Sequence[Prepared], names: Sequence[str], timer: StageTimer | None = None,
                  thresholds: Sequence[Sequence[float]] | None = None) -> BatchOutput:
        """Prepared images → network → decoded outputs → people per threshold, with stage timings.

        ``timer`` (marked at the start of the network and after each stage) lets a caller time its own
        stages before this one on the same clock (CUDA events on GPU). ``thresholds`` (one sequence per
        item; default the predictor's) lets the images of one batch ask for different thresholds (serve).
        """
        images, img_hw = collate(list(items), self.backend.canvas_hw)
        timer = timer or StageTimer()
        timer.mark()
        net = self.backend.run(images, img_hw)
        timer.mark()
        decoded = as_arrays(decode_outputs(net, img_hw, self.body_model, self.cfg, self.with_verts), self.cfg)
        per_item = thresholds if thresholds is not None else [self.thresholds] * len(items)
        if len(per_item) != len(items):
            raise ValueError(f"{len(per_item)} threshold sets for {len(items)} images")
        results = [image_result(decoded, i, p, name, ts, self.cfg, self.with_verts)
                   for i, (p, name, ts) in enumerate(zip(items, names, per_item))]
        timer.mark()
        network, post = timer.intervals()[-2:]
        return BatchOutput(results, net, decoded, {"network": network, "postprocess": post})


def check_body_model(found: dict[str, torch.Tensor], body_model) -> None:
    """Warn when an official checkpoint's embedded SMPL buffers differ from the user's SMPL file."""
    if not found:
        return
    own = dict(body_model.smpl.named_buffers())
    diff = [k for k, v in found.items() if k in own and (own[k].shape != v.shape or
            not torch.allclose(own[k].to(v.dtype), v.to(own[k].device), atol=1e-5))]
    if diff:
        warnings.warn(f"the checkpoint's SMPL buffers differ from your body model ({', '.join(diff[:4])}); "
                      "using your body model", stacklevel=2)


def load_body_for(backends: Sequence[Backend], smpl_dir=None, device: str = "cpu"):
    """The body model (given folder, else the one a backend was loaded with, else the default),
    checked against every backend that knows which one it was built with."""
    smpl_dir = smpl_dir or next((be.info["smpl_dir"] for be in backends if be.info.get("smpl_dir")), None)
    body = load_body_model(smpl_dir or resolve(None, None).smpl_dir)
    if device.startswith("cuda"):
        body = body.to(device)
    for be in backends:
        check_body_model(be.info.get("human_model", {}), body)
        be.check_body_model(body)
    return body


def load_predictor(backend: str | None = None, checkpoint=None, smpl_dir=None, config: str | None = None,
                   device: str = "cpu", thresholds: Sequence[float] = (0.3,), model_path=None,
                   with_verts: bool = True, precision: str | None = None, compile: bool = False,
                   **backend_options) -> tuple[Predictor, dict]:
    """Build the backend (:func:`sathmr.backends.open_model`: ``model_path`` may be any model file, export
    or registry name, and implies the backend) and the body model; returns the predictor and what was loaded.

    ``precision``: fp32 / bf16 / fp16 for the torch backends (see :mod:`sathmr.backends.precision`; hardware
    without native kernels is refused unless ``allow_emulated=True``); for an export it can only confirm
    the exported model's own. ``compile``: torch.compile (torch backends only).
    """
    be = open_model(model_path, backend, checkpoint=checkpoint, config=config, smpl_dir=smpl_dir, device=device,
                    **precision_kwargs(precision, compile), **backend_options)
    body = load_body_for([be], smpl_dir, device)
    return Predictor(be, body, thresholds, with_verts), be.info
