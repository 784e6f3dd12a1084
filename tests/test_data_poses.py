"""The synthetic scenes' pose prior (pose families), heading distribution, front cue and placement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sathmr.runtime.postprocess import box_iou
from sathmr.train.data.geometry import matrix_to_rotvec, rotvec_to_matrix
from sathmr.train.data.pipeline import BodyModels
from sathmr.train.data.poses import POSE_FAMILIES, family_pose, plausible_pose
from sathmr.train.data.synthetic import (
    COLOR_RANGE,
    FACING_SPREAD,
    MAX_OVERLAP,
    PATCH_COLOR,
    camera_facing_orient,
    front_faces,
    front_patch,
    make_scene,
    two_tone,
)

# SMPL joints (body frame: x = the subject's left, y up, z forward)
PELVIS, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE, HEAD, L_SHOULDER, R_SHOULDER, L_WRIST, R_WRIST = 0, 4, 5, 7, 8, 15, 16, 17, 20, 21


def rest_joints(body_tiny, poses: np.ndarray) -> np.ndarray:
    """(n,24,3) joints of body poses with no global rotation and mean shape, pelvis at the origin."""
    with torch.no_grad():
        _, j = body_tiny(torch.zeros(len(poses), 3), torch.as_tensor(poses, dtype=torch.float32),
                         torch.zeros(len(poses), 10))
    j = j[:, :24].double().numpy()
    return j - j[:, :1]


def draws(family: str, n: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([family_pose(rng, family) for _ in range(n)])


def test_each_pose_family_looks_like_its_name(body_tiny) -> None:
    j = {f: rest_joints(body_tiny, draws(f)) for f in POSE_FAMILIES}
    y, z = 1, 2
    wrists, shoulders = [L_WRIST, R_WRIST], [L_SHOULDER, R_SHOULDER]
    below = j["stand"][:, wrists, y] < j["stand"][:, shoulders, y] - 0.3
    assert below.all()                                                   # arms hang
    assert (j["arms_up"][:, wrists, y] > j["arms_up"][:, [HEAD], y]).all()   # hands above the head
    out = j["arms_out"]
    assert (np.abs(out[:, wrists, y] - out[:, shoulders, y]) < 0.35).all() and (np.abs(out[:, wrists, 0]) > 0.4).all()
    raised = j["wave"][:, wrists, y] > j["wave"][:, shoulders, y]
    assert (raised.sum(1) == 1).all() and raised[:, 0].any() and raised[:, 1].any()   # either hand waves
    assert (j["reach"][:, wrists, z].max(1) > 0.3).all()                # a hand in front
    stride = np.abs(j["walk"][:, L_ANKLE, z] - j["walk"][:, R_ANKLE, z])
    assert (stride > 0.1).all()
    standing_height = j["stand"][:, PELVIS, y] - j["stand"][:, [L_ANKLE, R_ANKLE], y].min(1)
    for low in ("sit", "crouch"):
        assert (j[low][:, [L_KNEE, R_KNEE], z] > 0.2).all()              # knees forward
        height = j[low][:, PELVIS, y] - j[low][:, [L_ANKLE, R_ANKLE], y].min(1)
        assert height.max() < 0.75 * standing_height.min()


def test_family_poses_are_seeded_noisy_and_drawn_by_probability() -> None:
    a, b = draws("stand", 5, seed=3), draws("stand", 5, seed=3)
    assert np.array_equal(a, b)
    assert np.abs(np.diff(a, axis=0)).max() > 0.05                       # per-draw variation and noise
    assert np.array_equal(family_pose(np.random.default_rng(1), "walk", noise=0.0),
                          family_pose(np.random.default_rng(1), "walk", noise=0.0))
    # the family mixture is drawn by its probabilities: compare the first joint's spread per family
    rng = np.random.default_rng(0)
    mixed = np.stack([family_pose(rng) for _ in range(400)])
    assert mixed.shape == (400, 69) and np.abs(mixed).max() < np.pi
    probs = np.array([p for _, p in POSE_FAMILIES.values()])
    assert probs.sum() == pytest.approx(1.0)
    with pytest.raises(KeyError):
        family_pose(rng, "cartwheel")


def test_families_are_easier_than_uniform_joints(body_tiny) -> None:
    """The benchmark's floor: the best constant pose is far closer to family poses than to uniform ones."""
    def constant_pose_error(poses: np.ndarray) -> float:
        joints = rest_joints(body_tiny, poses)
        mean = rest_joints(body_tiny, poses.mean(0, keepdims=True))
        return float(np.linalg.norm(joints - mean, axis=-1).mean())

    rng = np.random.default_rng(0)
    families = np.stack([family_pose(rng) for _ in range(300)])
    uniform = np.stack([plausible_pose(rng) for _ in range(300)])
    assert constant_pose_error(families) < 0.8 * constant_pose_error(uniform)


