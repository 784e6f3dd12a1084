"""The demo's 2x2 overlay mosaic (spec §4.3): boxes | meshes / scale map | selected tokens.

Every panel is in pixels of the resized, unpadded image (h x w); grids are top-left anchored and
cropped where they run past the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

from sathmr.common.errors import SathmrError
from sathmr.outputs.raster import index_colors, person_colors, render_meshes
from sathmr.runtime.postprocess import ImageResult, Person

__all__ = ["coolwarm", "overlay_mosaic", "person_colors", "render_meshes", "result_mosaic"]

BOX_COLOR = (255, 0, 255)                                   # BGR
TOKEN_TINTS = ((173, 178, 241), (239, 198, 175), (255, 255, 255))  # BGR per level 0, 1, 2
TOKEN_BLUR = (0, 7, 14)                                     # box-blur kernel per level (0 = none)
WHITE = np.array([255, 255, 255], dtype=np.float32)
_FONT = cv2.FONT_HERSHEY_SIMPLEX

# ---------------------------------------------------------------- coolwarm (Moreland's diverging map)
# matplotlib's coolwarm is Moreland's Msh interpolation between these two sRGB endpoints through a
# neutral midpoint (M = 88, ~ (221, 221, 221)); rebuilt here so matplotlib is not needed.
_COOL = (59, 76, 192)
_WARM = (180, 4, 38)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_RGB2XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])


def _srgb_to_msh(rgb: Sequence[int]) -> np.ndarray:
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    t = (_RGB2XYZ @ lin) / _WHITE_D65
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
    lab = np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])
    m = np.linalg.norm(lab)
    return np.array([m, np.arccos(lab[0] / m), np.arctan2(lab[2], lab[1])])


def _msh_to_srgb(msh: np.ndarray) -> np.ndarray:
    """(n, 3) Msh -> (n, 3) sRGB in [0, 1]."""
    m, s, h = msh.T
    lab = np.stack([m * np.cos(s), m * np.sin(s) * np.cos(h), m * np.sin(s) * np.sin(h)], 1)
    fy = (lab[:, 0] + 16) / 116
    f = np.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], 1)
    t = np.where(f ** 3 > 0.008856, f ** 3, (f - 16 / 116) / 7.787)
    lin = (t * _WHITE_D65) @ np.linalg.inv(_RGB2XYZ).T
    lin = np.clip(lin, 0.0, 1.0)
    return np.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)


def _adjust_hue(msh: np.ndarray, m_unsat: float) -> float:
    """Hue to give the neutral midpoint so the path from a saturated colour bends smoothly into it."""
    m, s, h = msh
    if m >= m_unsat:
        return h
    spin = s * np.sqrt(m_unsat ** 2 - m ** 2) / (m * np.sin(s))
    return h + spin if h > -np.pi / 3 else h - spin


@lru_cache(maxsize=1)
def _coolwarm_lut() -> np.ndarray:
    """(256, 3) uint8 BGR table of coolwarm."""
    a, b = _srgb_to_msh(_COOL), _srgb_to_msh(_WARM)
    mid_m = max(a[0], b[0], 88.0)
    t = np.linspace(0.0, 1.0, 256)[:, None]
    first = t < 0.5
    tt = np.where(first, 2 * t, 2 * t - 1)
    mid_a = np.array([mid_m, 0.0, _adjust_hue(a, mid_m)])
    mid_b = np.array([mid_m, 0.0, _adjust_hue(b, mid_m)])
    msh = np.where(first, (1 - tt) * a + tt * mid_a, (1 - tt) * mid_b + tt * b)
    rgb = _msh_to_srgb(msh)
    return np.clip(np.rint(rgb[:, ::-1] * 255), 0, 255).astype(np.uint8)


def coolwarm(t: np.ndarray) -> np.ndarray:
    """Colormap coolwarm of values in [0, 1] (clipped) as BGR uint8, shape t.shape + (3,)."""
    idx = np.rint(np.clip(np.nan_to_num(np.asarray(t, dtype=np.float64)), 0.0, 1.0) * 255).astype(np.int64)
    return _coolwarm_lut()[idx]


# ---------------------------------------------------------------- panels
def _upsample_grid(grid: np.ndarray, cell: int, hw: tuple[int, int], fill=0) -> np.ndarray:
    """Grid of cells (gh, gw, ...) -> per-pixel (h, w, ...), top-left anchored, cropped or filled."""
    h, w = hw
    up = np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)[:h, :w]
    if up.shape[:2] == (h, w):
        return up
    out = np.full((h, w) + grid.shape[2:], fill, dtype=grid.dtype)
    out[: up.shape[0], : up.shape[1]] = up
    return out


def _grid_lines(hw: tuple[int, int], cell: int) -> np.ndarray:
    """Mask of the first and last pixel row/column of every cell: 2-px lines between adjacent cells."""
    ys, xs = np.arange(hw[0]) % cell, np.arange(hw[1]) % cell
    on_y = (ys == 0) | (ys == cell - 1)
    on_x = (xs == 0) | (xs == cell - 1)
    return on_y[:, None] | on_x[None, :]


def _blend(a: np.ndarray, b: np.ndarray, wa: float) -> np.ndarray:
    return wa * a.astype(np.float32) + (1.0 - wa) * b.astype(np.float32)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def draw_boxes(image_bgr: np.ndarray, boxes_xyxy: np.ndarray, scores: np.ndarray,
               labels: Sequence[str] | None = None) -> np.ndarray:
    """Boxes in magenta, thickness 2, each with its score (or ``labels[i]``, e.g. a track id and the
    score) written small above its top-left corner."""
    out = image_bgr.copy()
    scores = np.asarray(scores, np.float64)
    labels = [f"{sc:.2f}" for sc in scores] if labels is None else labels
    for (x1, y1, x2, y2), text in zip(np.asarray(boxes_xyxy, np.float64), labels):
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, BOX_COLOR, 2)
        ty = p1[1] - 4 if p1[1] >= 14 else p1[1] + 14
        cv2.putText(out, text, (p1[0], ty), _FONT, 0.45, BOX_COLOR, 1, cv2.LINE_AA)
    return out


def draw_scale_map(image_bgr: np.ndarray, scale_map: np.ndarray, conf_thresh: float, cell: int) -> np.ndarray:
    """Confident level-1 cells in coolwarm(1 - sqrt(scale)), the rest washed out, white cell grid."""
    hw = image_bgr.shape[:2]
    sm = np.asarray(scale_map, dtype=np.float32)
    if sm.ndim != 3 or sm.shape[2] != 2:
        raise SathmrError(f"scale_map must have shape (h1, w1, 2) [conf, scale], got {sm.shape}")
    pix = _upsample_grid(sm, cell, hw)                      # cells past the grid get conf 0
    hot = pix[..., 0] > conf_thresh
    colour = coolwarm(1.0 - np.sqrt(np.clip(pix[..., 1], 0.0, None)))
    out = np.where(hot[..., None], _blend(colour, image_bgr, 0.8), _blend(image_bgr, WHITE, 0.6))
    out[_grid_lines(hw, cell)] = 255
    return _to_u8(out)


def draw_tokens(image_bgr: np.ndarray, token_yx: np.ndarray, token_lvl: np.ndarray, patch: int,
                legend: bool = True) -> np.ndarray:
    """Tint each token's square by level (50 %), blurred as the original, outlined white; plus a legend."""
    hw = image_bgr.shape[:2]
    token_yx = np.asarray(token_yx, dtype=np.int64).reshape(-1, 2)
    token_lvl = np.asarray(token_lvl, dtype=np.int64).reshape(-1)
    if len(token_yx) != len(token_lvl):
        raise SathmrError(f"token_yx has {len(token_yx)} rows but token_lvl has {len(token_lvl)}")
    if token_lvl.size and (token_lvl.min() < 0 or token_lvl.max() > 2):
        raise SathmrError("token levels must be 0, 1 or 2")
    out = image_bgr.astype(np.float32)
    counts = []
    for lvl, (tint, blur) in enumerate(zip(TOKEN_TINTS, TOKEN_BLUR)):
        yx = token_yx[token_lvl == lvl]
        counts.append(len(yx))
        yx = yx[(yx >= 0).all(1)]
        if len(yx) == 0:
            continue
        size = patch * 2 ** lvl
        grid = np.zeros((yx[:, 0].max() + 1, yx[:, 1].max() + 1), dtype=bool)
        grid[yx[:, 0], yx[:, 1]] = True
        sel = _upsample_grid(grid, size, hw, fill=False)
        src = cv2.blur(image_bgr, (blur, blur)) if blur else image_bgr
        out[sel] = _blend(src[sel], np.array(tint, np.float32), 0.5)
        out[sel & _grid_lines(hw, size)] = 255
    out = _to_u8(out)
    if legend:
        _legend(out, counts, patch)
    return out


