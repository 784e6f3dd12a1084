"""Small camera and SMPL-pose helpers shared by the GT pipeline and the synthetic generator."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

# Appendix A: mirrored SMPL joint pairs; every other joint of the 24 maps to itself.
FLIP_PAIRS = ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21), (22, 23))


def _flip_perm() -> np.ndarray:
    perm = np.arange(24)
    for a, b in FLIP_PAIRS:
        perm[a], perm[b] = b, a
    return perm


FLIP_PERM = _flip_perm()


def flip_pose(pose: np.ndarray) -> np.ndarray:
    """Mirror (n,72) axis-angle SMPL poses across the camera's x axis: swap left/right joints, negate y, z."""
    p = pose.reshape(len(pose), 24, 3)[:, FLIP_PERM].copy()
    p[..., 1:] *= -1.0
    return p.reshape(len(pose), 72)


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    return Rotation.from_rotvec(np.asarray(rotvec, dtype=np.float64).reshape(-1, 3)).as_matrix()


def matrix_to_rotvec(mat: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(np.asarray(mat, dtype=np.float64).reshape(-1, 3, 3)).as_rotvec()


def rotation_2d(angle_deg: float) -> np.ndarray:
    """Counter-clockwise (math convention) 2D rotation; in y-down pixels it is OpenCV's ``-angle``."""
    a = np.deg2rad(angle_deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def embed_3x3(rot2: np.ndarray) -> np.ndarray:
    """A 2D image-plane rotation as a camera roll about the optical axis."""
    out = np.eye(3)
    out[:2, :2] = rot2
    return out


def project(points: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Pinhole projection of (n,P,3) camera-frame points with (n,3,3) or (3,3) intrinsics → (n,P,2) px."""
    k = np.asarray(intrinsics, dtype=np.float64)
    if k.ndim == 2:
        k = np.broadcast_to(k, (len(points), 3, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = points[..., :2] / points[..., 2:3]
    uv = xy * np.stack([k[:, 0, 0], k[:, 1, 1]], -1)[:, None] + k[:, None, :2, 2]
    return uv