def test_half_of_the_people_roughly_face_the_camera() -> None:
    rng = np.random.default_rng(0)
    facing = rotvec_to_matrix(np.array([np.pi, 0.0, 0.0]))[0]            # SMPL +z towards the camera
    forward = np.stack([(rotvec_to_matrix(camera_facing_orient(rng))[0] @ [0, 0, 1.0]) for _ in range(2000)])
    heading = np.arccos(np.clip(forward @ (facing @ [0, 0, 1.0]), -1, 1))
    near = (heading < FACING_SPREAD + 0.25).mean()                      # + the lean
    assert 0.55 < near < 0.75                                           # 50 % facing + 1/4 of the rest
    assert (heading > 2.5).mean() > 0.05                                 # and some are seen from behind
    only = np.stack([camera_facing_orient(rng, facing=1.0) for _ in range(200)])
    fwd = np.einsum("nij,j->ni", rotvec_to_matrix(only), [0, 0, 1.0])
    assert (np.arccos(np.clip(fwd @ (facing @ [0, 0, 1.0]), -1, 1)) < FACING_SPREAD + 0.25).all()


def test_the_front_cue_is_a_bright_face_and_chest_seen_only_from_the_front(smpl_tiny) -> None:
    from sathmr.outputs.render import render_meshes

    bm = BodyModels(smpl_tiny).get("neutral")
    faces = np.asarray(bm.faces, dtype=np.int64)
    patch, front = front_patch(bm, faces), front_faces(bm, faces)
    assert patch.any() and not (patch & ~front).any() and patch.mean() < 0.15
    colors = two_tone(np.array([[COLOR_RANGE[1]] * 3], np.uint8), front, patch)
    assert (colors[0, patch] == PATCH_COLOR).all() and (colors[0, ~patch] <= COLOR_RANGE[1]).all()
    k = np.array([[500.0, 0, 112], [0, 500.0, 112], [0, 0, 1]])
    upright = rotvec_to_matrix(np.array([np.pi, 0.0, 0.0]))[0]
    bright = []
    for heading in (0.0, np.pi):                                         # facing the camera, then turned away
        orient = matrix_to_rotvec(upright @ rotvec_to_matrix(np.array([0.0, heading, 0.0]))[0])
        with torch.no_grad():
            verts, _ = bm(torch.tensor(orient, dtype=torch.float32), torch.zeros(1, 69), torch.zeros(1, 10))
        img = render_meshes(np.zeros((224, 224, 3), np.uint8), [verts[0].double().numpy() + [0, 0, 5.0]], faces, k, colors)
        bright.append(int((img.min(axis=2) > COLOR_RANGE[1] + 20).sum()))
    assert bright[0] > 100 and bright[1] == 0


def test_people_of_a_scene_do_not_overlap_much(smpl_tiny) -> None:
    bodies = BodyModels(smpl_tiny)
    pairs = 0
    for i in range(12):
        scene = make_scene(np.random.default_rng([9, i]), bodies, 448)
        k = scene.annotation["cam_int"]
        uv = scene.verts[..., :2] / scene.verts[..., 2:] * k[[0, 1], [0, 1]] + k[:2, 2]
        boxes = np.concatenate([uv.min(1), uv.max(1)], axis=1)
        iou = box_iou(boxes, boxes)[np.triu_indices(len(boxes), 1)]
        pairs += len(iou)
        assert (iou <= MAX_OVERLAP + 1e-9).all()
        assert 1 <= len(boxes) <= 4
    assert pairs > 5
