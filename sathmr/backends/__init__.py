"""Runtime backends: one interface, different engines for the same network.

Every backend takes the preprocessed batch and returns the network outputs named in
``sathmr.model.sathmr.NET_OUTPUTS``; pre- and post-processing are shared code around them. The
optional engines (onnxruntime, tensorrt) are imported only when a backend that needs them is opened.
Which backend runs which file is :data:`sathmr.backends.formats.FORMATS`; :func:`open_model` is the way in from
what a user typed (``--model``, ``--backend``, ``--checkpoint``).
"""

import importlib

_WHERE = {"Backend": "sathmr.backends.base", "TorchBackend": "sathmr.backends.torch_backend",
          "OrtBackend": "sathmr.backends.ort_backend", "TrtBackend": "sathmr.backends.trt_backend",
          "OpenVinoBackend": "sathmr.backends.openvino_backend",
          "BACKENDS": "sathmr.backends.formats", "load_backend": "sathmr.backends.auto",
          "open_model": "sathmr.backends.auto", "weights_behind": "sathmr.backends.auto"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    """The names above load on first use (PEP 562): ``sathmr.backends.formats`` is read by every command's
    options, and must not import torch or an engine."""
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'sathmr.backends' has no attribute {name!r}")
