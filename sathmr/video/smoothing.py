"""Temporal smoothing of tracked people: a One-Euro filter on rotations and translation, betas held.

The One-Euro filter (Casiez, Roussel & Vogel, CHI 2012; what ROMP and AiOS smooth with) is a first-order
low-pass whose cutoff rises with the signal's speed, ``cutoff = min_cutoff + beta * |dx/dt|``: still
poses lose their jitter (low cutoff), fast motion keeps up (high cutoff). Per track:

* **rotations** (global orientation and the 23 body joints) are filtered as unit quaternions, each
  flipped to the hemisphere of the previous output first (q and -q are the same rotation), with one
  cutoff per joint from the speed of its quaternion; the result is re-normalised. Filtering axis-angle
  vectors directly would be wrong near 180 degrees, where the vector jumps.
* **translation** (the SMPL ``transl``) is filtered the same way with its own speed.
* **betas** are one body per track: the running mean of the track's estimates so far.

Joints, vertices and 2D joints are then recomputed from the smoothed parameters with the body model,
so every output of a smoothed person is consistent. Time is the frame's timestamp (index / fps for
files), so a missed frame is a longer step, not a skipped one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from sathmr.runtime.postprocess import Person, project
from sathmr.video.config import SmoothConfig


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    tau = 1.0 / (2 * np.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau / dt)


class OneEuro:
    """One-Euro filter on arrays (..., D): the speed, hence the cutoff, is taken per group of the last
    axis (a quaternion, a translation), so the components of one quantity move together."""

    def __init__(self, cfg: SmoothConfig):
        self.cfg = cfg
        self.x: np.ndarray | None = None     # (..., D) last output
        self.dx: np.ndarray | None = None    # (..., D) smoothed derivative per second
        self.t: float | None = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.x is None or self.t is None or t <= self.t:
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self.t
        a_d = _alpha(self.cfg.d_cutoff, dt)
        self.dx = a_d * (x - self.x) / dt + (1 - a_d) * self.dx
        speed = np.linalg.norm(self.dx, axis=-1, keepdims=True)                 # (..., 1)
        a = _alpha(self.cfg.min_cutoff + self.cfg.beta * speed, dt)
        self.x = a * x + (1 - a) * self.x
        self.t = t
        return self.x.copy()


class PersonSmoother:
    """One track's filters: pose as quaternions, translation, running-mean betas."""

    def __init__(self, cfg: SmoothConfig):
        self.rot = OneEuro(cfg)
        self.transl = OneEuro(cfg)
        self.betas_sum: np.ndarray | None = None
        self.n = 0

    def __call__(self, pose: np.ndarray, betas: np.ndarray, transl: np.ndarray, t: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(24, 3) axis-angle, (10,), (3,) at time ``t`` → the smoothed (pose, betas, transl)."""
        q = Rotation.from_rotvec(np.asarray(pose, dtype=np.float64)).as_quat()  # (24, 4) x y z w
        if self.rot.x is not None:
            q = np.where((q * self.rot.x).sum(-1, keepdims=True) < 0, -q, q)   # sign continuity
        q = self.rot(q, t)
        q /= np.linalg.norm(q, axis=-1, keepdims=True)
        self.rot.x = q.copy()
        b = np.asarray(betas, dtype=np.float64)
        self.betas_sum = b.copy() if self.betas_sum is None else self.betas_sum + b
        self.n += 1
        return Rotation.from_quat(q).as_rotvec(), self.betas_sum / self.n, self.transl(transl, t)


class Smoother:
    """Smooths the people of one stream of frames, per track id."""

    def __init__(self, cfg: SmoothConfig, body_model):
        self.cfg = cfg
        self.body_model = body_model
        self.tracks: dict[int, PersonSmoother] = {}

    @torch.inference_mode()
    def __call__(self, ids: Sequence[int], people: Sequence[Person], t: float, K: np.ndarray, scale: float,
                 live_ids: set[int] | None = None) -> list[Person]:
        """Smoothed copies of ``people`` (tracked as ``ids``) at time ``t``, with joints, vertices and 2D
        joints rebuilt from the smoothed parameters; ``K`` is the resized image's camera, ``scale`` its
        resize rate. State of tracks not in ``live_ids`` (dead ones) is dropped."""
        if live_ids is not None:
            self.tracks = {i: s for i, s in self.tracks.items() if i in live_ids or i in ids}
        if not people:
            return []
        params = [self.tracks.setdefault(i, PersonSmoother(self.cfg))(p.pose, p.betas, p.transl, t)
                  for i, p in zip(ids, people)]
        pose = torch.tensor(np.array([q for q, _, _ in params]), dtype=torch.float32).reshape(len(people), 72)
        betas = torch.tensor(np.array([b for _, b, _ in params]), dtype=torch.float32)
        transl = torch.tensor(np.array([tr for _, _, tr in params]), dtype=torch.float32)
        dev = next(iter(self.body_model.buffers())).device
        verts, joints = self.body_model(pose[:, :3].to(dev), pose[:, 3:].to(dev), betas.to(dev))
        j3d = joints.cpu() + transl[:, None]
        j2d = project(j3d[None], torch.as_tensor(K, dtype=torch.float32)[None])[0] / scale
        verts = verts.cpu() + transl[:, None]
        with_verts = people[0].vertices is not None
        return [replace(p, pose=pose[i].reshape(24, 3).numpy(), betas=betas[i].numpy(), transl=transl[i].numpy(),
                        joints3d=j3d[i].numpy(), joints2d=j2d[i].numpy(),
                        vertices=verts[i].numpy() if with_verts else None)
                for i, p in enumerate(people)]


def build_smoother(cfg: SmoothConfig | None, body_model) -> Smoother | None:
    return Smoother(cfg, body_model) if cfg is not None else None
