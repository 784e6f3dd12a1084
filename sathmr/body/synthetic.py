"""A deterministic, licence-free SMPL-format asset set (the mannequin) with the official file names.

Used where the real, licence-gated SMPL files are unavailable: tests, CI, demos. The files have the same
keys, shapes and dtypes as the MPI release, so every loader that reads SMPL reads these too; the full size
even has SMPL's 6890 vertices / 13776 faces and puts the 21 smplx vertex joints at the official ids.
Output is byte-for-byte reproducible: no randomness, fixed pickle protocol, fixed zip timestamps.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from sathmr.body.assets import BODY_VERTS, EXTRA_IDS_KEY, H36M_REGRESSOR, MEAN_PARAMS, SIZES, SYNTHETIC_MARKER
from sathmr.body.mannequin import PARENTS, Mannequin, build_mannequin
from sathmr.body.rigging import (
    body_vertex_ids,
    h36m_regressor,
    joint_regressor,
    mean_pose_6d,
    pose_dirs,
    shape_dirs,
)
from sathmr.body.smpl import SMPL_EXTRA_VERTEX_IDS
from sathmr.common.errors import SathmrError

FULL_VERTS = 6890
PICKLE_PROTOCOL = 2  # what the MPI files use
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# Betas that turn the neutral mannequin into the gendered ones (stature, girth, -, -, shoulders, hips, ...).
GENDER_BETAS = {
    "male": np.array([0.8, 0.3, 0.2, 0.2, 1.2, -0.6, 0.3, 0.0, 0.0, 0.8]),
    "female": np.array([-0.9, -0.2, 0.0, -0.3, -1.0, 1.2, -0.3, -0.2, 0.0, 0.0]),
}


def _reorder(m: Mannequin, ids: np.ndarray) -> Mannequin:
    """Permute vertices so that the mannequin's 21 vertex joints land at the official smplx ids."""
    order = np.full(len(m.vertices), -1, dtype=np.int64)
    order[ids] = m.extra_joint_ids
    rest = np.setdiff1d(np.arange(len(m.vertices)), m.extra_joint_ids)  # sorted, stable
    order[order < 0] = rest
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return Mannequin(m.vertices[order], inverse[m.faces], m.weights[order], ids.copy())


def build_model_arrays(size: str) -> dict[str, object]:
    """Every array of the synthetic set, keyed by file then by key."""
    if size not in SIZES:
        raise SathmrError(f"unknown synthetic size {size!r}: choose one of {', '.join(SIZES)}")
    if size == "full":
        m = _reorder(build_mannequin(levels=2, coarse=False, target_verts=FULL_VERTS), SMPL_EXTRA_VERTEX_IDS)
    else:
        m = build_mannequin(levels=0, coarse=True)
    v, w = m.vertices, m.weights
    reg = joint_regressor(v, w)
    sdirs = shape_dirs(v, w)
    kintree = np.stack([PARENTS, np.arange(len(PARENTS))]).astype(np.int64)
    kintree[0, 0] = 4294967295  # the MPI files store the root's parent as uint32(-1)
    mirror_pos = v * np.array([-1.0, 1.0, 1.0])
    neutral = {
        "J_regressor_prior": sp.csc_matrix(reg),
        "f": m.faces.astype(np.uint32),
        "J_regressor": sp.csc_matrix(reg),
        "kintree_table": kintree,
        "J": reg @ v,
        "weights_prior": w.copy(),
        "weights": w,
        "vert_sym_idxs": cKDTree(v).query(mirror_pos)[1].astype(np.int64),
        "posedirs": pose_dirs(v, w),
        "pose_training_info": {"source": "sathmr synthetic mannequin (not SMPL)"},
        "bs_style": "lbs",
        "v_template": v,
        "shapedirs": sdirs,
        "bs_type": "lrotmin",
    }
    if size == "tiny":
        neutral[EXTRA_IDS_KEY] = m.extra_joint_ids.astype(np.int64)
    models = {"neutral": neutral}
    for gender, betas in GENDER_BETAS.items():
        shaped = v + sdirs @ betas
        models[gender] = {**neutral, "v_template": shaped, "J": reg @ shaped}
    pose = mean_pose_6d()
    return {
        "models": models,
        "mean_params": {"pose": pose, "shape": np.zeros(10, dtype=np.float32),
                        "cam": np.array([0.9, 0.0, 0.0], dtype=np.float32)},  # fmt: skip
        "h36m": h36m_regressor(reg, v, int(m.extra_joint_ids[0])),
        "body_verts": body_vertex_ids(w),
        "num_verts": len(v),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with a fixed timestamp and permissions, so the bytes never change."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def _dense(model: dict[str, object]) -> dict[str, np.ndarray]:
    """The npz flavour of a model: the same array keys, sparse made dense, non-array entries dropped."""
    out = {}
    for key, val in model.items():
        if sp.issparse(val):
            out[key] = val.toarray()
        elif isinstance(val, np.ndarray):
            out[key] = val
    return out


OUTPUT_NAMES = ("SMPL_NEUTRAL.pkl", "SMPL_MALE.pkl", "SMPL_FEMALE.pkl", "SMPL_NEUTRAL.npz", MEAN_PARAMS,
                H36M_REGRESSOR, BODY_VERTS)  # fmt: skip


def generate_synthetic(out_dir: str | Path, size: str = "full", *, force: bool = False) -> list[Path]:
    """Write the synthetic SMPL set into ``out_dir`` (created if needed); returns the written paths.

    Refuses to overwrite files that did not come from an earlier synthetic run (they may be the real,
    licence-gated SMPL files) unless ``force``.
    """
    out = Path(out_dir)
    existing = [n for n in OUTPUT_NAMES if (out / n).exists()]
    if existing and not force and not (out / SYNTHETIC_MARKER).is_file():
        raise SathmrError(
            f"{out} already holds {', '.join(existing)} (not a synthetic set); refusing to overwrite them: "
            "choose another folder or pass --force"
        )
    data = build_model_arrays(size)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SathmrError(f"cannot create output folder {out}: {exc.strerror}") from exc
    written = []

    def emit(name: str, writer) -> None:
        path = out / name
        try:
            writer(path)
        except OSError as exc:
            raise SathmrError(f"cannot write {path}: {exc.strerror}") from exc
        written.append(path)

    for gender, model in data["models"].items():
        emit(f"SMPL_{gender.upper()}.pkl", lambda p, m=model: p.write_bytes(pickle.dumps(m, PICKLE_PROTOCOL)))
    emit("SMPL_NEUTRAL.npz", lambda p: write_npz(p, _dense(data["models"]["neutral"])))
    emit(MEAN_PARAMS, lambda p: write_npz(p, data["mean_params"]))
    emit(H36M_REGRESSOR, lambda p: np.save(p, data["h36m"]))
    emit(BODY_VERTS, lambda p: np.save(p, data["body_verts"]))
    emit(SYNTHETIC_MARKER, lambda p: p.write_text(_marker_text(size, data["num_verts"])))
    return written


def _marker_text(size: str, num_verts: int) -> str:
    return (
        f"Synthetic SMPL-format mannequin ({size}, {num_verts} vertices), written by `sathmr assets synthetic`.\n"
        "It is NOT the SMPL body model: shapes, poses and metrics computed with it are not comparable to\n"
        "published results. Get the real model from https://smpl.is.tue.mpg.de and the SAT-HMR side files\n"
        "from the official release, and put them in weights/smpl_data/smpl/.\n"
    )
