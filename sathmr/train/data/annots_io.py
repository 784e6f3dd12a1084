"""Read and write the ``annots`` npz files of §6 without trusting their pickles.

Every annotation file is an ``.npz`` holding one pickled object (a dict image name → annotation) under
``annots``. ``np.load(allow_pickle=True)`` would execute whatever the pickle names, so we open the zip
ourselves and unpickle with the body package's allow-list (numpy, scipy.sparse) extended by builtin
containers and torch tensors (whose storages are re-read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sathmr.body.pickle_io import RestrictedUnpickler
from sathmr.common.errors import SathmrError

# What annotation pickles need beyond the SMPL-file allow-list of ``sathmr.body.pickle_io``.
_EXTRA_GLOBALS: set[tuple[str, str]] = {
    *{("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex",
                                  "bool", "str", "bytes", "bytearray", "slice", "range")},
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
}


def _storage_from_bytes(data: bytes) -> Any:
    """Safe replacement for ``torch.storage._load_from_bytes`` (which uses ``weights_only=False``)."""
    return torch.load(io.BytesIO(data), weights_only=True)


class AnnotsUnpickler(RestrictedUnpickler):
    """The body package's restricted unpickler plus builtin containers and torch tensors (H36M, 3DPW)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        if (module, name) in _EXTRA_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return pickle.Unpickler.find_class(self, module, name)
        return super().find_class(module, name)


def load_annots(path: str | Path, key: str = "annots") -> dict:
    """Return the annotation dict stored under ``key`` in the npz at ``path``, or raise a SathmrError."""
    path = Path(path)
    if not path.is_file():
        raise SathmrError(f"annotation file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            member = f"{key}.npy"
            if member not in zf.namelist():
                raise SathmrError(f"annotation file {path} has no '{key}' entry")
            with zf.open(member) as fp:
                version = np.lib.format.read_magic(fp)
                _shape, _fortran, dtype = (np.lib.format.read_array_header_1_0(fp) if version == (1, 0)
                                           else np.lib.format.read_array_header_2_0(fp))
                if not dtype.hasobject:
                    raise SathmrError(f"annotation file {path}: '{key}' is not a pickled object")
                unpickler = AnnotsUnpickler(fp, encoding="latin1")
                unpickler.source = str(path)
                obj = unpickler.load()
    except SathmrError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, ValueError, EOFError, OSError, AttributeError,
            TypeError, RuntimeError) as exc:
        raise SathmrError(f"cannot read annotation file {path}: {exc}") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        obj = obj.item()
    if not isinstance(obj, dict):
        raise SathmrError(f"annotation file {path}: '{key}' holds {type(obj).__name__}, expected a dict")
    return obj


def save_annots(path: str | Path, annots: dict, key: str = "annots") -> None:
    """Write ``annots`` as the original tools do (object array in an npz), with fixed zip timestamps
    so that the same content always gives the same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.empty((), dtype=object)
    arr[()] = annots
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, buf.getvalue())
