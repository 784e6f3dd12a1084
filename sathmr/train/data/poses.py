"""Body-pose priors of the synthetic scenes: realistic pose families, and the old uniform sampler.

People in photographs stand, walk, sit, crouch, raise or spread their arms; they rarely hold every joint
at an independent uniform angle. :func:`family_pose` draws a pose family (each with its own
amplitudes, e.g. a stride length or how high the arms are raised), then adds modest per-joint noise,
so the poses are diverse but structured, as real ones are, and a small network can learn them from a
silhouette. :func:`plausible_pose` (every joint uniform within anatomical limits) is kept as the harder,
unstructured prior.

Angles are radians in the SMPL joint frame (x: the subject's left, y up, z forward; rest = T-pose).
Families are written for the left side; the right side mirrors a rotation by negating its y and z
axis-angle components, and asymmetric families swap sides at random.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial.transform import Rotation

# --------------------------------------------------------------------------- uniform prior
# Uniform per-axis ranges of plausible poses.
_SYM = {  # joint: (lo, hi) per axis for the person's left side; the right side mirrors y and z
    1: ((-1.3, 0.4), (-0.3, 0.3), (-0.1, 0.5)),     # hip: flexion is −x
    4: ((0.0, 2.0), (-0.1, 0.1), (-0.1, 0.1)),      # knee bends backwards only
    7: ((-0.3, 0.4), (-0.2, 0.2), (-0.2, 0.2)),     # ankle
    10: ((-0.15, 0.15), (-0.1, 0.1), (-0.1, 0.1)),  # foot
    13: ((-0.15, 0.15), (-0.15, 0.15), (-0.2, 0.2)),  # collar
    16: ((-0.5, 0.5), (-0.7, 0.7), (-1.3, 0.3)),    # shoulder: arms down is −z for the left arm
    18: ((-0.2, 0.2), (-2.2, 0.0), (-0.2, 0.2)),    # elbow: forward bend is −y for the left arm
    20: ((-0.4, 0.4), (-0.3, 0.3), (-0.5, 0.5)),    # wrist
    22: ((-0.2, 0.2), (-0.2, 0.2), (-0.2, 0.2)),    # hand
}
_CENTRAL = {3: 0.3, 6: 0.2, 9: 0.2, 12: 0.3, 15: 0.35}   # spine, neck, head: ± on every axis
_MIRROR = np.array([1.0, -1.0, -1.0])                     # left → right axis-angle


def plausible_pose(rng: np.random.Generator) -> np.ndarray:
    """(69,) body pose with per-joint anatomical limits (left/right sampled independently)."""
    pose = np.zeros((24, 3))
    for joint, amp in _CENTRAL.items():
        pose[joint] = rng.uniform(-amp, amp, 3)
    for left, ranges in _SYM.items():
        lo, hi = np.array(ranges).T
        pose[left] = rng.uniform(lo, hi)
        right = rng.uniform(lo, hi) * _MIRROR
        pose[left + 1] = right
    return pose[1:].reshape(69)


# --------------------------------------------------------------------------- pose families
POSE_NOISE = 0.06           # per-joint, per-axis Gaussian noise (radians) added to every family pose
HIP, KNEE, ANKLE, SHOULDER, ELBOW = 1, 4, 7, 16, 18       # left joints; right = left + 1
SPINE = (3, 6, 9)


def _rot(*steps: tuple[str, float]) -> np.ndarray:
    """Axis-angle of elementary rotations applied in order (the first step acts first)."""
    r = Rotation.identity()
    for axis, angle in steps:
        r = Rotation.from_euler(axis, angle) * r
    return r.as_rotvec()


class _Pose:
    """A (24, 3) axis-angle pose being built, with left/right helpers."""

    def __init__(self) -> None:
        self.aa = np.zeros((24, 3))

    def both(self, joint: int, aa: np.ndarray) -> None:
        self.aa[joint], self.aa[joint + 1] = aa, aa * _MIRROR

    def side(self, joint: int, right: bool, aa: np.ndarray) -> None:
        self.aa[joint + right] = aa * _MIRROR if right else aa


def _arm_down(rng: np.random.Generator, swing: float = 0.0) -> np.ndarray:
    """Left arm hanging (lowered in the frontal plane), swung forward by ``swing``."""
    return _rot(("z", -rng.uniform(1.1, 1.4)), ("x", -swing))


def _legs_standing(p: _Pose, rng: np.random.Generator) -> None:
    for right in (False, True):
        p.side(HIP, right, _rot(("z", rng.uniform(0.0, 0.15)), ("x", rng.normal(0.0, 0.08))))
        p.side(KNEE, right, np.array([rng.uniform(0.0, 0.2), 0.0, 0.0]))


def _elbows(p: _Pose, rng: np.random.Generator, lo: float, hi: float) -> None:
    for right in (False, True):
        p.side(ELBOW, right, np.array([0.0, -rng.uniform(lo, hi), 0.0]))


def _stand(p: _Pose, rng: np.random.Generator) -> None:
    _legs_standing(p, rng)
    for right in (False, True):
        p.side(SHOULDER, right, _arm_down(rng, rng.normal(0.0, 0.15)))
    _elbows(p, rng, 0.0, 0.4)


def _walk(p: _Pose, rng: np.random.Generator) -> None:
    stride = rng.uniform(0.25, 0.6)
    lead = bool(rng.integers(2))                          # which leg is in front
    p.side(HIP, lead, _rot(("x", -stride)))
    p.side(HIP, not lead, _rot(("x", 0.6 * stride)))
    p.side(KNEE, lead, np.array([rng.uniform(0.05, 0.3), 0.0, 0.0]))
    p.side(KNEE, not lead, np.array([stride * rng.uniform(0.8, 1.5), 0.0, 0.0]))
    swing = stride * rng.uniform(0.6, 1.0)                # arms swing against the legs
    p.side(SHOULDER, lead, _arm_down(rng, -swing))
    p.side(SHOULDER, not lead, _arm_down(rng, swing))
    _elbows(p, rng, 0.1, 0.6)


def _arms_up(p: _Pose, rng: np.random.Generator) -> None:
    _legs_standing(p, rng)
    for right in (False, True):
        p.side(SHOULDER, right, _rot(("z", rng.uniform(0.8, 1.4)), ("y", -rng.uniform(0.0, 0.4))))
    _elbows(p, rng, 0.0, 0.5)


def _arms_out(p: _Pose, rng: np.random.Generator) -> None:
    _legs_standing(p, rng)
    for right in (False, True):
        p.side(SHOULDER, right, _rot(("z", -rng.uniform(-0.15, 0.35)), ("y", -rng.uniform(0.0, 0.5))))
    _elbows(p, rng, 0.0, 0.3)


def _wave(p: _Pose, rng: np.random.Generator) -> None:
    """One arm raised to the side with the forearm up, the other hanging."""
    _legs_standing(p, rng)
    up = bool(rng.integers(2))
    p.side(SHOULDER, up, _rot(("x", -np.pi / 2), ("z", rng.uniform(0.0, 0.6))))
    p.side(ELBOW, up, np.array([0.0, -rng.uniform(1.2, 1.9), 0.0]))
    p.side(SHOULDER, not up, _arm_down(rng, rng.normal(0.0, 0.15)))
    p.side(ELBOW, not up, np.array([0.0, -rng.uniform(0.0, 0.4), 0.0]))


def _reach(p: _Pose, rng: np.random.Generator) -> None:
    """One or both arms reaching forward."""
    _legs_standing(p, rng)
    both = rng.random() < 0.5
    first = bool(rng.integers(2))
    for right in (False, True):
        if both or right == first:
            p.side(SHOULDER, right, _rot(("y", -rng.uniform(1.1, 1.5)), ("z", -rng.uniform(0.0, 0.4))))
            p.side(ELBOW, right, np.array([0.0, -rng.uniform(0.0, 0.5), 0.0]))
        else:
            p.side(SHOULDER, right, _arm_down(rng))


def _legs_bent(p: _Pose, rng: np.random.Generator, hip: tuple[float, float], knee: tuple[float, float]) -> None:
    for right in (False, True):
        h, k = rng.uniform(*hip), rng.uniform(*knee)
        p.side(HIP, right, _rot(("x", -h), ("z", rng.uniform(0.05, 0.4))))
        p.side(KNEE, right, np.array([k, 0.0, 0.0]))
        p.side(ANKLE, right, np.array([float(np.clip(h - k, -0.5, 0.4)), 0.0, 0.0]))   # foot near level


def _sit(p: _Pose, rng: np.random.Generator) -> None:
    _legs_bent(p, rng, (1.2, 1.6), (1.2, 1.7))
    p.aa[SPINE[0]] = (rng.uniform(-0.1, 0.2), 0.0, 0.0)
    for right in (False, True):                           # hands on the lap
        p.side(SHOULDER, right, _arm_down(rng, rng.uniform(0.3, 0.7)))
    _elbows(p, rng, 0.6, 1.3)


def _crouch(p: _Pose, rng: np.random.Generator) -> None:
    _legs_bent(p, rng, (1.3, 1.8), (1.8, 2.3))
    for j in SPINE:
        p.aa[j] = (rng.uniform(0.1, 0.25), 0.0, 0.0)      # leaning forward
    for right in (False, True):
        p.side(SHOULDER, right, _rot(("z", -rng.uniform(0.6, 1.2)), ("y", -rng.uniform(0.5, 1.1))))
    _elbows(p, rng, 0.3, 1.2)


# name → (builder, probability): standing and walking are the most common, as in photographs
POSE_FAMILIES: dict[str, tuple[Callable[[_Pose, np.random.Generator], None], float]] = {
    "stand": (_stand, 0.3), "walk": (_walk, 0.25), "arms_up": (_arms_up, 0.05), "arms_out": (_arms_out, 0.1),
    "wave": (_wave, 0.1), "reach": (_reach, 0.1), "sit": (_sit, 0.05), "crouch": (_crouch, 0.05),
}


def family_pose(rng: np.random.Generator, family: str | None = None, noise: float = POSE_NOISE) -> np.ndarray:
    """(69,) body pose of a pose family (drawn by :data:`POSE_FAMILIES` probability unless given)."""
    names = list(POSE_FAMILIES)
    if family is None:
        probs = np.array([POSE_FAMILIES[n][1] for n in names])
        family = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    p = _Pose()
    POSE_FAMILIES[family][0](p, rng)
    p.aa[1:] += rng.normal(0.0, noise, (23, 3))
    return p.aa[1:].reshape(69)


POSE_PRIORS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {"families": family_pose,
                                                                      "uniform": plausible_pose}
