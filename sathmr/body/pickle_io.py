"""Restricted unpickling of the MPI SMPL ``.pkl`` files (Python-2 pickles of numpy, scipy and chumpy).

A pickle can run arbitrary code, and SMPL files are downloaded from the web, so we never use plain
``pickle.load``. The unpickler below admits only numpy array reconstruction, scipy sparse matrices and
stand-ins for chumpy's classes (chumpy itself is unmaintained and need not be installed); any other global,
e.g. ``os.system``, is refused with a ``SathmrError`` that names it.
"""

from __future__ import annotations

import codecs
import copyreg
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from sathmr.common.errors import SathmrError


class ChumpyStandIn:
    """Holds the pickled state of a chumpy object and turns it back into a numpy array.

    chumpy's ``Ch`` keeps its value under ``'x'``; reordering and operator nodes keep their input under
    ``'a'`` (and ``'b'``) plus parameters such as ``idxs``, ``axes`` or ``newshape``.
    """

    chumpy_class = "Ch"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}
        if args:
            self.state["x"] = args[0]

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            merged: dict[str, Any] = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            state = merged
        if not isinstance(state, dict):
            raise SathmrError(f"unexpected pickled state for chumpy.{self.chumpy_class}")
        self.state = state

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.to_numpy()
        return arr if dtype is None else arr.astype(dtype)

    @property
    def r(self) -> np.ndarray:  # chumpy's name for "the value"
        return self.to_numpy()

    def to_numpy(self) -> np.ndarray:
        s = getattr(self, "state", {})
        if "x" in s and s["x"] is not None:
            return to_dense(s["x"])
        if "a" not in s:
            raise SathmrError(f"chumpy.{self.chumpy_class} object holds no array ('x' or 'a')")
        a = to_dense(s["a"])
        name = self.chumpy_class
        if name == "transpose":
            return np.transpose(a, s.get("axes"))
        if name == "Reshape":
            return np.reshape(a, s["newshape"])
        if name == "Select":
            return a.ravel()[np.asarray(s["idxs"])].reshape(s.get("preferred_shape", (-1,)))
        if name == "Ravel":
            return a.ravel()
        if name in ("add", "subtract", "multiply", "divide") and "b" in s:
            op = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide}[name]
            return op(a, to_dense(s["b"]))
        return a  # other reordering/ops nodes: the input is the best faithful value we have


def _stand_in(module: str, name: str) -> type:
    return type(name, (ChumpyStandIn,), {"chumpy_class": name, "__module__": module})


def _sparse_classes() -> dict[str, type]:
    names = ("csc_matrix", "csr_matrix", "coo_matrix", "lil_matrix", "dok_matrix", "bsr_matrix", "dia_matrix")
    return {n: getattr(sp, n) for n in names}


def _numpy_globals() -> dict[tuple[str, str], Any]:
    core = getattr(np, "_core", None) or np.core  # the pickled path differs between numpy 1 and 2
    multiarray = core.multiarray
    table: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = multiarray._reconstruct
        table[(mod, "scalar")] = multiarray.scalar
    for mod in ("numpy", "numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "ndarray")] = np.ndarray
        table[(mod, "dtype")] = np.dtype
    table[("numpy.core.numeric", "_frombuffer")] = core.numeric._frombuffer
    table[("numpy._core.numeric", "_frombuffer")] = core.numeric._frombuffer
    return table


def _allowed_globals() -> dict[tuple[str, str], Any]:
    table = _numpy_globals()
    for cls_name, cls in _sparse_classes().items():
        short = cls_name.split("_")[0]  # csc, csr, ...
        for mod in ("scipy.sparse", f"scipy.sparse.{short}", f"scipy.sparse._{short}"):
            table[(mod, cls_name)] = cls
    # copyreg's reconstructor only instantiates classes that themselves passed this table.
    table[("copy_reg", "_reconstructor")] = copyreg._reconstructor
    table[("copyreg", "_reconstructor")] = copyreg._reconstructor
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"): pure data.
    table[("_codecs", "encode")] = codecs.encode
    # Plain-data builtins that chumpy objects carry in their state (e.g. the set of dirty variables).
    for builtin in (object, set, frozenset, slice, complex, bytearray):
        table[("__builtin__", builtin.__name__)] = builtin
        table[("builtins", builtin.__name__)] = builtin
    return table


_ALLOWED = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` admits numpy, scipy.sparse and chumpy stand-ins only."""

    def find_class(self, module: str, name: str) -> Any:
        hit = _ALLOWED.get((module, name))
        if hit is not None:
            return hit
        if module == "chumpy" or module.startswith("chumpy."):
            return _stand_in(module, name)
        raise SathmrError(
            f"refusing to unpickle {getattr(self, 'source', 'file')}: it references the forbidden global "
            f"{module}.{name} (only numpy, scipy.sparse and chumpy data are allowed)"
        )


def load_pickle(path: str | Path) -> Any:
    """Load a (possibly Python-2, latin1) pickle through :class:`RestrictedUnpickler`."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            unpickler = RestrictedUnpickler(fh, encoding="latin1")
            unpickler.source = str(path)
            return unpickler.load()
    except SathmrError:
        raise
    except FileNotFoundError as exc:
        raise SathmrError(f"file not found: {path}") from exc
    except Exception as exc:  # truncated or corrupt data raises many different types
        raise SathmrError(f"{path} is truncated or not a valid pickle ({type(exc).__name__}: {exc})") from exc


def to_dense(obj: Any) -> np.ndarray:
    """numpy view of an unpickled value: arrays, chumpy stand-ins and (possibly old-layout) sparse matrices."""
    if isinstance(obj, ChumpyStandIn):
        return obj.to_numpy()
    if isinstance(obj, sp.spmatrix) or isinstance(obj, sp.sparray):
        return _sparse_to_dense(obj)
    return np.asarray(obj)


def _sparse_to_dense(mat: Any) -> np.ndarray:
    """Rebuild from raw fields: matrices pickled by old scipy lack attributes new scipy expects."""
    fields = vars(mat)
    shape = fields.get("_shape", fields.get("shape"))
    fmt = type(mat).__name__[:3]
    if fmt in ("csc", "csr") and {"data", "indices", "indptr"} <= fields.keys():
        cls = sp.csc_matrix if fmt == "csc" else sp.csr_matrix
        return cls((fields["data"], fields["indices"], fields["indptr"]), shape=shape).toarray()
    return mat.toarray()
