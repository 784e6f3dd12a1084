"""The SMPL asset folder: file names, where to get them, and strict reading/validation of each file.

Every reader raises a one-line ``SathmrError`` that says which file, where it was looked for and where
the real one comes from, so a user never sees a traceback for a missing or broken download.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sathmr.common.errors import SathmrError

GENDERS = ("neutral", "male", "female")
MEAN_PARAMS = "smpl_mean_params.npz"
H36M_REGRESSOR = "J_regressor_h36m_correct.npy"
BODY_VERTS = "body_verts_smpl.npy"
EXTRA_IDS_KEY = "sathmr_extra_joint_vertex_ids"
SYNTHETIC_MARKER = "README_SYNTHETIC.txt"
SIZES = ("full", "tiny")   # of the synthetic stand-in (sathmr.body.synthetic): the SMPL topology, or a few hundred vertices
NUM_JOINTS = 24
NUM_POSE_BASIS = 207

SMPL_SOURCE = "the real SMPL model comes from https://smpl.is.tue.mpg.de (free, licence-gated registration)"
SIDE_SOURCE = (
    "the SAT-HMR side files come with the official release (see the weights/ instructions of "
    "https://github.com/ChiSu001/SAT-HMR)"
)
STAND_IN = "or run `sathmr assets synthetic -o DIR` for a licence-free stand-in"

# Every key the MPI SMPL pickle carries; the loader needs the first seven.
REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "f", "kintree_table")


def default_smpl_dir() -> Path:
    """``$SATHMR_SMPL_DIR`` if set, else ``./weights/smpl_data/smpl`` (the official layout)."""
    env = os.environ.get("SATHMR_SMPL_DIR")
    return Path(env) if env else Path("weights") / "smpl_data" / "smpl"


def model_stem(gender: str) -> str:
    gender = gender.lower()
    if gender not in GENDERS:
        raise SathmrError(f"unknown SMPL gender {gender!r}: choose one of {', '.join(GENDERS)}")
    return f"SMPL_{gender.upper()}"


def find_model_file(smpl_dir: str | Path, gender: str = "neutral") -> Path:
    """``SMPL_<GENDER>.pkl`` (preferred) or ``.npz`` in ``smpl_dir``; a direct file path is accepted too."""
    smpl_dir = Path(smpl_dir)
    if smpl_dir.is_file():
        return smpl_dir
    stem = model_stem(gender)
    for ext in (".pkl", ".npz"):
        if (smpl_dir / f"{stem}{ext}").is_file():
            return smpl_dir / f"{stem}{ext}"
    raise SathmrError(f"SMPL model {stem}.pkl (or .npz) not found in {smpl_dir}: {SMPL_SOURCE}, {STAND_IN}")


def _fail(path: Path, why: str, source: str = SMPL_SOURCE) -> SathmrError:
    return SathmrError(f"malformed {path.name} in {path.parent}: {why}; {source}, {STAND_IN}")


def load_npz(path: Path, source: str = SMPL_SOURCE) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` without ever unpickling (``allow_pickle=False``)."""
    if not path.is_file():
        raise SathmrError(f"{path.name} not found in {path.parent}: {source}, {STAND_IN}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise _fail(path, f"truncated or not an npz archive ({exc})", source) from exc


def load_npy(path: Path, source: str = SIDE_SOURCE) -> np.ndarray:
    if not path.is_file():
        raise SathmrError(f"{path.name} not found in {path.parent}: {source}, {STAND_IN}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _fail(path, f"truncated or not an npy file ({exc})", source) from exc


def read_model_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Dense numpy arrays of an SMPL model file (``.pkl`` via the restricted unpickler, or ``.npz``), validated."""
    from sathmr.body.pickle_io import load_pickle, to_dense  # scipy: only when a model file is read

    path = Path(path)
    if not path.is_file():
        raise SathmrError(f"SMPL model {path.name} not found in {path.parent}: {SMPL_SOURCE}, {STAND_IN}")
    if path.suffix == ".npz":
        raw = load_npz(path)
    else:
        try:
            raw = load_pickle(path)
        except SathmrError as exc:
            raise SathmrError(f"{exc}; {SMPL_SOURCE}, {STAND_IN}") from exc
    if not isinstance(raw, dict):
        raise _fail(path, f"expected a dict of arrays, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise _fail(path, f"missing key(s) {', '.join(missing)}")
    try:
        arrays = {k: to_dense(raw[k]) for k in REQUIRED_KEYS}
        if EXTRA_IDS_KEY in raw:
            arrays[EXTRA_IDS_KEY] = to_dense(raw[EXTRA_IDS_KEY])
    except SathmrError as exc:
        raise _fail(path, str(exc)) from exc
    except Exception as exc:  # a corrupt sparse/chumpy payload
        raise _fail(path, f"cannot read arrays ({type(exc).__name__}: {exc})") from exc
    problem = validate_model_arrays(arrays)
    if problem:
        raise _fail(path, problem)
    return arrays


def validate_model_arrays(a: dict[str, np.ndarray]) -> str | None:
    """The first structural problem of an SMPL array set, or None when it is usable."""
    for key, arr in a.items():
        if arr.dtype.kind not in "biuf":
            return f"{key} has non-numeric dtype {arr.dtype}"
    v = a["v_template"]
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 4:
        return f"v_template has shape {v.shape}, expected (V, 3)"
    nv = v.shape[0]
    expected = {
        "shapedirs": (nv, 3, None),
        "posedirs": (nv, 3, NUM_POSE_BASIS),
        "J_regressor": (NUM_JOINTS, nv),
        "weights": (nv, NUM_JOINTS),
        "f": (None, 3),
        "kintree_table": (2, NUM_JOINTS),
    }
    for key, shape in expected.items():
        got = a[key].shape
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
            return f"{key} has shape {got}, expected {want}"
    if a["shapedirs"].shape[2] < 10:
        return f"shapedirs has {a['shapedirs'].shape[2]} components, at least 10 are needed"
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        if not np.all(np.isfinite(a[key])):
            return f"{key} contains NaN or infinite values"
    faces = a["f"]
    if faces.dtype.kind == "f" or faces.size == 0 or faces.min() < 0 or faces.max() >= nv:
        return f"f must hold integer vertex indices in [0, {nv})"
    parents = a["kintree_table"][0, 1:].astype(np.int64)
    if np.any(parents < 0) or np.any(parents >= np.arange(1, NUM_JOINTS)):
        return "kintree_table parents must precede their children"
    extra = a.get(EXTRA_IDS_KEY)
    if extra is not None and (extra.shape != (21,) or extra.dtype.kind not in "iu" or extra.max() >= nv):
        return f"{EXTRA_IDS_KEY} must be 21 integer vertex ids below {nv}"
    return None


def load_mean_params(smpl_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(mean_pose (144,), mean_shape (10,))`` as float32 from ``smpl_mean_params.npz``.

    float32 matters: the official float64 npz promotes the pose path to float64 and breaks SMPL's matmuls.
    """
    path = Path(smpl_dir if smpl_dir is not None else default_smpl_dir()) / MEAN_PARAMS
    data = load_npz(path, source=SIDE_SOURCE)
    for key, size in (("pose", 144), ("shape", 10)):
        if key not in data:
            raise _fail(path, f"missing key {key!r}", SIDE_SOURCE)
        if data[key].size != size or data[key].dtype.kind != "f" or not np.all(np.isfinite(data[key])):
            raise _fail(path, f"{key!r} must hold {size} finite floats, got {data[key].shape}", SIDE_SOURCE)
    return data["pose"].reshape(144).astype(np.float32), data["shape"].reshape(10).astype(np.float32)


def load_h36m_regressor(smpl_dir: str | Path, num_verts: int) -> np.ndarray:
    path = Path(smpl_dir) / H36M_REGRESSOR
    reg = load_npy(path)
    if reg.shape != (17, num_verts) or reg.dtype.kind != "f" or not np.all(np.isfinite(reg)):
        raise _fail(path, f"expected a finite (17, {num_verts}) float array, got {reg.shape} {reg.dtype}", SIDE_SOURCE)
    return reg


def load_body_verts(smpl_dir: str | Path, num_verts: int) -> np.ndarray:
    path = Path(smpl_dir) / BODY_VERTS
    ids = load_npy(path)
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or ids.size == 0 or ids.max() >= num_verts:
        raise _fail(path, f"expected 1-D integer vertex ids below {num_verts}, got {ids.shape} {ids.dtype}",
                    SIDE_SOURCE)  # fmt: skip
    return ids.astype(np.int64)


@dataclass
class FileReport:
    """One row of ``sathmr assets check``."""

    name: str
    status: str  # "OK", "missing" or "malformed"
    detail: str
    required: bool


def check_folder(smpl_dir: str | Path) -> list[FileReport]:
    """Inspect every asset the pipeline uses; never raises for a bad file, reports it instead."""
    smpl_dir = Path(smpl_dir)
    rows: list[FileReport] = []
    num_verts: int | None = None
    for gender in GENDERS:
        stem = model_stem(gender)
        required = gender == "neutral"
        use = "inference" if required else "3DPW ground truth only"
        try:
            path = find_model_file(smpl_dir, gender)
        except SathmrError:
            rows.append(FileReport(f"{stem}.pkl/.npz", "missing", f"needed for {use}", required))
            continue
        try:
            arrays = read_model_arrays(path)
        except SathmrError as exc:
            rows.append(FileReport(path.name, "malformed", _why(exc), required))
            continue
        nv = arrays["v_template"].shape[0]
        num_verts = nv if required else num_verts
        detail = f"{nv} vertices, {arrays['f'].shape[0]} faces, {arrays['shapedirs'].shape[2]} betas"
        rows.append(FileReport(path.name, "OK", detail, required))
    rows.append(_check(MEAN_PARAMS, smpl_dir, True, lambda: load_mean_params(smpl_dir), "pose (144,), shape (10,)"))
    if num_verts is None:
        note = "not checked: needs a valid neutral model"
        rows += [FileReport(n, "missing" if not (smpl_dir / n).is_file() else "unchecked", note, False)
                 for n in (H36M_REGRESSOR, BODY_VERTS)]  # fmt: skip
    else:
        rows.append(_check(H36M_REGRESSOR, smpl_dir, False, lambda: load_h36m_regressor(smpl_dir, num_verts),
                           "(17, V) for 3DPW evaluation"))  # fmt: skip
        rows.append(_check(BODY_VERTS, smpl_dir, False, lambda: load_body_verts(smpl_dir, num_verts),
                           "vertex subset for AGORA/BEDLAM MVE"))  # fmt: skip
    return rows


def _check(name: str, smpl_dir: Path, required: bool, load: Callable[[], object], ok_detail: str) -> FileReport:
    if not (smpl_dir / name).is_file():
        return FileReport(name, "missing", "", required)
    try:
        load()
    except SathmrError as exc:
        return FileReport(name, "malformed", _why(exc), required)
    return FileReport(name, "OK", ok_detail, required)


def _why(exc: SathmrError) -> str:
    """The reason part of a loader error, without the where-to-download tail."""
    return str(exc).split("; ")[0]
