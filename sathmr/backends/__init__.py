"""Runtime backends: one interface, different engines for the same network.

Every backend takes the preprocessed batch and returns the network outputs named in
``sathmr.model.sathmr.NET_OUTPUTS``; pre- and post-processing are shared code around them. The
optional engines (onnxruntime, tensorrt) are imported only when a backend that needs them is opened.
"""

from __future__ import annotations

from pathlib import Path

from sathmr.backends.base import Backend
from sathmr.backends.ort_backend import OrtBackend
from sathmr.backends.torch_backend import TorchBackend
from sathmr.backends.trt_backend import TrtBackend
from sathmr.errors import SathmrError
from sathmr.model.sathmr import SATHMR

#: backend name → (built from an exported file, what it is)
BACKENDS: dict[str, tuple[bool, str]] = {
    "torch": (False, "PyTorch, dynamic token set (the reference)"),
    "torch-static": (False, "PyTorch with the fixed token budgets of the static graph"),
    "ort": (True, "ONNX Runtime on an exported model"),
    "trt": (True, "TensorRT on a built engine"),
}


def load_backend(name: str, *, checkpoint: str | Path | None = None, model_path: str | Path | None = None,
                 model: SATHMR | None = None, config: str | None = None, smpl_dir: str | Path | None = None,
                 device: str = "cpu", **options) -> Backend:
    """A backend by name: torch ones from a checkpoint (or an in-memory ``model``), ort/trt from an
    exported file (``checkpoint``/``config``, when given, must be the ones it was exported from)."""
    if name not in BACKENDS:
        raise SathmrError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name in ("torch", "torch-static"):
        return TorchBackend.from_checkpoint(checkpoint, config, smpl_dir, device, static=name == "torch-static",
                                            model=model, **options)
    if model_path is None:
        raise SathmrError(f"--backend {name} needs --model (an exported file; see `sathmr export`)")
    cls = OrtBackend if name == "ort" else TrtBackend
    return cls.from_file(model_path, device=device, config=config, checkpoint=checkpoint, **options)


__all__ = ["BACKENDS", "Backend", "OrtBackend", "TorchBackend", "TrtBackend", "load_backend"]
