"""A tracked person as skeletal motion: the rest skeleton of its body, and per seen frame the joints'
local rotations and the pelvis position, in the y-up glTF/OpenGL frame of :mod:`sathmr.outputs.meshes`.

The motion is read from a tracks file (``<name>_tracks.json``, :mod:`sathmr.video.sink`), so it is
exactly what that file says and can be rebuilt from it later:

* **rest shape**: one body per track, the track's smoothed betas baked in (with smoothing every frame
  holds the running mean of the track's estimates, so the last frame's is the mean of them all;
  without it, the mean of the frames' betas). Rest joints are SMPL's joint regressor on that shape.
* **rotations**: the 23 body joints' local rotations as the file gives them. The root's rotation is the
  file's ``global_orient`` preceded by the camera-to-glTF flip (180 deg about x), so the rest pose
  stands upright facing the camera (+z) and no extra node is needed.
* **root translation**: the pelvis joint of each frame (``joints3d[:, 0]``, i.e. the estimated pelvis),
  flipped into glTF; the mesh therefore sits where the frame's estimate put the pelvis.

What the skinned result drops is SMPL's pose blend shapes (pose correctives): :func:`skinned_vertices`
is that linear blend skinning (smplx's own ``lbs`` with zero pose directions), the reference the
Blender test compares against, and :func:`pose_blend_gap` measures how far it is from full SMPL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation, Slerp
from smplx.lbs import lbs

from sathmr.body.mannequin import JOINT_NAMES
from sathmr.common.errors import SathmrError
from sathmr.outputs.meshes import CV_TO_GL

NUM_JOINTS = 24


@dataclass
class Skeleton:
    """The rest pose of one body: SMPL's canonical frame (y up, facing +z), metres."""
    names: tuple[str, ...]
    parents: np.ndarray        # (24,) int, -1 for the root
    joints: np.ndarray         # (24, 3) rest joint centres
    verts: np.ndarray          # (V, 3) rest vertices with the betas baked in
    betas: np.ndarray          # (10,)

    @property
    def offsets(self) -> np.ndarray:
        """(24, 3) each joint relative to its parent (the root: its rest position)."""
        par = np.where(self.parents < 0, 0, self.parents)
        return self.joints - np.where((self.parents < 0)[:, None], 0.0, self.joints[par])


@dataclass
class TrackMotion:
    """One track's motion at the frames it was seen (glTF frame, see the module docstring)."""
    id: int
    frames: np.ndarray         # (F,) 0-based source frame indices, increasing
    rotations: Rotation        # (F * 24,) local joint rotations, frame-major; joint 0 includes the flip
    pelvis: np.ndarray         # (F, 3) root translation keys
    skeleton: Skeleton

    def quats(self) -> np.ndarray:
        """(F, 24, 4) x y z w, each joint's sign kept continuous over time (linear keys interpolate right)."""
        q = self.rotations.as_quat().reshape(len(self.frames), NUM_JOINTS, 4)
        for f in range(1, len(q)):
            q[f] = np.where((q[f] * q[f - 1]).sum(-1, keepdims=True) < 0, -q[f], q[f])
        return q

    def dense(self) -> tuple[np.ndarray, Rotation, np.ndarray]:
        """Every frame from the first seen to the last: (frames, rotations, pelvis), missed frames filled
        by interpolation (slerp per joint, linear for the pelvis), as glTF's LINEAR keys play them."""
        frames = np.arange(self.frames[0], self.frames[-1] + 1)
        rot = self.rotations.as_quat().reshape(len(self.frames), NUM_JOINTS, 4)
        per_joint = [Slerp(self.frames, Rotation.from_quat(rot[:, j]))(frames) if len(self.frames) > 1
                     else Rotation.from_quat(np.repeat(rot[:, j], len(frames), 0)) for j in range(NUM_JOINTS)]
        quats = np.stack([r.as_quat() for r in per_joint], axis=1).reshape(-1, 4)
        pelvis = np.stack([np.interp(frames, self.frames, self.pelvis[:, k]) for k in range(3)], axis=1)
        return frames, Rotation.from_quat(quats), pelvis


