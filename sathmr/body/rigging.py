"""Blend shapes, joint regressors and mean pose for the synthetic mannequin.

Everything is a smooth function of rest positions and skinning weights, so shape and pose correctives
vary smoothly over the surface, and joints are regressed from vertices so they follow shape changes.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from sathmr.body.mannequin import NUM_JOINTS, PARENTS, REST_JOINTS

LEG = [1, 2, 4, 5, 7, 8, 10, 11]
ARM = [16, 17, 18, 19, 20, 21, 22, 23]
UPPER = [12, 13, 14, 15, *ARM]
# Where each leaf bone ends (head top, finger tips, toes), as offsets from its joint.
_LEAF_ENDS = {15: (0.0, 0.16, 0.0), 22: (0.09, 0.0, 0.0), 23: (-0.09, 0.0, 0.0),
              10: (0.0, -0.02, 0.08), 11: (0.0, -0.02, 0.08)}  # fmt: skip


def bone_segments(joints: np.ndarray = REST_JOINTS) -> tuple[np.ndarray, np.ndarray]:
    """Per joint, the segment from the joint to its children's mean (or to the leaf end)."""
    starts = joints.copy()
    ends = np.empty_like(joints)
    for j in range(NUM_JOINTS):
        children = np.flatnonzero(PARENTS == j)
        ends[j] = joints[children].mean(axis=0) if len(children) else joints[j] + np.asarray(_LEAF_ENDS[j])
    return starts, ends


