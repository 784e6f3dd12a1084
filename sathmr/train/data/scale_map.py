"""Ground-truth scale map (spec §5.3 step 13) and the once-subdivided mesh it is rasterised from."""

from __future__ import annotations

import math

import numpy as np

from sathmr.train.data.geometry import project


def unique_edges(faces: np.ndarray) -> np.ndarray:
    """(E,2) sorted vertex pairs of every distinct triangle edge."""
    f = np.asarray(faces, dtype=np.int64)
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    return np.unique(np.sort(edges, axis=1), axis=0)


def subdivide_once(verts: np.ndarray, faces: np.ndarray, edges: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Split every triangle into four through its edge midpoints.

    Returns the original vertices followed by one midpoint per unique edge, and the (4F,3) faces.
    ``verts`` may carry leading batch dimensions (..., V, 3).
    """
    f = np.asarray(faces, dtype=np.int64)
    edges = unique_edges(f) if edges is None else edges
    n_v = verts.shape[-2]
    mids = 0.5 * (verts[..., edges[:, 0], :] + verts[..., edges[:, 1], :])
    new_verts = np.concatenate([verts, mids], axis=-2)
    # index of the midpoint of each face edge
    key = edges[:, 0] * n_v + edges[:, 1]
    order = np.argsort(key)

    def mid_index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        k = np.minimum(a, b) * n_v + np.maximum(a, b)
        return n_v + order[np.searchsorted(key, k, sorter=order)]

    a, b, c = f[:, 0], f[:, 1], f[:, 2]
    ab, bc, ca = mid_index(a, b), mid_index(b, c), mid_index(c, a)
    new_faces = np.concatenate([np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1),
                                np.stack([ca, bc, c], 1), np.stack([ab, bc, ca], 1)])
    return new_verts, new_faces


def person_scales(boxes_cxcywh: np.ndarray) -> np.ndarray:
    """s_p = clamp(‖(w, h)‖₂, 0, 1) of canvas-normalised boxes."""
    return np.clip(np.linalg.norm(boxes_cxcywh[:, 2:4], axis=1), 0.0, 1.0)


def build_scale_map(verts: np.ndarray, faces: np.ndarray, intrinsics: np.ndarray, boxes_cxcywh: np.ndarray,
                    depth_over_focal: np.ndarray, img_hw: tuple[int, int], padded_hw: tuple[int, int],
                    cell_size: int, edges: np.ndarray | None = None) -> np.ndarray:
    """(H/cell, W/cell, 2) map in raster order: (conf ∈ {0,1}, scale) for every level-1 cell a person covers.

    Persons are painted far to near (Z/f descending), so nearer people overwrite farther ones. Vertices
    that project outside the image are clamped onto the border cells of the unpadded image, as the
    original does.
    """
    h, w = img_hw
    out = np.zeros((padded_hw[0] // cell_size, padded_hw[1] // cell_size, 2), dtype=np.float32)
    if not len(verts):
        return out
    edges = unique_edges(faces) if edges is None else edges
    scales = person_scales(boxes_cxcywh)
    k = np.asarray(intrinsics, dtype=np.float64)
    k = np.broadcast_to(k, (len(verts), 3, 3)) if k.ndim == 2 else k
    max_x, max_y = math.ceil(w / cell_size) - 1, math.ceil(h / cell_size) - 1
    for p in np.argsort(-np.asarray(depth_over_focal), kind="stable"):
        sub, _ = subdivide_once(np.asarray(verts[p], dtype=np.float64), faces, edges)
        uv = np.nan_to_num(project(sub[None], k[p:p + 1])[0], nan=0.0, posinf=1e9, neginf=-1e9)
        cells = np.floor(uv / cell_size)
        cx = np.clip(cells[:, 0], 0, max_x).astype(np.int64)
        cy = np.clip(cells[:, 1], 0, max_y).astype(np.int64)
        out[cy, cx, 0] = 1.0
        out[cy, cx, 1] = scales[p]
    return out