def rest_skeleton(body_model, betas: np.ndarray) -> Skeleton:
    """The body model's rest shape and joints for ``betas`` (10,)."""
    layer = body_model.smpl
    b = torch.as_tensor(np.asarray(betas, np.float64).reshape(1, -1), dtype=layer.shapedirs.dtype)
    verts = (layer.v_template + torch.einsum("vkl,bl->bvk", layer.shapedirs[..., : b.shape[1]], b))[0]
    joints = layer.J_regressor @ verts
    parents = layer.parents.cpu().numpy().astype(np.int64)
    parents[0] = -1
    return Skeleton(JOINT_NAMES, parents, joints.cpu().double().numpy(), verts.cpu().double().numpy(),
                    np.asarray(betas, np.float64))


def baked_betas(track: dict, smoothed: bool) -> np.ndarray:
    """One shape per track (module docstring)."""
    betas = np.asarray(track["smpl"]["betas"], np.float64)
    return betas[-1] if smoothed else betas.mean(axis=0)


def track_pose(track: dict) -> np.ndarray:
    """(F, 24, 3) axis-angle of a tracks-file track (global orientation first)."""
    smpl = track["smpl"]
    n = len(track["frames"])
    return np.concatenate([np.asarray(smpl["global_orient"], np.float64).reshape(n, 1, 3),
                           np.asarray(smpl["body_pose"], np.float64).reshape(n, 23, 3)], axis=1)


def track_motions(tracks: dict, body_model) -> list[TrackMotion]:
    """Every track of a parsed tracks file as a :class:`TrackMotion` on ``body_model``."""
    out = []
    smoothed = tracks.get("smoothing") is not None
    for tr in tracks["tracks"]:
        frames = np.asarray(tr["frames"], np.int64)
        if len(frames) == 0 or np.any(np.diff(frames) <= 0):
            raise SathmrError(f"track {tr.get('id')}: frames must be increasing and not empty")
        pose = track_pose(tr)
        flip = Rotation.from_matrix(CV_TO_GL)
        pose_rot = Rotation.from_rotvec(pose.reshape(-1, 3)).as_matrix().reshape(len(frames), NUM_JOINTS, 3, 3)
        pose_rot[:, 0] = flip.as_matrix() @ pose_rot[:, 0]
        pelvis = np.asarray(tr["joints3d"], np.float64)[:, 0] @ CV_TO_GL.T
        out.append(TrackMotion(int(tr["id"]), frames, Rotation.from_matrix(pose_rot.reshape(-1, 3, 3)), pelvis,
                               rest_skeleton(body_model, baked_betas(tr, smoothed))))
    return out


@torch.inference_mode()
def skinned_vertices(body_model, pose: np.ndarray, betas: np.ndarray, pelvis_cv: np.ndarray,
                     pose_blend: bool = False) -> np.ndarray:
    """(F, V, 3) vertices in the OpenCV camera frame of ``pose`` (F, 24, 3) on the shape ``betas`` (10,)
    with the pelvis at ``pelvis_cv`` (F, 3): linear blend skinning only (what a skinned glTF/Blender
    plays) unless ``pose_blend`` adds SMPL's pose correctives."""
    layer = body_model.smpl
    dt = layer.v_template.dtype
    n = len(pose)
    b = torch.as_tensor(np.repeat(np.asarray(betas, np.float64)[None], n, 0), dtype=dt)
    posedirs = layer.posedirs if pose_blend else torch.zeros_like(layer.posedirs)
    verts, joints = lbs(b, torch.as_tensor(pose, dtype=dt).reshape(n, 72), layer.v_template, layer.shapedirs[..., :10],
                        posedirs, layer.J_regressor, layer.parents, layer.lbs_weights)
    return (verts - joints[:, :1] + torch.as_tensor(pelvis_cv, dtype=dt)[:, None]).double().numpy()


def pose_blend_gap(tracks: dict, body_model) -> tuple[float, float]:
    """(mean, max) distance in metres, over every vertex of every tracked frame, between full SMPL and the
    skinned export (no pose blend shapes) of the same shape and pose."""
    smoothed = tracks.get("smoothing") is not None
    gaps = []
    for tr in tracks["tracks"]:
        args = (body_model, track_pose(tr), baked_betas(tr, smoothed), np.asarray(tr["joints3d"])[:, 0])
        gaps.append(np.linalg.norm(skinned_vertices(*args, pose_blend=True) - skinned_vertices(*args), axis=-1).ravel())
    g = np.concatenate(gaps) if gaps else np.zeros(1)
    return float(g.mean()), float(g.max())
