"""What one inference request needs, without any web code: decode and prepare the upload, queue it
for the dynamic batcher, and build the answer (the JSON ``sathmr infer`` writes, plus the overlay PNG
and the people's GLB on request).

:class:`ModelSpec` is the one place that says which model to load (``--backend``, ``--checkpoint``,
``--model``, ...): the command line fills it, and every Ray Serve replica loads from it.
"""

from __future__ import annotations

import base64
import os
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sathmr import __version__
from sathmr.common.errors import SathmrError
from sathmr.inputs.images import check_pixels, decode_image, header_size
from sathmr.outputs.meshes import mesh_file_bytes
from sathmr.outputs.render import result_mosaic
from sathmr.outputs.writers import encode_png
from sathmr.runtime.postprocess import ImageResult, image_json
from sathmr.runtime.predictor import Predictor, load_predictor
from sathmr.runtime.preprocess import Prepared
from sathmr.serve.batcher import DEFAULT_MAX_BODY_BYTES, BatchPolicy, DynamicBatcher
from sathmr.serve.limits import SERVE_MAX_PIXELS, DecodeGate, ServeLimits
from sathmr.serve.metrics import Metrics


@dataclass(frozen=True)
class ModelSpec:
    """Which model to serve and where; picklable, so Ray replicas load exactly what the command named."""
    backend: str | None = None          # None: the one the model implies (sathmr.backends.formats)
    checkpoint: str | None = None
    model_path: str | None = None
    config: str | None = None
    smpl_dir: str | None = None
    device: str = "cpu"
    threads: int | None = None          # PyTorch intra-op threads (None: PyTorch's default)

    def load(self, threshold: float) -> tuple[Predictor, dict]:
        if self.threads:
            torch.set_num_threads(self.threads)
        return load_predictor(self.backend, checkpoint=self.checkpoint, smpl_dir=self.smpl_dir, config=self.config,
                              device=self.device, thresholds=(threshold,), model_path=self.model_path)


@dataclass(frozen=True)
class ServeConfig:
    threshold: float = 0.3                        # when a request names none
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger request bodies: 413
    max_pixels: int = SERVE_MAX_PIXELS            # larger images (from the header): 400
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    viewer_dir: str | None = None                 # node_modules holding @google/model-viewer (serve/viewer.py)
    limits: ServeLimits = field(default_factory=ServeLimits)   # decodes, connections, timeouts (serve/limits.py)

    def __post_init__(self):
        check_threshold(self.threshold)
        if self.max_body_bytes < 1:
            raise SathmrError(f"max body size must be >= 1 byte, got {self.max_body_bytes}")


def check_threshold(t: float) -> float:
    if not 0.0 <= t < 1.0:
        raise SathmrError(f"threshold must be in [0, 1), got {t}")
    return float(t)


@dataclass
class Job:
    prepared: Prepared
    threshold: float
    name: str


class InferenceService:
    """A predictor behind a dynamic batcher; thread-safe (``prepare`` and ``answer`` run in worker threads)."""

    def __init__(self, predictor: Predictor, info: dict, config: ServeConfig = ServeConfig()):
        self.predictor, self.info, self.config = predictor, info, config
        self.metrics = Metrics(config.batch.max_batch_size)
        self.batcher: DynamicBatcher[Job, ImageResult] = DynamicBatcher(self._run, config.batch,
                                                                         self.metrics.observe_batch)
        self.decodes = DecodeGate(config.limits)

    @classmethod
    def load(cls, spec: ModelSpec, config: ServeConfig = ServeConfig()) -> InferenceService:
        predictor, info = spec.load(config.threshold)
        return cls(predictor, {**info, "backend": predictor.backend.name, "device": spec.device}, config)

    def start(self) -> None:
        self.predictor.backend.warmup()
        self.batcher.start()

    def close(self) -> None:
        self.batcher.close()

    # -------------------------------------------------------------------------------- per request
    def prepare(self, data: bytes, source: str) -> Prepared:
        """Encoded image → network input; a bad upload raises SathmrError (HTTP 400), no decode slot Busy (503).

        Images over the pixel limit are refused from the header before they queue for a decode slot;
        one whose header PIL cannot read is costed at the limit."""
        size = header_size(data)
        check_pixels(size, self.config.max_pixels, source)
        with self.decodes.admit(size[0] * size[1] if size is not None else self.config.max_pixels):
            return self.predictor.prepare(decode_image(data, source, self.config.max_pixels))

    def submit(self, prepared: Prepared, threshold: float, name: str) -> Future:
        fut = self.batcher.submit(Job(prepared, threshold, name))
        self.metrics.queue_depth.set(self.batcher.depth)
        return fut

    def _run(self, jobs: list[Job]) -> list[ImageResult]:
        out = self.predictor.run_batch([j.prepared for j in jobs], [j.name for j in jobs],
                                       thresholds=[(j.threshold,) for j in jobs])
        self.metrics.queue_depth.set(self.batcher.depth)
        return out.results

    def answer(self, res: ImageResult, threshold: float, source: str, mesh: str | None = None,
               overlay: str | None = None) -> dict:
        """The JSON of ``sathmr infer`` for this image and threshold; ``mesh="glb"`` adds the people's GLB
        and ``overlay="png"`` the 2x2 overlay, each as ``{"format", "encoding": "base64", "data"}``."""
        cfg, faces = self.predictor.cfg, self.predictor.body_model.faces
        body = image_json(res, threshold, source, self.predictor.backend.name, cfg.focal,
                          precision=self.predictor.backend.info.get("precision", "fp32"))
        people = res.people[threshold]
        if mesh is not None:
            data = mesh_file_bytes(mesh, [p.vertices for p in people], faces, res.intrinsics, res.img_hw,
                                   [p.score for p in people])
            body["mesh"] = _attachment(mesh, data)
        if overlay is not None:
            img = result_mosaic(res, people, faces, cfg.conf_thresh, cfg.patch_size)
            body["overlay"] = _attachment("png", encode_png(img))
        return body

    def models(self) -> dict:
        """``GET /v1/models``: what is loaded and how it is batched."""
        info = self.info
        return {"model": str(info.get("path", "in-memory")), "embedded": bool(info.get("embedded", False)), "backend": self.predictor.backend.name,
                "device": str(info.get("device", "cpu")), "precision": info.get("precision", "fp32"),
                "config": self.predictor.cfg.name, "version": __version__, "note": info.get("note"),
                "default_threshold": self.config.threshold, "max_batch_size": self.config.batch.max_batch_size,
                "max_queue_delay_ms": self.config.batch.max_queue_delay_ms,
                "max_body_bytes": self.config.max_body_bytes, "worker": os.getpid()}


def _attachment(fmt: str, data: bytes) -> dict:
    return {"format": fmt, "encoding": "base64", "bytes": len(data), "data": base64.b64encode(data).decode()}


def upload_name(filename: str | None) -> str:
    """The ``image`` field of the answer: the uploaded file's base name, else ``upload``."""
    return Path(filename).name if filename else "upload"
