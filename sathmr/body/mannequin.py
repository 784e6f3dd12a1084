"""Geometry and skinning of the synthetic SMPL-format mannequin (a licence-free stand-in for SMPL).

The body is box-modelled as one closed quad cage: a torso tube whose side, top and bottom faces are
extruded into arms, neck/head and legs (feet are extruded forward from the ankles), following the real
SMPL kinematic tree in its rest T-pose (Y up, facing +Z, subject's left = +X, ~1.75 m tall). Each cage
ring carries a skinning-weight mixture; Catmull-Clark subdivision carries positions and weights to the
fine mesh with the same sparse matrix, so weights are convex and smooth across joints by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from sathmr.body.quadmesh import (
    QuadCage,
    catmull_clark,
    limit_projection,
    split_longest_edges,
    triangulate,
)

JOINT_NAMES = (
    "pelvis", "L_hip", "R_hip", "spine1", "L_knee", "R_knee", "spine2", "L_ankle", "R_ankle", "spine3",
    "L_foot", "R_foot", "neck", "L_collar", "R_collar", "head", "L_shoulder", "R_shoulder", "L_elbow",
    "R_elbow", "L_wrist", "R_wrist", "L_hand", "R_hand",
)  # fmt: skip
PARENTS = np.array([-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21])
NUM_JOINTS = 24
# Left/right partner of every joint (centre-line joints map to themselves).
MIRROR = np.array([0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22])

# Rest-pose joint centres (metres) for the left side and the centre line; the right side mirrors x.
_LEFT_JOINTS = {
    0: (0.0, -0.24, 0.0), 1: (0.075, -0.34, 0.0), 3: (0.0, -0.12, -0.01), 4: (0.10, -0.71, 0.01),
    6: (0.0, 0.0, 0.0), 7: (0.095, -1.09, -0.03), 9: (0.0, 0.08, 0.01), 10: (0.105, -1.165, 0.10),
    12: (0.0, 0.29, -0.01), 13: (0.08, 0.21, -0.01), 15: (0.0, 0.40, 0.02), 16: (0.20, 0.225, -0.015),
    18: (0.44, 0.21, -0.03), 20: (0.69, 0.215, -0.03), 22: (0.785, 0.21, -0.03),
}  # fmt: skip


def _rest_joints() -> np.ndarray:
    joints = np.zeros((NUM_JOINTS, 3))
    for j, pos in _LEFT_JOINTS.items():
        joints[j] = pos
        joints[MIRROR[j]] = (-pos[0], pos[1], pos[2])
    return joints


REST_JOINTS = _rest_joints()

# Torso key rings, bottom to top: y, inner and outer column half-x, front z, back z,
# weights of the inner columns, weights of the outer columns (left side; right mirrors), sub-steps.
_TORSO = (
    (-0.37, 0.035, 0.165, 0.08, -0.11, {0: 0.6, 1: 0.4}, {0: 0.3, 1: 0.7}, 0),
    (-0.25, 0.07, 0.175, 0.10, -0.13, {0: 1.0}, {0: 0.7, 1: 0.3}, 2),
    (-0.10, 0.06, 0.145, 0.10, -0.09, {3: 0.7, 0: 0.3}, {3: 0.7, 0: 0.3}, 3),
    (0.03, 0.065, 0.15, 0.11, -0.09, {6: 0.8, 3: 0.2}, {6: 0.8, 3: 0.2}, 3),
    (0.14, 0.07, 0.17, 0.12, -0.10, {9: 0.8, 6: 0.2}, {9: 0.8, 6: 0.2}, 3),
    (0.17, 0.07, 0.175, 0.11, -0.10, {9: 1.0}, {9: 0.4, 13: 0.3, 16: 0.3}, 1),
    (0.28, 0.055, 0.18, 0.06, -0.08, {12: 0.5, 9: 0.5}, {13: 0.6, 16: 0.4}, 3),
)  # fmt: skip

# Limb key rings: centre, half extents (0 along the extrusion axis), weights, sub-steps from previous ring.
_NECK_HEAD = (
    ((0.0, 0.33, -0.005), (0.05, 0, 0.05), {12: 1.0}, 2),
    ((0.0, 0.39, 0.025), (0.075, 0, 0.09), {12: 0.3, 15: 0.7}, 3),
    ((0.0, 0.46, 0.025), (0.085, 0, 0.10), {15: 1.0}, 3),
    ((0.0, 0.53, 0.015), (0.08, 0, 0.095), {15: 1.0}, 3),
    ((0.0, 0.58, 0.01), (0.05, 0, 0.06), {15: 1.0}, 2),
)
_LEFT_ARM = (
    ((0.23, 0.225, -0.01), (0, 0.055, 0.06), {16: 0.7, 13: 0.3}, 1),
    ((0.32, 0.22, -0.02), (0, 0.052, 0.054), {16: 1.0}, 2),
    ((0.44, 0.21, -0.03), (0, 0.04, 0.042), {16: 0.5, 18: 0.5}, 3),
    ((0.55, 0.213, -0.03), (0, 0.038, 0.042), {18: 1.0}, 2),
    ((0.69, 0.215, -0.03), (0, 0.022, 0.034), {18: 0.5, 20: 0.5}, 3),
    ((0.75, 0.213, -0.03), (0, 0.02, 0.048), {20: 1.0}, 1),
    ((0.80, 0.21, -0.03), (0, 0.016, 0.046), {20: 0.5, 22: 0.5}, 1),
    ((0.88, 0.205, -0.03), (0, 0.012, 0.04), {22: 1.0}, 2),
)
_LEFT_LEG = (
    ((0.085, -0.44, 0.0), (0.082, 0, 0.09), {1: 1.0}, 1),
    ((0.092, -0.57, 0.005), (0.07, 0, 0.076), {1: 1.0}, 3),
    ((0.10, -0.71, 0.01), (0.055, 0, 0.058), {1: 0.5, 4: 0.5}, 2),
    ((0.10, -0.85, -0.01), (0.055, 0, 0.064), {4: 1.0}, 3),
    ((0.095, -1.05, -0.03), (0.038, 0, 0.043), {4: 0.5, 7: 0.5}, 2),
    ((0.095, -1.20, -0.03), (0.04, 0, 0.055), {7: 1.0}, 1),
)
_LEFT_FOOT = (
    ((0.10, -1.155, 0.07), (0.045, 0.045, 0), {7: 0.5, 10: 0.5}, 1),
    ((0.105, -1.18, 0.15), (0.045, 0.025, 0), {10: 1.0}, 3),
)

# Where the 21 smplx vertex joints sit: (target point just off the surface, joints that own the vertex).
# Order: nose, r/l eye, r/l ear, left big/small toe + heel, right ditto, left then right finger tips
# (thumb, index, middle, ring, pinky). Hands are palms down in the T-pose, so the thumb side is +z.
_LEFT_TIPS = ((0.80, 0.2, 0.07), (0.88, 0.205, 0.025), (0.88, 0.205, 0.008), (0.88, 0.205, -0.008),
              (0.88, 0.205, -0.025))  # fmt: skip
_EXTRA_TARGETS = (
    ((0.0, 0.455, 0.15), (15,)),
    ((-0.035, 0.49, 0.12), (15,)), ((0.035, 0.49, 0.12), (15,)),
    ((-0.1, 0.46, 0.02), (15,)), ((0.1, 0.46, 0.02), (15,)),
    ((0.075, -1.19, 0.18), (10,)), ((0.14, -1.19, 0.16), (10,)), ((0.095, -1.22, -0.1), (7,)),
    ((-0.075, -1.19, 0.18), (11,)), ((-0.14, -1.19, 0.16), (11,)), ((-0.095, -1.22, -0.1), (8,)),
    *(((x, y, z), (20, 22)) for x, y, z in _LEFT_TIPS),
    *(((-x, y, z), (21, 23)) for x, y, z in _LEFT_TIPS),
)  # fmt: skip


@dataclass
class Mannequin:
    """The fine mesh: rest vertices, outward triangles, skinning weights and the 21 vertex-joint ids."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    weights: np.ndarray  # (V, 24) float64, rows sum to 1
    extra_joint_ids: np.ndarray  # (21,) int64


