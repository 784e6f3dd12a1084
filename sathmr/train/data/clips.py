"""Synthetic clips with known identities, and how well a tracker keeps them: the scenes know who is who.

:func:`walking_clip` renders mannequins (the synthetic body model) walking across a still background at
constant speed, each with its own shape, pose and colour; every frame comes with the ground-truth box of
every person, keyed by identity. :func:`track_scores` matches what a tracker reported in each frame to
those boxes (Hungarian on box IoU, matched at IoU >= 0.5) and counts what MOT benchmarks count: MOTA,
IDF1, identity switches, and fragmentation as the number of track ids each person was given.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from sathmr.outputs.render import render_meshes
from sathmr.runtime.postprocess import box_iou
from sathmr.train.data.pipeline import BodyModels
from sathmr.train.data.poses import POSE_PRIORS
from sathmr.train.data.synthetic import (
    COLOR_RANGE,
    camera_facing_orient,
    front_faces,
    front_patch,
    procedural_background,
    two_tone,
)

MATCH_IOU = 0.5


@dataclass
class Clip:
    frames: list[np.ndarray]                  # BGR uint8
    boxes: list[dict[int, np.ndarray]]        # per frame: identity → (4,) x0 y0 x1 y1 (people in view)


def walking_clip(bodies: BodyModels, n_people: int, n_frames: int = 16, seed: int = 0,
                 hw: tuple[int, int] = (336, 448), height: float = 0.55, speed_px: float = 6.0) -> Clip:
    """``n_people`` mannequins spread across the image, each walking left or right at ``speed_px`` pixels
    per frame (at its depth), apparent height ``height`` of the image height."""
    rng = np.random.default_rng([seed, n_people])
    h, w = hw
    focal = w / (2 * np.tan(np.deg2rad(30)))
    k = np.array([[focal, 0.0, w / 2], [0.0, focal, h / 2], [0.0, 0.0, 1.0]])
    bm = bodies.get("neutral")
    betas = np.clip(rng.normal(0, 1, (n_people, 10)), -2, 2)
    pose = np.stack([POSE_PRIORS["families"](rng) for _ in range(n_people)])
    orient = np.stack([camera_facing_orient(rng, 1.0) for _ in range(n_people)])
    with torch.no_grad():
        verts, joints = bm(*(torch.as_tensor(a, dtype=torch.float32) for a in (orient, pose, betas)))
    verts = verts.double().numpy() - joints[:, :1].double().numpy()        # pelvis at the origin
    depth = focal * 1.7 / (height * h) * rng.uniform(0.9, 1.1, n_people)
    x0 = (np.arange(n_people) + 0.5) / n_people * w + rng.uniform(-0.05, 0.05, n_people) * w
    step = speed_px * rng.choice([-1.0, 1.0], n_people)
    colors = two_tone(rng.uniform(*COLOR_RANGE, (n_people, 3)).astype(np.uint8), front_faces(bm, bodies.faces),
                      front_patch(bm, bodies.faces))
    background = procedural_background(rng, h, w)
    frames, boxes = [], []
    for f in range(n_frames):
        u = x0 + f * step
        pelvis = np.stack([(u - w / 2) * depth / focal, np.full(n_people, 0.0), depth], 1)
        placed = [verts[i] + pelvis[i] for i in range(n_people)]
        frames.append(render_meshes(background, placed, bodies.faces, k, colors))
        fb = {}
        for i, v in enumerate(placed):
            uv = v[:, :2] / v[:, 2:3] * focal + k[:2, 2]
            box = np.concatenate([uv.min(0), uv.max(0)]).clip([0, 0, 0, 0], [w, h, w, h])
            if (box[2] - box[0]) * (box[3] - box[1]) > 0.2 * np.prod(uv.max(0) - uv.min(0)):   # mostly in view
                fb[i + 1] = box
        boxes.append(fb)
    return Clip(frames, boxes)


def track_scores(truth: Sequence[dict[int, np.ndarray]], reported: Sequence[Sequence[tuple[int, Sequence[float]]]]) -> dict:
    """MOT figures of ``reported`` (per frame: (track id, box) pairs) against ``truth`` (per frame:
    identity → box): MOTA, IDF1, identity switches, false positives/negatives, and per identity the
    track ids it was given (one each is perfect)."""
    gt_total = fp = fn = switches = 0
    last: dict[int, int] = {}
    co = defaultdict(int)                       # (identity, track id) → frames matched together
    ids_of: dict[int, set[int]] = defaultdict(set)
    pred_total = 0
    for gt, rep in zip(truth, reported):
        gids = list(gt)
        gt_total += len(gids)
        pred_total += len(rep)
        if gids and rep:
            iou = box_iou(np.array([gt[g] for g in gids]), np.array([b for _, b in rep], dtype=np.float64))
            rows, cols = linear_sum_assignment(-iou)
            pairs = [(gids[r], rep[c][0]) for r, c in zip(rows, cols) if iou[r, c] >= MATCH_IOU]
        else:
            pairs = []
        fn += len(gids) - len(pairs)
        fp += len(rep) - len(pairs)
        for g, t in pairs:
            switches += g in last and last[g] != t
            last[g] = t
            co[g, t] += 1
            ids_of[g].add(t)
    gl, tl = sorted({g for g, _ in co}), sorted({t for _, t in co})
    idtp = 0
    if co:
        m = np.array([[co.get((g, t), 0) for t in tl] for g in gl])
        r, c = linear_sum_assignment(-m)
        idtp = int(m[r, c].sum())
    return {"mota": 1 - (fn + fp + switches) / max(gt_total, 1), "idf1": 2 * idtp / max(gt_total + pred_total, 1),
            "id_switches": switches, "false_negatives": fn, "false_positives": fp, "gt": gt_total,
            "ids_per_person": {g: len(ids_of.get(g, ())) for g in sorted({g for fr in truth for g in fr})}}