def _legend(img: np.ndarray, counts: list[int], patch: int) -> None:
    """Small box in the top-left corner: a swatch and the token count for each level."""
    lines = [f"L{lvl} {patch * 2 ** lvl}px: {n}" for lvl, n in enumerate(counts)]
    lines.append(f"total: {sum(counts)}")
    pad, lh = 4, 16
    box_w = 18 + max(cv2.getTextSize(t, _FONT, 0.4, 1)[0][0] for t in lines) + 2 * pad
    box_h = lh * len(lines) + 2 * pad
    h, w = img.shape[:2]
    bw, bh = min(box_w, w), min(box_h, h)
    img[:bh, :bw] = _to_u8(_blend(img[:bh, :bw], np.zeros(3, np.float32), 0.35))
    for i, text in enumerate(lines):
        y = pad + lh * i + 12
        if i < len(TOKEN_TINTS):
            cv2.rectangle(img, (pad, y - 10), (pad + 10, y), TOKEN_TINTS[i], -1)
        cv2.putText(img, text, (pad + 16, y), _FONT, 0.4, (255, 255, 255), 1, cv2.LINE_AA)


def overlay_mosaic(image_bgr: np.ndarray, boxes_xyxy: np.ndarray, scores: np.ndarray,
                   verts: np.ndarray | Sequence[np.ndarray], faces: np.ndarray, K: np.ndarray,
                   scale_map: np.ndarray, conf_thresh: float, token_yx: np.ndarray,
                   token_lvl: np.ndarray, patch: int, colors: np.ndarray | None = None,
                   labels: Sequence[str] | None = None, titles: Sequence[str] | None = None) -> np.ndarray:
    """The official demo's 2x2 mosaic, (2h, 2w, 3) BGR uint8.

    Top-left boxes and scores, top-right meshes, bottom-left scale map (level-1 cells of 2*patch px),
    bottom-right the selected tokens. All inputs are in pixels of the resized image ``image_bgr``.
    ``colors`` (N, 3) BGR and ``labels`` override the per-rank mesh colours and the score captions
    (videos colour and label people by track id). ``titles`` (four, in that order) name the panels in
    their bottom-left corners.
    """
    image_bgr = np.asarray(image_bgr)
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise SathmrError(f"expected an H x W x 3 uint8 BGR image, got {image_bgr.shape} {image_bgr.dtype}")
    if patch <= 0:
        raise SathmrError(f"patch must be positive, got {patch}")
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise SathmrError(f"{len(boxes)} boxes but {len(scores)} scores")
    if labels is not None and len(labels) != len(scores):
        raise SathmrError(f"{len(labels)} labels but {len(scores)} scores")
    panels = [draw_boxes(image_bgr, boxes, scores, labels), render_meshes(image_bgr, verts, faces, K, colors),
              draw_scale_map(image_bgr, scale_map, conf_thresh, 2 * patch), draw_tokens(image_bgr, token_yx, token_lvl, patch)]
    for panel, title in zip(panels, titles or ()):
        _title(panel, title)
    return np.concatenate([np.concatenate(panels[:2], 1), np.concatenate(panels[2:], 1)], 0)


