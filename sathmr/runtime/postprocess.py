"""Network outputs → people. Shared by every backend, by evaluation and by the training losses.

The network stops at SMPL parameters and a camera; this module applies the original camera model
(spec §3.4), SMPL (§3.5, via smplx) and the projection (§3.6), then thresholds (no NMS, §4.2) and maps
results back to original image pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from sathmr.model.config import ModelConfig
from sathmr.model.geometry import box_cxcywh_to_xyxy, rot6d_to_rotmat, rotmat_to_axis_angle

if TYPE_CHECKING:
    from sathmr.runtime.preprocess import Prepared

RAW_OUTPUTS = ("pred_boxes", "pred_confs", "pred_poses", "pred_betas", "pred_transl", "pred_j3ds",
               "pred_j2ds", "pred_verts", "pred_intrinsics", "pred_depths")


def intrinsics(img_hw: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """(B,2) [h, w] → (B,3,3): fixed focal, principal point at the centre of the *unpadded* image."""
    B = img_hw.shape[0]
    K = torch.zeros(B, 3, 3, dtype=torch.float32, device=img_hw.device)
    K[:, 0, 0] = K[:, 1, 1] = cfg.focal
    K[:, 0, 2] = img_hw[:, 1].float() / 2
    K[:, 1, 2] = img_hw[:, 0].float() / 2
    K[:, 2, 2] = 1.0
    return K


def cam_to_transl(cam: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """(…,3) camera head output → translation of the SMPL origin [must match §3.4]."""
    s = 2 * cam[..., 2].sigmoid() + 1e-6
    tz = 2 * cfg.focal / (s * cfg.input_size)
    return torch.stack((cam[..., 0] / s, cam[..., 1] / s, tz), dim=-1)


def project(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """points (B,Q,J,3) camera frame, K (B,3,3) → (B,Q,J,2) canvas pixels."""
    p = torch.einsum("bij,bqnj->bqni", K, points)
    return p[..., :2] / (p[..., 2:] + 1e-6)


def decode_people(layer: dict, img_hw: torch.Tensor, body_model, cfg: ModelConfig,
                  with_verts: bool = True) -> dict:
    """Add SMPL outputs to one decoder layer's predictions (all queries).

    Adds ``pred_poses`` (axis-angle), ``pred_transl``, ``pred_j3ds``, ``pred_j2ds``, ``pred_depths``,
    ``pred_intrinsics`` and, when ``with_verts``, ``pred_verts``.
    """
    pose6d, betas, cam = layer["pred_pose6d"], layer["pred_betas"], layer["pred_cam"]
    B, Q, _ = pose6d.shape
    J = pose6d.shape[-1] // 6
    # 6D → matrix → axis-angle → SMPL (which re-applies Rodrigues), as the original does
    aa = rotmat_to_axis_angle(rot6d_to_rotmat(pose6d.reshape(B, Q, J, 6))).reshape(B, Q, J * 3)
    flat = aa.reshape(B * Q, J * 3).float()
    verts, joints = body_model(flat[:, :3], flat[:, 3:], betas.reshape(B * Q, -1).float())
    transl = cam_to_transl(cam.float(), cfg)
    j3ds = joints.reshape(B, Q, -1, 3) + transl[:, :, None]
    K = intrinsics(img_hw, cfg).to(j3ds.device)
    out = dict(layer)
    out.update({
        "pred_poses": aa,
        "pred_transl": transl,
        "pred_j3ds": j3ds,
        "pred_j2ds": project(j3ds, K),
        "pred_depths": torch.stack((j3ds[..., 0, 2], j3ds[..., 0, 2] / cfg.focal), dim=-1),
        "pred_intrinsics": K[:, None],
    })
    if with_verts:
        out["pred_verts"] = verts.reshape(B, Q, -1, 3) + transl[:, :, None]
    return out


def decode_outputs(net: dict[str, torch.Tensor], img_hw: torch.Tensor, body_model, cfg: ModelConfig,
                   with_verts: bool = True) -> dict[str, torch.Tensor]:
    """A backend's outputs → decoded outputs (CPU tensors); SMPL runs where the body model lives."""
    dev = next(iter(body_model.buffers())).device
    dec = decode_people({k: v.to(dev) for k, v in net.items()}, img_hw.to(dev), body_model, cfg, with_verts)
    return {k: v.cpu() for k, v in dec.items()}


def as_arrays(decoded: dict[str, torch.Tensor], cfg: ModelConfig) -> dict:
    """Numpy view of decoded outputs, with the canvas size that ``select_people`` needs."""
    arrays = {k: v.numpy() for k, v in decoded.items()}
    arrays["canvas"] = cfg.input_size
    return arrays


@dataclass
class Person:
    score: float
    box: list[float]                 # x0, y0, x1, y1 in original image pixels
    pose: np.ndarray                 # (24, 3) axis-angle, [0] global orientation (camera frame)
    betas: np.ndarray                # (10,)
    transl: np.ndarray               # (3,) applied to the SMPL origin, metres
    joints3d: np.ndarray             # (45, 3) camera frame, metres
    joints2d: np.ndarray             # (45, 2) original image pixels
    vertices: np.ndarray | None      # (V, 3) camera frame, metres
    query: int                       # decoder query index

    def to_json(self) -> dict:
        return {
            "query": self.query, "score": round(self.score, 6), "box_xyxy": [round(v, 3) for v in self.box],
            "smpl": {"global_orient": self.pose[0].tolist(), "body_pose": self.pose[1:].reshape(-1).tolist(),
                     "betas": self.betas.tolist(), "transl": self.transl.tolist()},
            "joints3d": np.round(self.joints3d, 6).tolist(),
            "joints2d": np.round(self.joints2d, 3).tolist(),
        }


