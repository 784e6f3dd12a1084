"""The restricted unpickler: chumpy-era SMPL pickles load without chumpy; code-executing pickles do not."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

from sathmr.body.pickle_io import ChumpyStandIn, load_pickle, to_dense
from sathmr.common.errors import SathmrError


def _fake_chumpy_modules() -> dict[str, types.ModuleType]:
    """Minimal classes that pickle like chumpy's: a Ch with its value in __dict__['x'], a reordering node."""
    ch = types.ModuleType("chumpy.ch")
    reordering = types.ModuleType("chumpy.reordering")

    class Ch:
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()

        def __getstate__(self):
            return dict(self.__dict__)

    class transpose:  # noqa: N801 - chumpy's own name
        def __init__(self, a, axes):
            self.a = a
            self.axes = axes

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    transpose.__module__, transpose.__qualname__ = "chumpy.reordering", "transpose"
    ch.Ch = Ch
    reordering.transpose = transpose
    return {"chumpy": types.ModuleType("chumpy"), "chumpy.ch": ch, "chumpy.reordering": reordering}


@pytest.fixture
def chumpy_pickle(tmp_path, monkeypatch):
    """An SMPL-like pickle whose arrays are wrapped in (fake) chumpy objects, then chumpy made unimportable."""
    rng = np.random.default_rng(0)
    shapedirs = rng.normal(size=(5, 3, 10))
    posedirs = rng.normal(size=(3, 5, 7))
    j_reg = sp.csc_matrix(np.eye(4, 5))
    fakes = _fake_chumpy_modules()
    with monkeypatch.context() as m:
        for name, mod in fakes.items():
            m.setitem(sys.modules, name, mod)
        payload = {
            "shapedirs": fakes["chumpy.ch"].Ch(shapedirs),
            "posedirs": fakes["chumpy.reordering"].transpose(fakes["chumpy.ch"].Ch(posedirs), (1, 0, 2)),
            "J_regressor": j_reg,
            "bs_style": "lbs",
        }
        path = tmp_path / "model.pkl"
        path.write_bytes(pickle.dumps(payload, protocol=2))
    # Loading must not be able to fall back on a real chumpy.
    monkeypatch.setitem(sys.modules, "chumpy", None)
    return path, shapedirs, posedirs, j_reg


def test_chumpy_pickle_loads_through_stand_ins(chumpy_pickle):
    path, shapedirs, posedirs, j_reg = chumpy_pickle
    assert b"chumpy.ch" in path.read_bytes()
    with pytest.raises(ImportError):
        import chumpy  # noqa: F401
    data = load_pickle(path)
    assert isinstance(data["shapedirs"], ChumpyStandIn)
    np.testing.assert_array_equal(to_dense(data["shapedirs"]), shapedirs)
    np.testing.assert_array_equal(np.asarray(data["shapedirs"]), shapedirs)
    np.testing.assert_array_equal(to_dense(data["posedirs"]), posedirs.transpose(1, 0, 2))
    np.testing.assert_array_equal(to_dense(data["J_regressor"]), j_reg.toarray())
    assert data["bs_style"] == "lbs"


class _Exploit:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize(
    ("func", "name"),
    [(os.system, "system"), (eval, "eval"), (subprocess.check_output, "check_output")],
)
def test_code_execution_is_refused(tmp_path, func, name):
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if func is not subprocess.check_output else ["touch", str(marker)]
    if func is eval:
        arg = f"open({str(marker)!r}, 'w')"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Exploit(func, arg)}, protocol=2))
    with pytest.raises(SathmrError, match=f"forbidden global [\\w.]*\\.{name} "):
        load_pickle(path)
    assert not marker.exists()


def test_truncated_and_missing_pickles_give_clear_errors(tmp_path):
    path = tmp_path / "cut.pkl"
    full = pickle.dumps({"a": np.arange(1000.0)}, protocol=2)
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(SathmrError, match="truncated or not a valid pickle"):
        load_pickle(path)
    with pytest.raises(SathmrError, match="not found"):
        load_pickle(tmp_path / "absent.pkl")


def test_old_scipy_module_path_is_admitted(tmp_path):
    """MPI files name scipy.sparse.csc.csc_matrix (pre-1.8 layout), with the shape under '_shape'."""
    mat = sp.csc_matrix(np.arange(6.0).reshape(2, 3))
    raw = pickle.dumps(mat, protocol=2).replace(b"scipy.sparse._csc", b"scipy.sparse.csc")
    path = tmp_path / "old.pkl"
    path.write_bytes(raw)
    np.testing.assert_array_equal(to_dense(load_pickle(path)), mat.toarray())