#: what the four panels of an inference overlay show
PANEL_TITLES = ("people (box, score)", "SMPL meshes", "scale map (confident cells)", "selected tokens")


def _title(img: np.ndarray, text: str) -> None:
    """``text`` in white on a dark strip in the bottom-left corner of ``img``, in place."""
    (tw, th), base = cv2.getTextSize(text, _FONT, 0.45, 1)
    h, w = img.shape[:2]
    x1, y0 = min(w, tw + 8), max(0, h - th - base - 8)
    img[y0:, :x1] = _to_u8(_blend(img[y0:, :x1], np.zeros(3, np.float32), 0.45))
    cv2.putText(img, text, (4, h - base - 4), _FONT, 0.45, (255, 255, 255), 1, cv2.LINE_AA)


def result_mosaic(res: ImageResult, people: Sequence[Person], faces: np.ndarray, conf_thresh: float, patch: int,
                  track_ids: Sequence[int] | None = None) -> np.ndarray:
    """The mosaic of one inference result: ``people`` (one threshold's) on the resized image. With
    ``track_ids`` each person is coloured by its id (:func:`index_colors`) and captioned ``#id score``."""
    boxes = np.array([p.box for p in people], dtype=np.float32).reshape(-1, 4) * res.scale
    verts = np.array([p.vertices for p in people]).reshape(len(people), -1, 3) if people else np.zeros((0, 0, 3))
    colors = labels = None
    if track_ids is not None:
        colors = index_colors(np.asarray(track_ids))
        labels = [f"#{t} {p.score:.2f}" for t, p in zip(track_ids, people)]
    return overlay_mosaic(res.resized_bgr, boxes, np.array([p.score for p in people]), verts, faces, res.intrinsics,
                          res.scale_map, conf_thresh, res.tok_yx, res.tok_lvl, patch, colors, labels, PANEL_TITLES)
