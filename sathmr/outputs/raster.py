"""Headless CPU triangle rasteriser with a z-buffer, for the mesh overlay.

The original demo renders with pyrender/EGL; servers often have no GL at all, so this draws the same
picture with numpy: pinhole projection, per-pixel nearest-wins depth test, Gouraud Lambert shading
with ambient 0.3 and a light shining from the camera along +z (OpenCV frame; pyrender's three
directional lights all point along -z of the OpenGL camera, i.e. the same direction).

Work is vectorised over candidate pixels: every kept triangle enumerates the pixel centres of its
clipped bounding box (``np.repeat`` — no padding to a common tile size), barycentric and 1/z planes
are evaluated there, and a ``scatter_reduce(amax)`` on 1/z resolves visibility. Triangles are
processed in chunks to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from sathmr.common.errors import SathmrError

NEAR = 0.05          # pyrender's default znear: triangles with any vertex at z <= NEAR are skipped
AMBIENT = 0.3        # scene ambient light of the official demo
DIFFUSE = 0.7        # ~ 2.4 * (1 - F0) / pi of pyrender's PBR diffuse term; facing surfaces reach 1.0
EDGE_EPS = 1e-5      # slight triangle fattening so float rounding leaves no cracks on shared edges
CHUNK = 1 << 22      # candidate pixels evaluated per chunk (~100 MB of temporaries at most)
_GOLDEN = 0.6180339887498949


def person_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 BGR pastel colours, fixed per index.

    Hues step by the golden ratio so neighbours differ strongly for any n; saturation 0.3 and value
    >= 0.8 follow the official demo's pastel adjustment. Deterministic (the original draws at random).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return index_colors(np.arange(n))


def index_colors(index: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 BGR colour of each index (``person_colors(k + 1)[k]``), e.g. per track id, so a
    tracked person keeps its colour from frame to frame whatever its rank."""
    i = np.asarray(index, dtype=np.int64).reshape(-1)
    if i.size and i.min() < 0:
        raise ValueError(f"indices must be >= 0, got {i.min()}")
    n = len(i)
    hsv = np.empty((1, n, 3), dtype=np.float32)
    hsv[0, :, 0] = ((0.05 + i * _GOLDEN) % 1.0) * 360.0
    hsv[0, :, 1] = 0.3
    hsv[0, :, 2] = np.where(i % 2 == 0, 0.95, 0.85)
    if n == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]
    return np.clip(np.rint(bgr * 255.0), 0, 255).astype(np.uint8)


