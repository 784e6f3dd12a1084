"""Per-image SMPL parameter files (``<name>_smpl.npz``) that smplx takes as they are.

The JSON per image holds the same numbers, but as nested lists with a ``transl`` whose meaning is easy
to get wrong. This file is arrays in the shapes ``smplx.SMPL.forward`` expects plus the camera that
places them in the photo, and a ``convention`` string so the file explains itself:

    p = np.load("thresh_0.3/photo_smpl.npz")
    smpl = smplx.SMPL(model_path="weights/smpl_data/smpl")
    verts = smpl(**{k: torch.from_numpy(p[k]) for k in SMPL_KEYS}).vertices   # = our vertices
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sathmr.outputs.writers import write_npz
from sathmr.runtime.postprocess import Person

SMPL_KEYS = ("global_orient", "body_pose", "betas", "transl")
CONVENTION = (
    "SMPL in the smplx convention, one row per person sorted by score: "
    "smplx.SMPL(model_path=...)(global_orient=, body_pose=, betas=, transl=).vertices gives the meshes in metres "
    "in the model's camera frame (OpenCV: x right, y down, z forward); transl moves the SMPL origin, not the "
    "pelvis. Pixels of the resized image (resized_hw): camera_intrinsics @ X, divided by z; divide those by "
    "resize_rate for the original image (image_hw). boxes: x0 y0 x1 y1 in original-image pixels. "
    "The .glb/.obj mesh files use the y-up, -z-forward glTF frame: (x, y, z) -> (x, -y, -z)."
)


def smpl_arrays(people: Sequence[Person], K: np.ndarray, image_hw: tuple[int, int],
                resized_hw: tuple[int, int], resize_rate: float) -> dict[str, np.ndarray]:
    """The arrays of one image's ``_smpl.npz`` (N people; N = 0 gives empty (0, k) arrays)."""
    n = len(people)
    f32 = np.float32
    pose = np.array([p.pose for p in people], dtype=f32).reshape(n, 24, 3)
    return {
        "global_orient": pose[:, 0],
        "body_pose": pose[:, 1:].reshape(n, 69),
        "betas": np.array([p.betas for p in people], dtype=f32).reshape(n, 10),
        "transl": np.array([p.transl for p in people], dtype=f32).reshape(n, 3),
        "scores": np.array([p.score for p in people], dtype=f32),
        "boxes": np.array([p.box for p in people], dtype=f32).reshape(n, 4),
        "camera_intrinsics": np.asarray(K, dtype=f32).reshape(3, 3),
        "image_hw": np.array(image_hw, dtype=np.int64),
        "resized_hw": np.array(resized_hw, dtype=np.int64),
        "resize_rate": np.float64(resize_rate),
        "convention": np.array(CONVENTION),
    }


def write_smpl_params(path: Path, people: Sequence[Person], K: np.ndarray, image_hw: tuple[int, int],
                      resized_hw: tuple[int, int], resize_rate: float) -> None:
    """Write :func:`smpl_arrays` atomically (readable with ``np.load`` and no pickle)."""
    write_npz(Path(path), smpl_arrays(people, K, image_hw, resized_hw, resize_rate))