@dataclass(frozen=True)
class TokenCounts:
    """Memory tokens of one image per level, and what a fixed budget had to demote or drop."""
    level0: int
    level1: int
    level2: int
    sat_overflow: int = 0           # SAT cells demoted to level 1 (static budgets only)
    context_overflow: int = 0       # context tokens dropped (static budgets only)

    @property
    def total(self) -> int:
        return self.level0 + self.level1 + self.level2

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class ImageResult:
    """Everything inference knows about one image: people per threshold and what the network saw."""
    name: str
    orig_hw: tuple[int, int]
    img_hw: tuple[int, int]                        # resized, unpadded
    scale: float                                   # resize rate r (canvas px = original px * r)
    people: dict[float, list[Person]]              # per detection threshold
    tokens: TokenCounts
    scale_map: np.ndarray                          # (hc, wc, 2) [conf, scale] on the image's own cells
    tok_yx: np.ndarray                             # (L, 2) grid position of each memory token on its level
    tok_lvl: np.ndarray                            # (L,) level 0/1/2
    intrinsics: np.ndarray                         # (3, 3) camera of the resized image
    raw: dict[str, np.ndarray] = field(default_factory=dict)   # every query, original names, canvas frame
    resized_bgr: np.ndarray | None = None          # h x w x 3 uint8, for overlays


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) x0 y0 x1 y1 → (N, M) intersection over union (0 where both boxes are empty)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def select_people(decoded: dict[str, np.ndarray], i: int, threshold: float, scale: float,
                  with_verts: bool = True) -> list[Person]:
    """Queries of image ``i`` with confidence > threshold (strict, no NMS), in original pixels."""
    confs = decoded["pred_confs"][i, :, 0]
    S = decoded["canvas"]
    people = []
    for q in np.flatnonzero(confs > threshold):
        box = box_cxcywh_to_xyxy(torch.from_numpy(decoded["pred_boxes"][i, q])).numpy() * S / scale
        people.append(Person(
            score=float(confs[q]), box=box.tolist(),
            pose=decoded["pred_poses"][i, q].reshape(-1, 3), betas=decoded["pred_betas"][i, q],
            transl=decoded["pred_transl"][i, q], joints3d=decoded["pred_j3ds"][i, q],
            joints2d=decoded["pred_j2ds"][i, q] / scale,
            vertices=decoded["pred_verts"][i, q] if with_verts else None, query=int(q)))
    people.sort(key=lambda p: -p.score)
    return people


def image_json(res: ImageResult, threshold: float, source: str, backend: str, focal: float,
               track_ids: Sequence[int] | None = None, precision: str = "fp32") -> dict:
    """The per-image answer at one threshold: what ``sathmr infer`` writes as ``<name>.json`` and
    ``sathmr serve`` returns; ``track_ids`` (one per person, a video frame) add ``track_id``;
    ``precision``: what the network ran at (``sathmr.backends.precision``)."""
    people = res.people[threshold]
    return {
        "image": source, "image_hw": list(res.orig_hw), "resized_hw": list(res.img_hw),
        "resize_rate": res.scale, "threshold": threshold, "backend": backend,
        "precision": precision, "camera": {"focal_px_resized": focal, "principal_point_resized": [res.img_hw[1] / 2, res.img_hw[0] / 2],
                   "note": "3D outputs are in the camera frame of the resized image; divide pixel "
                           "quantities by resize_rate for the original image (boxes and joints2d already are)"},
        "tokens": res.tokens.to_json(), "num_people": len(people),
        "people": [p.to_json() if track_ids is None else {"track_id": int(i), **p.to_json()}
                   for i, p in zip(track_ids if track_ids is not None else people, people)],
    }


def image_result(arrays: dict, i: int, p: Prepared, name: str, thresholds: Sequence[float], cfg: ModelConfig,
                 with_verts: bool = True) -> ImageResult:
    """Image ``i`` of a decoded batch (:func:`as_arrays`) as its :class:`ImageResult`: people per threshold in
    the original image's pixels, token counts, the scale map and selected tokens cropped to the image."""
    people = {t: select_people(arrays, i, t, p.scale, with_verts) for t in thresholds}
    counts, overflow = arrays["tok_counts"][i], arrays["tok_overflow"][i]
    raw = {k: arrays[k][i] for k in RAW_OUTPUTS if k in arrays}
    raw["input"] = p.tensor.numpy()
    raw["img_size"] = np.array(p.img_hw, dtype=np.int64)
    H, W = p.tensor.shape[1:]
    hc, wc = H // cfg.cell_size, W // cfg.cell_size
    lvl = arrays["tok_lvl"][i]
    return ImageResult(
        name=name, orig_hw=p.orig_hw, img_hw=p.img_hw, scale=p.scale, people=people,
        tokens=TokenCounts(int(counts[0]), int(counts[1]), int(counts[2]), int(overflow[0]), int(overflow[1])),
        scale_map=arrays["scale_map"][i][:hc, :wc], tok_yx=arrays["tok_yx"][i][lvl >= 0], tok_lvl=lvl[lvl >= 0],
        intrinsics=arrays["pred_intrinsics"][i, 0], raw=raw, resized_bgr=p.resized_bgr)
