"""Lazy imports of optional packages, with a one-line hint naming the extra that provides them."""

from __future__ import annotations

import importlib
from types import ModuleType

from sathmr.errors import SathmrError

# import name -> (pip extra, what it is for)
EXTRAS = {
    "onnxruntime": ("ort", "the ONNX Runtime backend"),
    "tensorrt": ("gpu", "the TensorRT backend and export"),
    "matplotlib": ("bench", "the scaling plot of sathmr bench"),
    "fastapi": ("serve", "sathmr serve"),
    "uvicorn": ("serve", "sathmr serve"),
    "multipart": ("serve", "multipart uploads to sathmr serve (python-multipart)"),
    "prometheus_client": ("serve", "the metrics of sathmr serve"),
    "pygltflib": ("anim", "the animated glTF of sathmr infer --save-anim"),
    "ray": ("ray", "replicas under Ray Serve (sathmr serve --ray-replicas)"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise a SathmrError that says which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra, purpose = EXTRAS.get(module.split(".")[0], (None, module))
        hint = f"pip install 'sathmr[{extra}]'" if extra else f"pip install {module}"
        raise SathmrError(f"{module} is needed for {purpose} but is not installed: {hint}") from exc
