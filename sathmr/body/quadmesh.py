"""Closed quad-mesh modelling used to build the synthetic mannequin.

The mannequin is box-modelled as a coarse quad cage (tubes extruded from a torso), then smoothed with
Catmull-Clark subdivision. Every operation here is *linear* in the cage vertices, so it is expressed as a
sparse matrix: the same matrix carries positions, skinning weights and any other per-vertex attribute to the
fine mesh, which keeps weights convex and smooth for free.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


@dataclass
class QuadCage:
    """A growing closed quad mesh: positions, per-vertex attributes and outward-oriented quads."""

    num_attrs: int
    points: list[np.ndarray] = field(default_factory=list)
    attrs: list[np.ndarray] = field(default_factory=list)
    quads: list[tuple[int, int, int, int]] = field(default_factory=list)

    def add_vertex(self, position: np.ndarray, attr: np.ndarray) -> int:
        self.points.append(np.asarray(position, dtype=np.float64))
        self.attrs.append(np.asarray(attr, dtype=np.float64).reshape(self.num_attrs))
        return len(self.points) - 1

    def add_quad(self, a: int, b: int, c: int, d: int) -> int:
        self.quads.append((a, b, c, d))
        return len(self.quads) - 1

    def normal(self, quad: int) -> np.ndarray:
        a, b, c, d = (self.points[i] for i in self.quads[quad])
        n = np.cross(c - a, d - b)
        return n / np.linalg.norm(n)

    def extrude(self, quad: int, rings: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[list[int]]:
        """Replace ``quad`` by a tube of new rings and a cap; returns the new rings' vertex ids.

        Each ring is ``(centre, half_extents, attr)``. A corner of a new ring sits at
        ``centre + sign(corner - face_centre) * half_extents`` per world axis, so the face must be roughly
        axis aligned (true for every face we extrude); the extrusion axis has a zero sign and gets no offset.
        """
        face = self.quads[quad]
        corners = np.array([self.points[i] for i in face])
        offsets = corners - corners.mean(axis=0)
        scale = np.abs(offsets).max()
        signs = np.where(np.abs(offsets) > 1e-6 * scale, np.sign(offsets), 0.0)
        prev = list(face)
        made = []
        for centre, half, attr in rings:
            ring = [self.add_vertex(np.asarray(centre) + s * np.asarray(half), attr) for s in signs]
            for k in range(4):
                p, q = prev[k], prev[(k + 1) % 4]
                self.add_quad(p, q, ring[(k + 1) % 4], ring[k])
            made.append(ring)
            prev = ring
        self.quads[quad] = tuple(prev)
        return made

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.array(self.points), np.array(self.attrs), np.array(self.quads, dtype=np.int64)


def _edges(quads: np.ndarray, num_verts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique undirected edges, the edge id of each face side, and the two faces of each edge."""
    a = quads.reshape(-1)
    b = np.roll(quads, -1, axis=1).reshape(-1)
    key = np.minimum(a, b) * num_verts + np.maximum(a, b)
    uniq, side_edge, counts = np.unique(key, return_inverse=True, return_counts=True)
    if not np.all(counts == 2):
        raise ValueError("quad mesh is not a closed 2-manifold (an edge has != 2 faces)")
    order = np.argsort(side_edge, kind="stable")
    edge_faces = (order // 4).reshape(-1, 2)
    edges = np.stack([uniq // num_verts, uniq % num_verts], axis=1)
    return edges, side_edge.reshape(-1, 4), edge_faces


def _vertex_averaging(quads: np.ndarray, num_verts: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Matrix averaging each vertex's one-ring face centroids, and the vertex valences."""
    rows = np.repeat(quads.reshape(-1), 4)
    cols = np.repeat(quads, 4, axis=0).reshape(-1)
    valence = np.bincount(quads.reshape(-1), minlength=num_verts).astype(np.float64)
    vals = 0.25 / valence[rows]
    return sp.csr_matrix((vals, (rows, cols)), shape=(num_verts, num_verts)), valence


def catmull_clark(quads: np.ndarray, num_verts: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """One Catmull-Clark step on a closed quad mesh as (fine-from-coarse matrix, fine quads).

    Fine vertices are ordered [moved old vertices | face points | edge points].
    """
    nf = len(quads)
    edges, side_edge, edge_faces = _edges(quads, num_verts)
    ne = len(edges)
    face_pt = sp.csr_matrix(
        (np.full(4 * nf, 0.25), (np.repeat(np.arange(nf), 4), quads.reshape(-1))), shape=(nf, num_verts)
    )
    ends = sp.csr_matrix(
        (np.full(2 * ne, 1.0), (np.repeat(np.arange(ne), 2), edges.reshape(-1))), shape=(ne, num_verts)
    )
    both_faces = sp.csr_matrix(
        (np.full(2 * ne, 1.0), (np.repeat(np.arange(ne), 2), edge_faces.reshape(-1))), shape=(ne, nf)
    )
    edge_pt = (ends + both_faces @ face_pt) * 0.25
    face_avg, valence = _vertex_averaging(quads, num_verts)
    # R: average of incident edge midpoints = (v + mean of neighbours) / 2.
    inc = sp.csr_matrix(
        (np.ones(2 * ne), (edges.reshape(-1), edges[:, ::-1].reshape(-1))), shape=(num_verts, num_verts)
    )
    nbr_avg = sp.diags(1.0 / valence) @ inc
    eye = sp.identity(num_verts, format="csr")
    mid_avg = 0.5 * (eye + nbr_avg)
    n = sp.diags(1.0 / valence)
    vert_pt = n @ face_avg + 2.0 * (n @ mid_avg) + sp.diags((valence - 3.0) / valence)
    matrix = sp.vstack([vert_pt, face_pt, edge_pt]).tocsr()

    fp = num_verts + np.arange(nf)
    ep = num_verts + nf + side_edge  # (F, 4): edge point of side k = (v_k, v_k+1)
    new = []
    for k in range(4):
        new.append(np.stack([quads[:, k], ep[:, k], fp, ep[:, (k - 1) % 4]], axis=1))
    fine = np.stack(new, axis=1).reshape(-1, 4)
    return matrix, fine


def limit_projection(quads: np.ndarray, num_verts: int) -> sp.csr_matrix:
    """Catmull-Clark limit-position stencil: (n^2 v + 4 sum(edge nbrs) + sum(face diagonals)) / (n(n+5))."""
    edges, _, _ = _edges(quads, num_verts)
    valence = np.bincount(quads.reshape(-1), minlength=num_verts).astype(np.float64)
    rows = [np.arange(num_verts), edges[:, 0], edges[:, 1], quads.reshape(-1)]
    cols = [np.arange(num_verts), edges[:, 1], edges[:, 0], np.roll(quads, -2, axis=1).reshape(-1)]
    vals = [valence**2, np.full(len(edges), 4.0), np.full(len(edges), 4.0), np.ones(quads.size)]
    r, c, v = (np.concatenate(x) for x in (rows, cols, vals))
    m = sp.csr_matrix((v, (r, c)), shape=(num_verts, num_verts))
    return (sp.diags(1.0 / (valence * (valence + 5.0))) @ m).tocsr()


def triangulate(quads: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Split each quad along its shorter diagonal, keeping the orientation."""
    a, b, c, d = quads.T
    use_ac = np.linalg.norm(points[a] - points[c], axis=1) <= np.linalg.norm(points[b] - points[d], axis=1)
    t1 = np.where(use_ac[:, None], np.stack([a, b, c], 1), np.stack([a, b, d], 1))
    t2 = np.where(use_ac[:, None], np.stack([a, c, d], 1), np.stack([b, c, d], 1))
    return np.stack([t1, t2], axis=1).reshape(-1, 3)


def split_longest_edges(
    tris: np.ndarray, matrix: sp.csr_matrix, points: np.ndarray, target_verts: int
) -> tuple[np.ndarray, sp.csr_matrix]:
    """Split the longest edges (midpoint, 1 vertex and 2 faces each) until ``target_verts`` vertices.

    Each split keeps a closed genus-0 surface at F = 2V - 4. New rows of ``matrix`` average the two ends.
    """
    faces = [list(t) for t in tris]
    pts = [p for p in points]
    edge_faces: dict[tuple[int, int], list[int]] = {}
    for fi, f in enumerate(faces):
        for k in range(3):
            edge_faces.setdefault(_ekey(f[k], f[(k + 1) % 3]), []).append(fi)
    heap = [(-float(np.linalg.norm(pts[a] - pts[b])), a, b) for (a, b) in edge_faces]
    heapq.heapify(heap)
    new_rows: list[sp.csr_matrix] = []
    rows_of = matrix.tocsr()
    while len(pts) < target_verts:
        _, a, b = heapq.heappop(heap)
        if (a, b) not in edge_faces:
            continue
        m = len(pts)
        pts.append(0.5 * (pts[a] + pts[b]))
        new_rows.append(0.5 * (_row(rows_of, new_rows, a) + _row(rows_of, new_rows, b)))
        for fi in edge_faces.pop((a, b)):
            f = faces[fi]
            k = next(i for i in range(3) if {f[i], f[(i + 1) % 3]} == {a, b})
            p, q, r = f[k], f[(k + 1) % 3], f[(k + 2) % 3]
            faces[fi] = [p, m, r]
            faces.append([m, q, r])
            nf = len(faces) - 1
            edge_faces[_ekey(q, r)] = [nf if x == fi else x for x in edge_faces[_ekey(q, r)]]
            edge_faces.setdefault(_ekey(p, m), []).append(fi)
            edge_faces.setdefault(_ekey(m, q), []).append(nf)
            edge_faces[_ekey(m, r)] = [fi, nf]
            for e in (_ekey(p, m), _ekey(m, q), _ekey(m, r)):  # duplicates are harmless
                heapq.heappush(heap, (-float(np.linalg.norm(pts[e[0]] - pts[e[1]])), *e))
    if new_rows:
        matrix = sp.vstack([rows_of, *new_rows]).tocsr()
    return np.array(faces, dtype=np.int64), matrix


def _ekey(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _row(base: sp.csr_matrix, extra: list[sp.csr_matrix], i: int) -> sp.csr_matrix:
    return base[i] if i < base.shape[0] else extra[i - base.shape[0]]
