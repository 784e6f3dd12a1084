"""Python API: images in, people out — the one data path every command uses.

    image → preprocess → backend (any engine) → decode_outputs (SMPL, camera) → threshold → results
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sathmr.backends.base import Backend, load_backend
from sathmr.config import ModelConfig, get_config
from sathmr.errors import SathmrError
from sathmr.model.sathmr import SATHMR
from sathmr.postprocess import RAW_OUTPUTS, ImageResult, as_arrays, decode_outputs, select_people
from sathmr.preprocess import Prepared, collate, prepare, read_image


def load_network(checkpoint=None, config: str | None = None, smpl_dir=None) -> tuple[SATHMR, dict]:
    """The PyTorch network from a checkpoint (official or ours), the user's weights/ or the embedded default."""
    from sathmr.model.checkpoint import load_model
    from sathmr.weights import EMBEDDED, resolve

    res = resolve(checkpoint, smpl_dir)
    mean_params = None
    if res.checkpoint is not None and res.checkpoint.suffix != ".safetensors":
        from sathmr.body import load_mean_params
        try:
            mean_params = load_mean_params(res.smpl_dir)
        except SathmrError:
            mean_params = None  # the official checkpoints carry the means; load_model says if not
    model, info = load_model(res.checkpoint or EMBEDDED, config, mean_params)
    info.update(note=res.note, smpl_dir=str(res.smpl_dir), embedded=res.embedded)
    return model, info


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


class Predictor:
    """Runs any backend with the shared pre- and post-processing."""

    def __init__(self, backend: Backend, body_model, thresholds: Sequence[float] = (0.3,),
                 with_verts: bool = True):
        self.backend = backend
        self.cfg: ModelConfig = backend.cfg
        self.body_model = body_model
        self.thresholds = tuple(sorted(set(float(t) for t in thresholds)))
        if not self.thresholds or any(not 0.0 <= t < 1.0 for t in self.thresholds):
            raise SathmrError(f"thresholds must be in [0, 1): {thresholds}")
        self.with_verts = with_verts
        self.timings: dict[str, list[float]] = defaultdict(list)

    # ---------------------------------------------------------------------------------------------
    def prepare(self, image: str | Path | np.ndarray) -> Prepared:
        img = read_image(image) if isinstance(image, (str, Path)) else image
        return prepare(img, self.cfg.input_size, self.cfg.pad_multiple)

    def __call__(self, images: Sequence[str | Path | np.ndarray] | str | Path | np.ndarray,
                 batch_size: int = 1) -> list[ImageResult]:
        if isinstance(images, (str, Path, np.ndarray)):
            images = [images]
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            t0 = time.perf_counter()
            prepared = [self.prepare(im) for im in chunk]
            self.timings["preprocess"].append(time.perf_counter() - t0)
            names = [Path(im).stem if isinstance(im, (str, Path)) else f"image{start + i}" for i, im in enumerate(chunk)]
            results.extend(self.run_prepared(prepared, names))
        return results

    @torch.inference_mode()
    def run_prepared(self, items: list[Prepared], names: list[str]) -> list[ImageResult]:
        images, img_hw = collate(items, self.backend.canvas_hw)
        t0 = time.perf_counter()
        net = self.backend.run(images, img_hw)
        t1 = time.perf_counter()
        arrays = as_arrays(decode_outputs(net, img_hw, self.body_model, self.cfg, self.with_verts), self.cfg)
        results = []
        for i, (p, name) in enumerate(zip(items, names)):
            people = {t: select_people(arrays, i, t, p.scale, self.with_verts) for t in self.thresholds}
            counts = arrays["tok_counts"][i]
            raw = {k: arrays[k][i] for k in RAW_OUTPUTS if k in arrays}
            H, W = p.tensor.shape[1:]
            raw["input"] = p.tensor.numpy()
            raw["img_size"] = np.array(p.img_hw, dtype=np.int64)
            hc, wc = H // self.cfg.cell_size, W // self.cfg.cell_size
            lvl = arrays["tok_lvl"][i]
            results.append(ImageResult(
                name=name, orig_hw=p.orig_hw, img_hw=p.img_hw, scale=p.scale, people=people,
                tokens={"level0": int(counts[0]), "level1": int(counts[1]), "level2": int(counts[2]),
                        "sat_overflow": int(arrays["tok_overflow"][i][0]),
                        "context_overflow": int(arrays["tok_overflow"][i][1])},
                raw=raw,
                extras={"scale_map": arrays["scale_map"][i][:hc, :wc], "tok_yx": arrays["tok_yx"][i][lvl >= 0],
                        "tok_lvl": lvl[lvl >= 0], "resized_bgr": p.resized_bgr,
                        "intrinsics": arrays["pred_intrinsics"][i, 0]},
            ))
        self.timings["network"].append(t1 - t0)
        self.timings["postprocess"].append(time.perf_counter() - t1)
        return results


def open_backend(backend: str, checkpoint=None, smpl_dir=None, config: str | None = None, device: str = "cpu",
                 model_path=None, **backend_kwargs) -> Backend:
    """A backend by name from the CLI's options: torch ones from a checkpoint, ort/trt from an exported file."""
    if backend in ("torch", "torch-static"):
        return load_backend(backend, checkpoint=checkpoint, config=config, smpl_dir=smpl_dir, device=device,
                            **backend_kwargs)
    if model_path is None:
        raise SathmrError(f"--backend {backend} needs --model (an exported file; see `sathmr export`)")
    return load_backend(backend, path=model_path, device=device, config=config, checkpoint=checkpoint,
                        **backend_kwargs)


def load_body_for(backends: Sequence[Backend], smpl_dir=None, device: str = "cpu"):
    """The body model (given folder, else the one a backend was loaded with, else the default),
    checked against every backend that knows which one it was built with."""
    from sathmr.body import load_body_model
    from sathmr.weights import resolve

    smpl_dir = smpl_dir or next((be.info["smpl_dir"] for be in backends if be.info.get("smpl_dir")), None)
    body = load_body_model(smpl_dir or resolve(None, None).smpl_dir)
    if device.startswith("cuda"):
        body = body.to(device)
    for be in backends:
        check_body_model(be.info.get("human_model", {}), body)
        be.check_body_model(body)
    return body


def load_predictor(backend: str = "torch", checkpoint=None, smpl_dir=None, config: str | None = None,
                   device: str = "cpu", thresholds: Sequence[float] = (0.3,), model_path=None,
                   with_verts: bool = True, **backend_kwargs) -> tuple[Predictor, dict]:
    """Build the backend and the body model; returns the predictor and what was loaded."""
    be = open_backend(backend, checkpoint, smpl_dir, config, device, model_path, **backend_kwargs)
    body = load_body_for([be], smpl_dir, device)
    return Predictor(be, body, thresholds, with_verts), be.info