def _weights(mix: dict[int, float], mirror: bool = False) -> np.ndarray:
    w = np.zeros(NUM_JOINTS)
    for j, val in mix.items():
        w[MIRROR[j] if mirror else j] += val
    return w / w.sum()


def _steps(steps: int, coarse: bool) -> int:
    return max(1, steps // 2) if coarse else steps


def _lerp_steps(start: tuple, end: tuple, steps: int) -> list[tuple]:
    """``steps`` rings from just after ``start`` up to and including ``end`` (tuples of arrays)."""
    return [tuple((1 - t) * a + t * b for a, b in zip(start, end)) for t in np.arange(1, steps + 1) / steps]


def _torso(cage: QuadCage, coarse: bool) -> list[list[int]]:
    """The torso tube: 8 vertices per ring (4 front, 4 back), capped top and bottom with 3 quads each."""
    keys = [
        (np.array(k[:5], dtype=float), _weights(k[5]), _weights(k[6]), _weights(k[5], True), _weights(k[6], True))
        for k in _TORSO
    ]
    specs = [keys[0]]
    for key, prev, raw in zip(keys[1:], keys[:-1], _TORSO[1:]):
        specs += _lerp_steps(prev, key, _steps(raw[7], coarse))
    rings = []
    for (y, x1, x2, zf, zb), w_in, w_out, w_in_r, w_out_r in specs:
        cols = ((-x2, zf, w_out_r), (-x1, zf, w_in_r), (x1, zf, w_in), (x2, zf, w_out),
                (x2, zb, w_out), (x1, zb, w_in), (-x1, zb, w_in_r), (-x2, zb, w_out_r))  # fmt: skip
        rings.append([cage.add_vertex((x, y, z), w) for x, z, w in cols])
    for lo, hi in zip(rings[:-1], rings[1:]):
        for i in range(8):
            cage.add_quad(lo[i], lo[(i + 1) % 8], hi[(i + 1) % 8], hi[i])
    top, bot = rings[-1], rings[0]
    for a, b, c, d in ((0, 1, 6, 7), (1, 2, 5, 6), (2, 3, 4, 5)):
        cage.add_quad(top[a], top[b], top[c], top[d])
        cage.add_quad(bot[d], bot[c], bot[b], bot[a])
    return rings


def _find_quad(cage: QuadCage, verts: set[int]) -> int:
    return next(i for i, q in enumerate(cage.quads) if set(q) == verts)


def _extrude_chain(cage: QuadCage, quad: int, chain: tuple, coarse: bool, mirror: bool) -> list[list[int]]:
    """Extrude ``quad`` through the chain's key rings, interpolating sub-rings between them."""
    corners = np.array([cage.points[i] for i in cage.quads[quad]])
    attrs = np.array([cage.attrs[i] for i in cage.quads[quad]])
    centre = corners.mean(axis=0)
    prev = (centre, np.abs(corners - centre).mean(axis=0), attrs.mean(axis=0))
    rings = []
    sx = -1.0 if mirror else 1.0
    for c, h, w, steps in chain:
        key = (np.array([sx * c[0], c[1], c[2]]), np.array(h, dtype=float), _weights(w, mirror))
        for ring in _lerp_steps(prev, key, _steps(steps, coarse)):
            rings.append(ring)
        prev = key
    # The extrusion axis keeps a zero half-extent; interpolating from the face would leave a sliver.
    axis = int(np.argmax(np.abs(cage.normal(quad))))
    rings = [(c, np.where(np.arange(3) == axis, 0.0, h), w) for c, h, w in rings]
    return cage.extrude(quad, rings)


def build_cage(coarse: bool) -> QuadCage:
    """The quad cage; ``coarse`` halves the sub-rings between key rings (for the tiny model)."""
    cage = QuadCage(NUM_JOINTS)
    rings = _torso(cage, coarse)
    top, bot, below_top = rings[-1], rings[0], rings[-2]
    _extrude_chain(cage, _find_quad(cage, {top[1], top[2], top[5], top[6]}), _NECK_HEAD, coarse, False)
    # Arms grow from the uppermost side face; the first arm ring sets the shoulder's size.
    for mirror, (i, j) in ((False, (3, 4)), (True, (7, 0))):
        arm = _find_quad(cage, {below_top[i], below_top[j], top[i], top[j]})
        _extrude_chain(cage, arm, _LEFT_ARM, coarse, mirror)
    for mirror, cols in ((False, (2, 3, 4, 5)), (True, (0, 1, 6, 7))):
        leg_rings = _extrude_chain(cage, _find_quad(cage, {bot[c] for c in cols}), _LEFT_LEG, coarse, mirror)
        ankle, sole = leg_rings[-2], leg_rings[-1]
        sides = [q for q, quad in enumerate(cage.quads) if set(quad) <= set(ankle) | set(sole) and
                 set(quad) & set(ankle) and set(quad) & set(sole)]  # fmt: skip
        front = max(sides, key=lambda q: cage.normal(q)[2])
        _extrude_chain(cage, front, _LEFT_FOOT, coarse, mirror)
    return cage


def build_mannequin(levels: int, coarse: bool, target_verts: int | None = None) -> Mannequin:
    """Subdivide the cage ``levels`` times, project to the limit surface and split edges up to target."""
    cage = build_cage(coarse)
    points, attrs, quads = cage.arrays()
    matrix = sp.identity(len(points), format="csr")
    n = len(points)
    for _ in range(levels):
        step, quads = catmull_clark(quads, n)
        matrix = (step @ matrix).tocsr()
        n = step.shape[0]
    matrix = (limit_projection(quads, n) @ matrix).tocsr()
    verts = matrix @ points
    tris = triangulate(quads, verts)
    if target_verts is not None:
        if target_verts < n:
            raise ValueError(f"cage too fine: {n} vertices > target {target_verts}")
        tris, matrix = split_longest_edges(tris, matrix, verts, target_verts)
        verts = matrix @ points
    weights = matrix @ attrs
    weights /= weights.sum(axis=1, keepdims=True)
    extra = _pick_extra_vertices(verts, weights)
    return Mannequin(verts, tris, weights, extra)


def _pick_extra_vertices(verts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Nearest distinct vertex to each anatomical target among vertices the named joints dominate."""
    owner = weights.argmax(axis=1)
    used: set[int] = set()
    ids = []
    for target, joints in _EXTRA_TARGETS:
        cand = np.flatnonzero(np.isin(owner, joints))
        dist = np.linalg.norm(verts[cand] - np.asarray(target), axis=1)
        best = next(int(cand[i]) for i in np.argsort(dist, kind="stable") if int(cand[i]) not in used)
        used.add(best)
        ids.append(best)
    return np.array(ids, dtype=np.int64)
