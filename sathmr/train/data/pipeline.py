"""Per-sample ground-truth construction and augmentation (spec §5.3 steps 1–15) as a torch Dataset.

The order of operations matters and follows the original: resize → draw augmentation → warp image →
update intrinsics/extrinsics → SMPL GT in the camera frame (mirrored when flipping) → project →
visibility filter → boxes → occlusion → scale map → pad, colour-jitter, normalise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from sathmr.body import load_body_model
from sathmr.common.errors import SathmrError
from sathmr.inputs.images import read_image
from sathmr.model.config import ModelConfig
from sathmr.runtime.preprocess import normalize, padded_size, resize_long_side
from sathmr.train.data.augment import (
    AugParams,
    augment_extrinsics,
    augment_intrinsics,
    color_jitter,
    draw_aug,
    occlude,
    warp_image,
)
from sathmr.train.data.geometry import flip_pose, matrix_to_rotvec, project, rotvec_to_matrix
from sathmr.train.data.readers import ImageRecord
from sathmr.train.data.scale_map import build_scale_map, unique_edges

NUM_JOINTS = 45             # SMPL joints kept for j3ds/j2ds/boxes
MIN_VISIBLE = 4             # persons with fewer visible joints are dropped
BODY_JOINTS = 22            # a training sample needs every kept person to show one of these
BOX_ENLARGE = 1.2
MAX_AUG_TRIES = 10


class BodyModels:
    """Lazily loaded SMPL models per gender ('neutral', 'male', 'female') from one SMPL folder."""

    def __init__(self, smpl_dir: str | Path | None = None, models: Mapping[str, Any] | None = None) -> None:
        if smpl_dir is None and not models:
            raise SathmrError("a SMPL folder (or body models) is needed to build ground truth")
        self.smpl_dir = smpl_dir
        self._models: dict[str, Any] = dict(models or {})

    def get(self, gender: str) -> Any:
        if gender not in self._models:
            if self.smpl_dir is None:
                raise SathmrError(f"no {gender} body model available")
            self._models[gender] = load_body_model(self.smpl_dir, gender=gender)
        return self._models[gender]

    @property
    def faces(self) -> np.ndarray:
        return np.asarray(self.get("neutral").faces, dtype=np.int64)

    @property
    def num_verts(self) -> int:
        """Vertex count of the neutral model (so that empty GT still has the (0, V, 3) shape)."""
        bm = self.get("neutral")
        if hasattr(bm, "num_verts"):
            return int(bm.num_verts)
        with torch.no_grad():
            verts, _ = bm(torch.zeros(1, 3), torch.zeros(1, 69), torch.zeros(1, 10))
        return int(verts.shape[1])


@dataclass
class CameraGT:
    """Camera-frame SMPL ground truth of the people of one (augmented) image."""
    poses: np.ndarray       # (n,72) axis-angle, camera frame, mirrored when flipping
    betas: np.ndarray       # (n,10)
    transl: np.ndarray      # (n,3) SMPL translation in the camera frame
    verts: np.ndarray       # (n,V,3)
    j3ds: np.ndarray        # (n,45,3)


def smpl_in_camera(record: ImageRecord, cam_rot: np.ndarray, cam_trans: np.ndarray, flip: bool,
                   bodies: BodyModels) -> CameraGT:
    """Step 6: re-express world-frame SMPL in the (rolled) camera frame, mirrored if flipping."""
    n = record.num_people
    orient = matrix_to_rotvec(cam_rot @ rotvec_to_matrix(record.global_orient)) if n else np.zeros((0, 3))
    poses = np.concatenate([orient, record.body_pose], axis=1)
    if flip:
        poses = flip_pose(poses)
    betas = np.asarray(record.betas, dtype=np.float64)
    verts: list[np.ndarray | None] = [None] * n
    joints: list[np.ndarray | None] = [None] * n
    for gender in dict.fromkeys(record.genders):
        idx = [i for i, g in enumerate(record.genders) if g == gender]
        bm = bodies.get(gender)
        p = torch.as_tensor(poses[idx], dtype=torch.float32)
        with torch.no_grad():
            v, j = bm(p[:, :3], p[:, 3:], torch.as_tensor(betas[idx], dtype=torch.float32))
        for k, i in enumerate(idx):
            verts[i], joints[i] = v[k].double().numpy(), j[k, :NUM_JOINTS].double().numpy()
    if n:
        v_all, j_all = np.stack(verts), np.stack(joints)
        pelvis = j_all[:, 0]
        t_c = np.einsum("nij,nj->ni", cam_rot, pelvis + record.transl) + cam_trans - pelvis
        if flip:
            t_c[:, 0] *= -1.0
    else:
        v_all, j_all, t_c = np.zeros((0, bodies.num_verts, 3)), np.zeros((0, NUM_JOINTS, 3)), np.zeros((0, 3))
    return CameraGT(poses, betas, t_c, v_all + t_c[:, None], j_all + t_c[:, None])


def visible_joints(j2ds: np.ndarray, valid_mask: np.ndarray) -> np.ndarray:
    """(n,45) joints inside the resized image whose (truncated) pixel is valid after the warp."""
    h, w = valid_mask.shape
    u, v = j2ds[..., 0], j2ds[..., 1]
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    ui = np.where(inside, u, 0).astype(np.int64)
    vi = np.where(inside, v, 0).astype(np.int64)
    return inside & (valid_mask[vi, ui] > 0)


def joint_boxes(j2ds: np.ndarray, img_hw: tuple[int, int], canvas: int) -> np.ndarray:
    """Step 10: canvas-normalised cxcywh boxes from all 45 joints, enlarged ×1.2, clamped to the image."""
    h, w = img_hw
    lo, hi = j2ds.min(axis=1) / canvas, j2ds.max(axis=1) / canvas
    centre, size = (lo + hi) / 2.0, (hi - lo) * BOX_ENLARGE
    xyxy = np.concatenate([centre - size / 2.0, centre + size / 2.0], axis=1)
    xyxy[:, 0::2] = np.clip(xyxy[:, 0::2], 1e-6, (w - 1) / canvas)
    xyxy[:, 1::2] = np.clip(xyxy[:, 1::2], 1e-6, (h - 1) / canvas)
    return np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2.0, xyxy[:, 2:] - xyxy[:, :2]], axis=1)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2.0, boxes[:, :2] + boxes[:, 2:] / 2.0], axis=1)


def _f32(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)


class SampleBuilder:
    """Builds (image tensor, target dict) for one record under given augmentation parameters."""

    def __init__(self, bodies: BodyModels, cfg: ModelConfig) -> None:
        self.bodies, self.cfg = bodies, cfg
        self._faces: np.ndarray | None = None
        self._edges: np.ndarray | None = None

    def _mesh_topology(self) -> tuple[np.ndarray, np.ndarray]:
        if self._faces is None:
            self._faces = self.bodies.faces
            self._edges = unique_edges(self._faces)
        return self._faces, self._edges

    def load_image(self, record: ImageRecord) -> tuple[np.ndarray, float]:
        """Steps 1 (and the BEDLAM close-up rotation): BGR image resized to the canvas, and its rate r."""
        img = read_image(record.img_path)
        if record.rotate_cw:
            img = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
        return resize_long_side(img, self.cfg.input_size)

    def build(self, record: ImageRecord, aug: AugParams, rng: np.random.Generator | None, train: bool,
              image: tuple[np.ndarray, float] | None = None) -> tuple[torch.Tensor, dict] | None:
        """Steps 3–15. Returns None when a training sample must be re-drawn (nobody left in view).

        ``rng`` drives occlusion and colour jitter (training only); ``image`` may pass a pre-loaded
        (resized image, r) so that re-draws do not decode the file again.
        """
        S, cell = self.cfg.input_size, self.cfg.cell_size
        img, r = image if image is not None else self.load_image(record)
        h, w = img.shape[:2]
        img, valid = warp_image(img, aug)
        k_person = augment_intrinsics(record.person_intrinsics(), r, aug, (h, w))
        k_image = augment_intrinsics(record.image_intrinsics(), r, aug, (h, w))
        cam_rot, cam_trans = augment_extrinsics(record.cam_rot, record.cam_trans, aug)
        gt = smpl_in_camera(record, cam_rot, cam_trans, aug.flip, self.bodies)
        j2ds = project(gt.j3ds, k_person)

        vis = visible_joints(j2ds, valid)
        keep = np.flatnonzero(vis.sum(axis=1) >= MIN_VISIBLE)
        if train and (not len(keep) or (vis[keep, :BODY_JOINTS].sum(axis=1) == 0).any()):
            return None
        j2ds, k_person = j2ds[keep], k_person[keep]
        poses, betas, transl = gt.poses[keep], gt.betas[keep], gt.transl[keep]
        verts, j3ds = gt.verts[keep], gt.j3ds[keep]
        genders = [record.genders[i] for i in keep]
        n = len(keep)

        focals = k_person[:, 0, 0]
        depths = np.stack([j3ds[:, 0, 2], j3ds[:, 0, 2] / focals], axis=1) if n else np.zeros((0, 2))
        boxes = joint_boxes(j2ds, (h, w), S) if n else np.zeros((0, 4))
        if train:
            img = occlude(img, cxcywh_to_xyxy(boxes) * S, rng)

        H, W = padded_size(h, w, self.cfg.pad_multiple)
        faces, edges = self._mesh_topology()
        scale_map = build_scale_map(verts, faces, k_person, boxes, depths[:, 1], (h, w), (H, W), cell, edges)

        canvas = np.zeros((H, W, 3), dtype=np.uint8)
        canvas[:h, :w] = img
        if train:
            canvas = color_jitter(canvas[:, :, ::-1], rng)[:, :, ::-1]
        tensor = normalize(np.ascontiguousarray(canvas))

        target = {
            "img_path": str(record.img_path), "ds": record.ds, "pnum": n,
            "img_size": torch.tensor([h, w], dtype=torch.int64),
            "resize_rate": float(r),
            "cam_intrinsics": _f32(k_image),
            "person_intrinsics": _f32(k_person.reshape(n, 3, 3)),
            "3d_valid": bool(record.valid_3d),
            "detect_all_people": bool(record.detect_all_people),
            "scale_map": torch.from_numpy(scale_map),
            "scale_map_hw": torch.tensor(scale_map.shape[:2], dtype=torch.int64),
            "boxes": _f32(boxes.reshape(n, 4)),
            "labels": torch.zeros(n, dtype=torch.int64),
            "poses": _f32(poses.reshape(n, 72)),
            "betas": _f32(betas.reshape(n, 10)),
            "transl": _f32(transl.reshape(n, 3)),
            "verts": _f32(verts),
            "j3ds": _f32(j3ds.reshape(n, NUM_JOINTS, 3)),
            "j2ds": _f32(j2ds.reshape(n, NUM_JOINTS, 2)),
            "j2ds_mask": torch.ones(n, NUM_JOINTS, 2, dtype=torch.bool),   # [quirk] visibility not kept
            "depths": _f32(depths),
            "focals": _f32(focals),
            "genders": genders,
        }
        if record.kid is not None:   # [quirk] as the original: one flag per valid person, NOT filtered
            target["kid"] = torch.as_tensor(record.kid, dtype=torch.bool)   # like the people (metrics only)
        return tensor, target


class HMRDataset(torch.utils.data.Dataset):
    """Training or evaluation samples of one dataset reader.

    Training draws random augmentation per call; a draw that leaves nobody usable is retried up to
    10 times, then once without rotation and zoom, then the next index is used (as the original).
    Evaluation uses the identity augmentation and never rejects.
    """

    def __init__(self, reader: Sequence[ImageRecord], bodies: BodyModels, cfg: ModelConfig,
                 train: bool = False, seed: int = 0) -> None:
        self.reader, self.cfg, self.train, self.seed = reader, cfg, train, seed
        self.builder = SampleBuilder(bodies, cfg)
        self._rng: np.random.Generator | None = None
        self._rng_key: int | None = None
        self._epoch_seed: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.reader)

    def set_epoch_seed(self, seed: int, epoch: int, offset: int = 0) -> None:
        """Draw each sample of this epoch from its own generator seeded by (seed, epoch, offset + index).

        (Not named ``set_epoch``: accelerate's sharded DataLoader calls ``dataset.set_epoch(iteration)``
        on any dataset that has one, which would replace this seeding with its own iteration count.)

        A sample then no longer depends on which process or DataLoader worker builds it, nor on what
        was drawn before it, so a resumed run repeats the steps an uninterrupted one takes. ``offset``
        is the dataset's position in a concatenation (see :func:`seed_epoch`), so indices stay global.
        """
        self._epoch_seed = (seed, epoch, offset)

    def rng(self, index: int) -> np.random.Generator:
        """The sample's generator (see :meth:`set_epoch_seed`); without one, a per-process stream
        (DataLoader workers get distinct streams, seeded from torch's worker seed)."""
        if self._epoch_seed is not None:
            seed, epoch, offset = self._epoch_seed
            return np.random.default_rng([seed, epoch, offset + index])
        info = torch.utils.data.get_worker_info()
        key = -1 if info is None else int(info.seed)
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, key + 1])
            self._rng_key = key
        return self._rng

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        if not self.train:
            out = self.builder.build(self.reader[index], AugParams(), None, train=False)
            assert out is not None
            return out
        rng = self.rng(index)
        for offset in range(len(self)):
            record = self.reader[(index + offset) % len(self)]
            image = self.builder.load_image(record)
            for attempt in range(MAX_AUG_TRIES + 1):
                aug = draw_aug(rng)
                if attempt == MAX_AUG_TRIES:
                    aug = AugParams(rot=0.0, flip=aug.flip, scale=1.0)
                out = self.builder.build(record, aug, rng, train=True, image=image)
                if out is not None:
                    return out
        raise SathmrError("no training image in this dataset has a person in view")