def radial_offsets(verts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Vertex minus its skinning-weighted closest skeleton point: the local 'outward from the bone'."""
    starts, ends = bone_segments()
    seg = ends - starts
    t = np.einsum("vjk,jk->vj", verts[:, None, :] - starts[None], seg) / (seg**2).sum(axis=1)
    closest = starts[None] + np.clip(t, 0.0, 1.0)[..., None] * seg[None]
    return verts - np.einsum("vj,vjk->vk", weights, closest)


def shape_dirs(verts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Ten meaningful shape directions (V, 3, 10), in metres per unit beta."""
    x, y, z = verts.T
    radial = radial_offsets(verts, weights)
    legs, arms, upper = (weights[:, idx].sum(axis=1) for idx in (LEG, ARM, UPPER))
    front = np.clip(z / 0.1, 0.0, 1.0)
    trunk = weights[:, [0, 3, 6]].sum(axis=1)
    dirs = np.zeros((len(verts), 3, 10))
    dirs[:, :, 0] = verts * np.array([0.02, 0.055, 0.02])  # stature
    dirs[:, :, 1] = 0.12 * radial  # girth
    dirs[:, 1, 2] = -0.04 * legs * np.clip((-0.34 - y) / 0.85, 0.0, 1.0)  # leg length
    dirs[:, 0, 3] = 0.035 * np.sign(x) * arms * np.clip((np.abs(x) - 0.2) / 0.6, 0.0, 1.0)  # arm length
    dirs[:, 0, 4] = 0.025 * np.clip(x / 0.15, -1, 1) * weights[:, [13, 14, *ARM]].sum(axis=1)  # shoulders
    dirs[:, 0, 5] = 0.02 * np.clip(x / 0.12, -1, 1) * weights[:, [0, *LEG]].sum(axis=1)  # hips
    rise = np.clip((y + 0.24) / 0.44, 0.0, 1.0)
    dirs[:, 1, 6] = 0.04 * (rise * (1 - upper) + upper) * (1 - legs)  # torso length
    dirs[:, :, 7] = 0.15 * (verts - REST_JOINTS[15]) * weights[:, 15:16]  # head size
    dirs[:, 2, 8] = 0.04 * trunk * front * np.exp(-(((y + 0.05) / 0.12) ** 2))  # belly
    dirs[:, 2, 9] = 0.025 * front * weights[:, 9]  # chest
    dirs[:, :, 9] += 0.1 * radial * weights[:, [16, 17]].sum(axis=1, keepdims=True)  # upper-arm muscle
    return dirs


def pose_dirs(verts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pose correctives (V, 3, 207), linear in the 23 (R - I) matrices like SMPL's.

    Around each bending joint, flesh bulges on the inside of the bend (``r·(R-I)d`` picks the side the
    child bone swings toward) and keeps volume on twist/bend (the diagonal terms).
    """
    radial = radial_offsets(verts, weights)
    unit = radial / np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-9)
    starts, ends = bone_segments()
    dirs = np.zeros((len(verts), 3, 9 * (NUM_JOINTS - 1)))
    for k in range(1, NUM_JOINTS):
        blend = np.minimum(1.0, 4.0 * weights[:, k] * weights[:, PARENTS[k]])
        bone = (ends[k] - starts[k]) / np.linalg.norm(ends[k] - starts[k])
        for r in range(3):
            for c in range(3):
                coeff = 0.15 * unit[:, r] * bone[c] - (0.1 if r == c else 0.0)
                dirs[:, :, 9 * (k - 1) + 3 * r + c] = (blend * coeff)[:, None] * radial
    return dirs


def joint_regressor(verts: np.ndarray, weights: np.ndarray, per_octant: int = 6) -> np.ndarray:
    """(24, V) convex weights over nearby vertices whose weighted mean is each rest joint centre."""
    owner = weights.argmax(axis=1)
    reg = np.zeros((NUM_JOINTS, len(verts)))
    for j in range(NUM_JOINTS):
        family = [j, PARENTS[j], *np.flatnonzero(PARENTS == j)] if j else [0, *np.flatnonzero(PARENTS == 0)]
        cand = _surrounding(verts, np.flatnonzero(np.isin(owner, family)), REST_JOINTS[j], per_octant)
        n = len(cand)
        a = np.vstack([10.0 * verts[cand].T, np.full((1, n), 100.0), np.sqrt(1e-3) * np.eye(n)])
        b = np.concatenate([10.0 * REST_JOINTS[j], [100.0], np.full(n, np.sqrt(1e-3) / n)])
        w, _ = nnls(a, b)
        reg[j, cand] = w / w.sum()
    err = np.linalg.norm(reg @ verts - REST_JOINTS, axis=1).max()
    if err > 0.002:
        raise AssertionError(f"synthetic joint regressor misses a joint centre by {err * 1000:.1f} mm")
    return reg


def _surrounding(verts: np.ndarray, cand: np.ndarray, centre: np.ndarray, per_octant: int) -> np.ndarray:
    """The nearest candidates in each of the 8 direction octants around ``centre``, so they enclose it."""
    offset = verts[cand] - centre
    octant = (offset > 0) @ np.array([1, 2, 4])
    dist = np.linalg.norm(offset, axis=1)
    picked = [cand[octant == o][np.argsort(dist[octant == o], kind="stable")[:per_octant]] for o in range(8)]
    return np.sort(np.concatenate(picked))


def h36m_regressor(smpl_reg: np.ndarray, verts: np.ndarray, nose: int) -> np.ndarray:
    """(17, V) Human3.6M joints from SMPL joints and vertices; rows sum to 1 like the official file."""
    top = np.argsort(np.linalg.norm(verts - (REST_JOINTS[15] + [0, 0.25, 0]), axis=1), kind="stable")[:6]
    head_top = np.zeros(len(verts))
    head_top[top] = 1.0 / len(top)
    nose_row = np.zeros(len(verts))
    nose_row[nose] = 1.0
    j = smpl_reg
    rows = [0.5 * (j[1] + j[2]), j[2], j[5], j[8], j[1], j[4], j[7], 0.5 * (j[3] + j[6]), j[12],
            0.5 * (j[15] + nose_row), head_top, j[16], j[18], j[20], j[17], j[19], j[21]]  # fmt: skip
    return np.stack(rows)


def body_vertex_ids(weights: np.ndarray) -> np.ndarray:
    """Vertex subset for AGORA-style MVE: everything but the head and the hands."""
    return np.flatnonzero(~np.isin(weights.argmax(axis=1), [15, 22, 23])).astype(np.int64)


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues for a single 3-vector (numpy, float64)."""
    angle = np.linalg.norm(aa)
    if angle < 1e-12:
        return np.eye(3)
    kx, ky, kz = aa / angle
    k = np.array([[0, -kz, ky], [kz, 0, -kx], [-ky, kx, 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def matrix_to_6d(rot: np.ndarray) -> np.ndarray:
    """SPIN 6D: the first two columns read row-major, [R00, R01, R10, R11, R20, R21]."""
    return rot[:, :2].reshape(-1)


def mean_pose_6d() -> np.ndarray:
    """SPIN-like mean pose: global rotation of pi about x, body near rest with a slight natural bend."""
    aa = np.zeros((NUM_JOINTS, 3))
    aa[0] = (np.pi, 0.0, 0.0)
    aa[1] = aa[2] = (-0.12, 0.0, 0.0)  # hips flexed forward
    aa[4] = aa[5] = (0.2, 0.0, 0.0)  # knees bent
    aa[16] = (0.0, 0.0, -0.35)  # left arm lowered
    aa[17] = (0.0, 0.0, 0.35)  # right arm lowered
    aa[18] = (0.0, -0.25, 0.0)  # elbows bent forward
    aa[19] = (0.0, 0.25, 0.0)
    return np.concatenate([matrix_to_6d(axis_angle_to_matrix(a)) for a in aa]).astype(np.float32)
