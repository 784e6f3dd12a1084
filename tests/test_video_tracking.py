"""Tracker and smoother on synthetic detection streams with known ground truth (no network involved)."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from sathmr.common.errors import SathmrError
from sathmr.runtime.postprocess import Person, box_iou
from sathmr.video.smoothing import OneEuro, SmoothConfig, Smoother
from sathmr.video.tracker import TrackerConfig, build_tracker

FOCAL, CX, CY = 1000.0, 640.0, 360.0


def person(pelvis, body, score=0.9, rng=None, noise=0.0, box_jitter=0.0) -> Person:
    """A detection of a body (24 root-relative joints) with its pelvis at ``pelvis`` (camera frame)."""
    rng = rng or np.random.default_rng(0)
    pelvis = np.asarray(pelvis, float) + rng.normal(0, noise, 3)
    joints = np.zeros((45, 3))
    joints[:24] = pelvis + body + rng.normal(0, noise / 3, (24, 3))
    u, v = FOCAL * joints[:24, 0] / joints[:24, 2] + CX, FOCAL * joints[:24, 1] / joints[:24, 2] + CY
    box = np.array([u.min(), v.min(), u.max(), v.max()]) + rng.normal(0, box_jitter, 4)
    return Person(score=score, box=box.tolist(), pose=np.zeros((24, 3)), betas=np.zeros(10), transl=pelvis,
                  joints3d=joints, joints2d=np.zeros((45, 2)), vertices=None, query=0)


def random_body(rng) -> np.ndarray:
    """24 joints of a 1.7 m tall figure (root-relative), y down, with a person-specific pose."""
    body = rng.normal(0, 0.12, (24, 3))
    body[:, 1] = np.linspace(-0.7, 0.9, 24)[rng.permutation(24)] * 0.6
    body[0] = 0
    return body


def scenario(seed=0, frames=60, miss=0.1, false_pos=0.3):
    """Three people walking (two cross in the image at different depths), 10 % missed detections,
    a random false positive (label -1) in 30 % of frames, a duplicate of person 0 (label -2) in every fifth."""
    rng = np.random.default_rng(seed)
    bodies = [random_body(rng) for _ in range(3)]
    paths = [lambda t: (-1.5 + 0.05 * t, 0.2, 5.0),                   # walks right, far
             lambda t: (1.5 - 0.05 * t, 0.3, 3.0),                    # walks left, near: crosses person 0
             lambda t: (0.3 * np.sin(0.1 * t), -0.1, 7.0 + 0.02 * t)]  # sways at the back
    stream, truth = [], []
    for f in range(frames):
        dets, labels = [], []
        for k, (path, body) in enumerate(zip(paths, bodies)):
            if f > 0 and rng.random() < miss:
                continue
            dets.append(person(path(f), body, 0.8 + 0.1 * rng.random(), rng, noise=0.03, box_jitter=2.0))
            labels.append(k)
        if f % 5 == 2 and 0 in labels:                                 # SAT-HMR has no NMS: duplicates happen
            dup = person(paths[0](f), bodies[0], 0.5, rng, noise=0.01, box_jitter=1.0)
            dets.append(dup)
            labels.append(-2)
        if f > 2 and rng.random() < false_pos:
            dets.append(person(rng.uniform([-3, -1, 2], [3, 1, 9]), random_body(rng), 0.4, rng))
            labels.append(-1)
        order = rng.permutation(len(dets))
        stream.append([dets[i] for i in order])
        truth.append([labels[i] for i in order])
    return stream, truth


def run_tracker(stream, cfg=TrackerConfig()):
    tracker = build_tracker(cfg)
    out = []
    for f, people in enumerate(stream):
        tracked = tracker.update(people, f)
        index = {id(p): i for i, p in enumerate(people)}
        out.append({index[id(t.person)]: t.id for t in tracked})
    return out


def test_each_person_keeps_one_id_through_crossings_misses_and_false_positives():
    stream, truth = scenario()
    ids = run_tracker(stream)
    per_person = {k: set() for k in range(3)}
    for labels, frame_ids in zip(truth, ids):
        reported = {k: [frame_ids[d] for d, lab in enumerate(labels) if d in frame_ids and lab in (k, -2 - k)]
                    for k in range(3)}
        for k in range(3):
            if k in labels:      # a person in view is reported once (it or its duplicate, not both)
                assert len(reported[k]) == 1, (labels, frame_ids)
                per_person[k].update(reported[k])
        assert all(d not in frame_ids for d, lab in enumerate(labels) if lab == -1), "false positives get no id"
    assert all(len(s) == 1 for s in per_person.values()), per_person
    assert sorted(set.union(*per_person.values())) == [1, 2, 3]           # three small stable integers


def test_3d_terms_keep_people_apart_where_boxes_alone_swap_them():
    """A child at 3 m and an adult at 6 m have the same box; they walk towards each other, meet and turn
    back. Boxes (with constant-velocity prediction) swap them at the turn; pelvis depth and pose do not."""
    rng = np.random.default_rng(5)
    adult = random_body(rng)
    child = 0.5 * random_body(rng)
    x = lambda f: 0.1 * (10 - abs(f - 10))                   # noqa: E731  0 → 1 → 0 (in 2D: meet, turn back)
    stream = [[person((-1.2 + 1.2 * x(f), 0.0, 6.0), adult), person((0.6 - 0.6 * x(f), 0.0, 3.0), child)]
              for f in range(21)]

    def ids(cfg):
        tracker = build_tracker(cfg)
        return [tuple(t.id for t in tracker.update(people, f)) for f, people in enumerate(stream)]

    assert set(ids(TrackerConfig())) == {(1, 2)}
    boxes_only = ids(TrackerConfig(w_pelvis=0.0, w_pose=0.0, max_cost=0.99))
    assert boxes_only[0] == (1, 2) and boxes_only[-1] != (1, 2)


def test_missed_frames_keep_the_id_until_max_missed_then_a_new_one():
    rng = np.random.default_rng(1)
    body = random_body(rng)
    cfg = TrackerConfig(max_missed=5)
    tracker = build_tracker(cfg)
    seen = {}
    gap_short, gap_long = range(10, 14), range(20, 27)     # 4 frames (kept), 7 frames (> 5: retired)
    for f in range(35):
        if f in gap_short or f in gap_long:
            assert tracker.update([], f) == []
            continue
        out = tracker.update([person((0.02 * f, 0, 4), body, rng=rng, noise=0.005)], f)
        seen[f] = out[0].id if out else None
    assert {seen[f] for f in range(0, 20) if f not in gap_short} == {1}
    assert seen[27] is None                # a new track is tentative in its first frame ...
    assert {seen[f] for f in range(28, 35)} == {2}   # ... and confirmed with the next id


def test_birth_needs_min_hits_after_the_first_frames():
    rng = np.random.default_rng(2)
    a, b = random_body(rng), random_body(rng)
    tracker = build_tracker(TrackerConfig(min_hits=3))
    assert [t.id for t in tracker.update([person((0, 0, 4), a)], 0)] == [1]   # first frames: at once
    for f in range(1, 6):
        tracker.update([person((0, 0, 4), a)], f)
    out = [tracker.update([person((0, 0, 4), a), person((2, 0, 6), b)], f) for f in range(6, 10)]
    assert [sorted(t.id for t in o) for o in out] == [[1], [1], [1, 2], [1, 2]]


def test_box_iou_and_config_checks():
    a = np.array([[0, 0, 10, 10], [0, 0, 1, 1]], float)
    b = np.array([[5, 5, 15, 15], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(box_iou(a, b), [[25 / 175, 0], [0, 0]])
    with pytest.raises(SathmrError):
        TrackerConfig(min_hits=0)
    with pytest.raises(SathmrError):
        SmoothConfig(min_cutoff=0)


# ------------------------------------------------------------------------------------------- smoothing
def test_one_euro_removes_jitter_of_a_still_signal_and_follows_a_step():
    rng = np.random.default_rng(0)
    f = OneEuro(SmoothConfig(min_cutoff=1.0, beta=0.0))
    noisy = 1.0 + rng.normal(0, 0.1, (300, 3))
    out = np.array([f(x, i / 30) for i, x in enumerate(noisy)])
    assert out[30:].std(0).max() < 0.4 * noisy[30:].std(0).min()      # theory: sqrt(a / (2 - a)) = 0.31
    f = OneEuro(SmoothConfig(min_cutoff=1.0, beta=5.0))
    step = np.array([f(np.array([0.0 if i < 30 else 1.0]), i / 30) for i in range(90)])
    assert step[-1, 0] > 0.95                                        # converges to the new value


def _walk(frames: int, fps: float, rng):
    """Ground-truth SMPL parameters of a person moving smoothly, plus noisy estimates of them."""
    t = np.arange(frames) / fps
    pose = np.zeros((frames, 24, 3))
    pose[:, 0] = [np.pi, 0, 0]                                       # upright in the camera frame
    pose[:, 0, 1] = 0.3 * np.sin(0.5 * t)
    for j, amp in ((1, 0.5), (2, -0.5), (4, 0.8), (5, 0.8), (16, 0.4), (17, -0.4)):
        pose[:, j, 0] = amp * np.sin(2 * np.pi * 0.4 * t + j)
    transl = np.stack([0.4 * t - 1, 0.1 * np.sin(t), 4 + 0.1 * t], 1)
    betas = np.tile(rng.normal(0, 1, 10), (frames, 1))
    noisy = (Rotation.from_rotvec(rng.normal(0, 0.06, (frames * 24, 3))) * Rotation.from_rotvec(pose.reshape(-1, 3))
             ).as_rotvec().reshape(frames, 24, 3)
    return pose, betas, transl, noisy, betas + rng.normal(0, 0.3, betas.shape), transl + rng.normal(0, 0.03, transl.shape)


def _joints(body, pose, betas, transl):
    with torch.no_grad():
        _, j = body(torch.tensor(pose[:, 0], dtype=torch.float32), torch.tensor(pose[:, 1:].reshape(len(pose), -1),
                    dtype=torch.float32), torch.tensor(betas, dtype=torch.float32))
    return j.numpy() + transl[:, None]


def test_smoothing_lowers_joint_jitter_and_error_on_a_noisy_clip(body_tiny):
    rng = np.random.default_rng(0)
    fps, frames = 30.0, 90
    pose, betas, transl, n_pose, n_betas, n_transl = _walk(frames, fps, rng)
    K = np.array([[FOCAL, 0, CX], [0, FOCAL, CY], [0, 0, 1]])
    noisy_people = [Person(0.9, [0, 0, 1, 1], n_pose[f], n_betas[f], n_transl[f], np.zeros((45, 3)),
                           np.zeros((45, 2)), np.zeros((1, 3)), 0) for f in range(frames)]
    smoother = Smoother(SmoothConfig(), body_tiny)
    out = [smoother([7], [p], f / fps, K, 1.0)[0] for f, p in enumerate(noisy_people)]
    truth = _joints(body_tiny, pose, betas, transl)
    raw = _joints(body_tiny, n_pose, n_betas, n_transl)
    smooth = np.stack([p.joints3d for p in out])

    def jitter(j):   # mean frame-to-frame change of the joints' acceleration-free motion (2nd difference)
        return np.linalg.norm(j[2:] - 2 * j[1:-1] + j[:-2], axis=-1).mean()

    assert jitter(smooth) < 0.35 * jitter(raw)
    err = lambda j: np.linalg.norm(j - truth, axis=-1)[15:].mean()   # noqa: E731  (after the filter settles)
    assert err(smooth) < 0.7 * err(raw)
    np.testing.assert_allclose(out[-1].betas, n_betas.mean(0), rtol=1e-5, atol=1e-5)   # betas held: the mean
    # the outputs are consistent: joints and 2D joints rebuilt from the smoothed parameters
    j = _joints(body_tiny, out[-1].pose[None], out[-1].betas[None], out[-1].transl[None])[0]
    np.testing.assert_allclose(out[-1].joints3d, j, atol=1e-5)
    proj = out[-1].joints3d @ K.T
    np.testing.assert_allclose(out[-1].joints2d, proj[:, :2] / proj[:, 2:], atol=1e-2)


def test_rotations_are_smoothed_through_the_axis_angle_wrap(body_tiny):
    """A head turning through 180 degrees: its axis-angle jumps from +pi to -pi; the quaternion filter
    (with sign continuity) follows the true rotation, where filtering the vectors would fold it to 0."""
    fps = 30.0
    angles = np.linspace(np.pi - 0.5, np.pi + 0.5, 40)
    smoother = Smoother(SmoothConfig(min_cutoff=3.0, beta=1.0), body_tiny)
    errors = []
    for f, a in enumerate(angles):
        pose = np.zeros((24, 3))
        pose[0] = Rotation.from_rotvec([0, 0, a]).as_rotvec()           # wraps to negative past pi
        p = Person(0.9, [0, 0, 1, 1], pose, np.zeros(10), np.array([0, 0, 4.0]), np.zeros((45, 3)),
                   np.zeros((45, 2)), None, 0)
        got = smoother([1], [p], f / fps, np.eye(3), 1.0)[0]
        errors.append((Rotation.from_rotvec(got.pose[0]) * Rotation.from_rotvec(pose[0]).inv()).magnitude())
    assert max(errors) < 0.1                     # lag only (< 6 degrees), never a fold through identity


def test_smoother_drops_the_state_of_dead_tracks(body_tiny):
    smoother = Smoother(SmoothConfig(), body_tiny)
    p = Person(0.9, [0, 0, 1, 1], np.zeros((24, 3)), np.zeros(10), np.zeros(3) + [0, 0, 4], np.zeros((45, 3)),
               np.zeros((45, 2)), None, 0)
    smoother([1, 2], [p, p], 0.0, np.eye(3), 1.0)
    smoother([2], [p], 0.1, np.eye(3), 1.0, live_ids={2})
    assert set(smoother.tracks) == {2}


def test_overlapping_newcomers_start_one_track():
    """SAT-HMR has no NMS: one person detected twice in the first frames gets one id, not two."""
    rng = np.random.default_rng(5)
    body = random_body(rng)
    tracker = build_tracker(TrackerConfig())
    for f in range(4):
        a = person([0.1 * f, 0, 4], body, 0.9, rng)
        b = person([0.1 * f + 0.05, 0.05, 4.6], body, 0.6, rng)   # the same person again, boxes overlapping ~0.5
        assert box_iou(np.array([a.box]), np.array([b.box]))[0, 0] > TrackerConfig.dup_iou
        out = tracker.update([b, a], f)
        assert [t.id for t in out] == [1] and out[0].person is a


def test_track_scores_count_switches_fragments_and_misses():
    from sathmr.train.data.clips import track_scores

    truth = [{1: np.array([0, 0, 10, 10.]), 2: np.array([50, 0, 60, 10.])} for _ in range(4)]
    perfect = [[(7, [0, 0, 10, 10]), (8, [50, 0, 60, 10])] for _ in range(4)]
    s = track_scores(truth, perfect)
    assert s["mota"] == 1 and s["idf1"] == 1 and s["id_switches"] == 0 and s["ids_per_person"] == {1: 1, 2: 1}
    broken = [perfect[0], perfect[1], [(9, [0, 0, 10, 10]), (8, [50, 0, 60, 10])], [(8, [50, 0, 60, 10]), (5, [80, 0, 90, 9])]]
    s = track_scores(truth, broken)
    assert s["id_switches"] == 1 and s["ids_per_person"] == {1: 2, 2: 1}
    assert s["false_negatives"] == 1 and s["false_positives"] == 1 and s["mota"] == 1 - 3 / 8
    assert s["idf1"] == 2 * 6 / (8 + 8)        # identity 1 keeps track 7 for two frames, identity 2 track 8 for four


def test_walking_clip_knows_who_is_where(smpl_tiny):
    from sathmr.train.data.clips import walking_clip
    from sathmr.train.data.pipeline import BodyModels

    clip = walking_clip(BodyModels(smpl_tiny), 2, n_frames=3, seed=1, hw=(120, 160))
    assert len(clip.frames) == 3 and clip.frames[0].shape == (120, 160, 3)
    assert set(clip.boxes[0]) == {1, 2}
    moved = [clip.boxes[2][i][0] - clip.boxes[0][i][0] for i in (1, 2)]
    assert all(abs(m) > 1 for m in moved)               # both walk
    for i in (1, 2):                                    # apparent height about 0.55 of the image, as asked
        x0, y0, x1, y1 = clip.boxes[1][i]
        assert 0.4 * 120 < y1 - y0 < 0.75 * 120 and 0 <= x0 < x1 <= 160