def seed_epoch(dataset: torch.utils.data.Dataset, seed: int, epoch: int, offset: int = 0) -> None:
    """:meth:`HMRDataset.set_epoch_seed` on every dataset inside ``dataset`` (through ``ConcatDataset``), each
    with its global index offset, so that seeding reaches them all however the sets are combined."""
    if isinstance(dataset, HMRDataset):
        dataset.set_epoch_seed(seed, epoch, offset)
    elif isinstance(dataset, torch.utils.data.ConcatDataset):
        for child, start in zip(dataset.datasets, [0, *dataset.cumulative_sizes[:-1]]):
            seed_epoch(child, seed, epoch, offset + start)
    else:
        raise TypeError(f"cannot seed a {type(dataset).__name__} per epoch: expected HMRDataset or ConcatDataset")


def collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """The model's input convention: a list of differently sized images and a list of targets."""
    return [b[0] for b in batch], [b[1] for b in batch]


def stack_images(images: Sequence[torch.Tensor], targets: Sequence[dict] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad normalised images into one (B,3,H,W) batch plus each image's (h, w).

    Like :func:`sathmr.runtime.preprocess.collate`, the extra area is filled with zeros of the *normalised*
    tensor; the network masks it out by ``img_hw``. Without targets, (h, w) is the tensor size.
    """
    H = max(t.shape[1] for t in images)
    W = max(t.shape[2] for t in images)
    batch = images[0].new_zeros(len(images), 3, H, W)
    for i, t in enumerate(images):
        batch[i, :, : t.shape[1], : t.shape[2]] = t
    if targets is not None:
        img_hw = torch.stack([t["img_size"].to(torch.int64) for t in targets])
    else:
        img_hw = torch.tensor([t.shape[1:] for t in images], dtype=torch.int64)
    return batch, img_hw