def _stack_meshes(verts: Sequence[np.ndarray] | np.ndarray, faces: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """All people as one mesh: (sum V, 3) vertices, offset faces, per-face person id, person count."""
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise SathmrError(f"faces must have shape (F, 3), got {faces.shape}")
    faces = faces.astype(np.int64)
    meshes = [np.asarray(v, dtype=np.float64) for v in verts]
    if not meshes or faces.shape[0] == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros(0, np.int64), len(meshes)
    for v in meshes:
        if v.ndim != 2 or v.shape[1] != 3:
            raise SathmrError(f"each person's vertices must have shape (V, 3), got {v.shape}")
        if faces.max() >= v.shape[0] or faces.min() < 0:
            raise SathmrError(f"face indices out of range for a mesh of {v.shape[0]} vertices")
    offsets = np.cumsum([0] + [v.shape[0] for v in meshes[:-1]])
    all_faces = np.concatenate([faces + o for o in offsets])
    pid = np.repeat(np.arange(len(meshes)), faces.shape[0])
    return np.concatenate(meshes), all_faces, pid, len(meshes)


def _vertex_intensity(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Per-vertex Lambert intensity from area-weighted normals; two-sided so winding does not matter."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        for c in range(3):
            vn[:, c] += np.bincount(f[:, k], weights=fn[:, c], minlength=len(v))
    norm = np.linalg.norm(vn, axis=1)
    cos = np.abs(vn[:, 2]) / np.maximum(norm, 1e-12)
    return AMBIENT + DIFFUSE * cos


class _Faces:
    """Per-triangle screen-space setup: clipped pixel bbox and affine planes in bbox-local pixels."""

    def __init__(self, v: np.ndarray, f: np.ndarray, shade: np.ndarray, K: np.ndarray, hw: tuple[int, int]):
        H, W = hw
        z = v[:, 2]
        front = z > NEAR
        safe_z = np.where(front, z, 1.0)
        uvw = v @ K.T
        u = np.where(front, uvw[:, 0] / np.where(front, uvw[:, 2], 1.0), 0.0)
        w = np.where(front, uvw[:, 1] / np.where(front, uvw[:, 2], 1.0), 0.0)
        fu, fv, fz = u[f], w[f], safe_z[f]
        area2 = (fu[:, 1] - fu[:, 0]) * (fv[:, 2] - fv[:, 0]) - (fv[:, 1] - fv[:, 0]) * (fu[:, 2] - fu[:, 0])
        # Pixel i is sampled at its centre i + 0.5 (pyrender/OpenGL window convention).
        x0 = np.ceil(np.clip(fu.min(1), -1, W + 1) - 0.5)
        x1 = np.floor(np.clip(fu.max(1), -1, W + 1) - 0.5)
        y0 = np.ceil(np.clip(fv.min(1), -1, H + 1) - 0.5)
        y1 = np.floor(np.clip(fv.max(1), -1, H + 1) - 0.5)
        x0, y0 = np.maximum(x0, 0), np.maximum(y0, 0)
        x1, y1 = np.minimum(x1, W - 1), np.minimum(y1, H - 1)
        keep = front[f].all(1) & (np.abs(area2) > 1e-9) & (x1 >= x0) & (y1 >= y0)
        idx = np.nonzero(keep)[0]
        fu, fv, fz, area2 = fu[idx], fv[idx], fz[idx], area2[idx]
        x0, y0 = x0[idx], y0[idx]
        self.face = idx
        self.bw = (x1[idx] - x0 + 1).astype(np.int64)
        self.count = self.bw * (y1[idx] - y0 + 1).astype(np.int64)
        self.base = (y0 * W + x0).astype(np.int64)
        # Barycentric b_i = A_i * dx + B_i * dy + C_i with (dx, dy) integer offsets from the bbox corner.
        ou, ov = x0 + 0.5, y0 + 0.5
        j, k = [1, 2, 0], [2, 0, 1]
        du = fu[:, k] - fu[:, j]
        dv = fv[:, k] - fv[:, j]
        A = -dv / area2[:, None]
        B = du / area2[:, None]
        C = (du * (ov[:, None] - fv[:, j]) - dv * (ou[:, None] - fu[:, j])) / area2[:, None]
        inv_z = 1.0 / fz
        shade_z = shade[f[idx]] * inv_z
        f32 = np.float32
        self.bary = [a.astype(f32) for a in (A[:, 0], B[:, 0], C[:, 0], A[:, 1], B[:, 1], C[:, 1])]
        self.inv_z = [(P * inv_z).sum(1).astype(f32) for P in (A, B, C)]       # plane of 1/z
        self.shade_z = [(P * shade_z).sum(1).astype(f32) for P in (A, B, C)]   # plane of I/z

    def chunks(self):
        """Yield (start, stop) ranges of kept triangles with about CHUNK candidate pixels each."""
        cs = np.cumsum(self.count)
        start, n, done = 0, len(cs), 0
        while start < n:
            stop = max(int(np.searchsorted(cs, done + CHUNK, side="right")), start + 1)
            yield start, stop
            done = int(cs[stop - 1])
            start = stop


def rasterize(verts: Sequence[np.ndarray] | np.ndarray, faces: np.ndarray, K: np.ndarray,
              hw: tuple[int, int], colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shaded colour (H, W, 3) float32 BGR and coverage mask (H, W) of the nearest surface per pixel.

    ``colors`` is (N, 3) per person or (N, F, 3) per person and face.
    """
    H, W = hw
    v, f, pid, _ = _stack_meshes(verts, faces)
    colors = np.asarray(colors, dtype=np.float32)
    per_face = colors.reshape(-1, 3) if colors.ndim == 3 else colors[pid]   # stacked faces are person-major
    zbuf = torch.zeros(H * W, dtype=torch.float32)           # 1/z; 0 = empty, farther = smaller
    cbuf = np.zeros((H * W, 3), dtype=np.float32)
    if len(f) == 0:
        return cbuf.reshape(H, W, 3), np.zeros((H, W), bool)
    tri = _Faces(v, f, _vertex_intensity(v, f), np.asarray(K, np.float64), hw)
    face_color = per_face[tri.face]
    for s, e in tri.chunks():
        cnt = tri.count[s:e]
        fi = np.repeat(np.arange(e - s), cnt)
        local = np.arange(int(cnt.sum())) - (np.cumsum(cnt) - cnt)[fi]
        bw = tri.bw[s:e][fi]
        dy = local // bw
        dx = local - dy * bw
        dxf, dyf = dx.astype(np.float32), dy.astype(np.float32)
        A0, B0, C0, A1, B1, C1 = (a[s:e][fi] for a in tri.bary)
        b0 = A0 * dxf + B0 * dyf + C0
        b1 = A1 * dxf + B1 * dyf + C1
        inside = np.nonzero((b0 >= -EDGE_EPS) & (b1 >= -EDGE_EPS) & (b0 + b1 <= 1 + EDGE_EPS))[0]
        if inside.size == 0:
            continue
        fi, dx, dy, dxf, dyf = fi[inside], dx[inside], dy[inside], dxf[inside], dyf[inside]
        P0, P1, P2 = (a[s:e][fi] for a in tri.inv_z)
        inv_z = torch.from_numpy(P0 * dxf + P1 * dyf + P2)
        pix = torch.from_numpy(tri.base[s:e][fi] + dy * W + dx)
        zbuf.scatter_reduce_(0, pix, inv_z, reduce="amax")
        win = (inv_z == zbuf[pix]).numpy()
        fw, dxw, dyw = fi[win], dxf[win], dyf[win]
        S0, S1, S2 = (a[s:e][fw] for a in tri.shade_z)
        shade = (S0 * dxw + S1 * dyw + S2) / inv_z.numpy()[win]
        cbuf[pix.numpy()[win]] = face_color[s:e][fw] * shade[:, None]
    return cbuf.reshape(H, W, 3), (zbuf > 0).numpy().reshape(H, W)


def render_meshes(image_bgr: np.ndarray, verts: Sequence[np.ndarray] | np.ndarray, faces: np.ndarray,
                  K: np.ndarray, colors: np.ndarray | None = None) -> np.ndarray:
    """Draw meshes (camera frame: x right, y down, z forward, metres) over ``image_bgr`` with pinhole K.

    Rendered pixels replace the image (opacity 1), as in the official demo. ``colors`` is (N, 3)
    BGR per person, or (N, F, 3) per person and face; by default :func:`person_colors`. Returns a new
    BGR uint8 image.
    """
    image_bgr = np.asarray(image_bgr)
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise SathmrError(f"expected an H x W x 3 uint8 BGR image, got {image_bgr.shape} {image_bgr.dtype}")
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise SathmrError(f"K must be 3 x 3, got {K.shape}")
    n = len(verts)
    if colors is None:
        colors = person_colors(n)
    colors = np.asarray(colors)
    if colors.shape not in ((n, 3), (n, len(faces), 3)):
        raise SathmrError(f"colors must have shape ({n}, 3) or ({n}, {len(faces)}, 3), got {colors.shape}")
    out = image_bgr.copy()
    if n == 0:
        return out
    rgb, mask = rasterize(verts, faces, K, image_bgr.shape[:2], colors)
    out[mask] = np.clip(np.rint(rgb[mask]), 0, 255).astype(np.uint8)
    return out
