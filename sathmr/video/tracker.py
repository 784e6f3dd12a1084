"""Tracking people across frames: stable integer ids from per-frame detections (``ImageResult`` people).

Association is a minimum-cost assignment (Hungarian, ``scipy.optimize.linear_sum_assignment``) between
the live tracks, predicted to the current frame with a constant velocity, and the frame's detections —
confirmed tracks first, then tentative ones on the detections left (so a new track, often a duplicate,
never takes a detection from an established one, as in DeepSORT's cascade) — on the cost

    cost = w_iou * (1 - IoU(box))                                    boxes, original pixels
         + w_pelvis * min(1, |pelvis_track - pelvis_det| / pelvis_norm_m)      3D, camera frame
         + w_pose * min(1, MPJPE(root-relative joints) / pose_norm_m)          body pose, 24 SMPL joints

A pair costing more than ``max_cost`` is not a match, and neither is a pair whose boxes do not overlap
while their pelvises are more than ``pelvis_norm_m`` apart. Why this and not a PyPI tracker: the
ByteTrack/OC-SORT packages (``bytetracker``, ``ocsort``, unmaintained since 2022-23; ``supervision``'s
ByteTrack) associate 2D boxes only, ``boxmot`` brings a re-identification and detector stack, and
``norfair`` is built for 2D points; SAT-HMR gives every person a 3D position and pose, which separate
people whose boxes cross. The assignment itself is scipy's, so there is nothing of our own to get
wrong there, and what is ours (the cost, the rules below) is small and tested.

Rules:
* **duplicates**: SAT-HMR has no NMS, so one person can come twice; a detection that overlaps (box IoU
  ``dup_iou`` or more) a detection matched to a confirmed track is that person again: it neither
  matches a tentative track nor starts one (likewise for detections matched to tentative tracks); of
  unmatched detections overlapping each other that much, only the best-scoring one starts a track.
* **birth**: an unmatched detection that is not a duplicate starts a *tentative* track. A tentative
  track is *confirmed*, and gets the next integer id (1, 2, …), once it has been matched ``min_hits``
  times in a row; in the first ``min_hits`` frames of a stream every new track is
  confirmed at once (nothing earlier could have confirmed it), as in SORT.
* **death**: a tentative track dies at its first miss; a confirmed one survives ``max_missed`` frames
  without a match (keeping its id, predicted forward) and dies after that.
* **output**: per frame, the confirmed tracks matched in that frame, with their id; tentative tracks and
  duplicates are not reported. Ids are never reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from sathmr.runtime.postprocess import Person, box_iou
from sathmr.video.config import TrackerConfig

BODY_JOINTS = 24         # SMPL joints used for the pose term (the first 24 of the 45 outputs)
_BLOCKED = 1e6           # cost of a forbidden pair (scipy wants finite costs)


@dataclass
class Track:
    """One person's state; velocities are per frame, all quantities from the last matched detection."""
    box: np.ndarray                 # (4,) x0 y0 x1 y1, original image pixels
    pelvis: np.ndarray              # (3,) camera frame, metres
    joints_rel: np.ndarray          # (24, 3) joints minus pelvis, metres
    last_frame: int
    id: int = 0                     # 0 while tentative, then 1, 2, ...
    hits: int = 1                   # consecutive matches
    missed: int = 0                 # frames since the last match
    box_vel: np.ndarray = field(default_factory=lambda: np.zeros(4))      # (4,) px / frame
    pelvis_vel: np.ndarray = field(default_factory=lambda: np.zeros(3))   # (3,) m / frame

    def predict(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(box (4,), pelvis (3,)) expected at ``frame`` under constant velocity."""
        gap = frame - self.last_frame
        return self.box + gap * self.box_vel, self.pelvis + gap * self.pelvis_vel


@dataclass
class Tracked:
    """A person reported in a frame, with the id of its track."""
    id: int
    person: Person


def _observation(p: Person) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    j = np.asarray(p.joints3d, dtype=np.float64)[:BODY_JOINTS]
    return np.asarray(p.box, dtype=np.float64), j[0], j - j[0]


class Tracker:
    """Feed it every frame's people in order (:meth:`update`); it answers with the tracked ones."""

    def __init__(self, cfg: TrackerConfig = TrackerConfig()):
        self.cfg = cfg
        self.tracks: list[Track] = []
        self.frames_seen = 0
        self._next_id = 1

    def cost(self, tracks: Sequence[Track], people: Sequence[Person], frame: int) -> np.ndarray:
        """(T, D) association cost (module docstring); forbidden pairs cost ``_BLOCKED``."""
        c = self.cfg
        pred = [t.predict(frame) for t in tracks]
        t_box = np.array([b for b, _ in pred]).reshape(-1, 4)                    # (T, 4)
        t_pel = np.array([p for _, p in pred]).reshape(-1, 3)                    # (T, 3)
        t_rel = np.array([t.joints_rel for t in tracks]).reshape(-1, BODY_JOINTS, 3)
        obs = [_observation(p) for p in people]
        d_box = np.array([o[0] for o in obs]).reshape(-1, 4)                      # (D, 4)
        d_pel = np.array([o[1] for o in obs]).reshape(-1, 3)                      # (D, 3)
        d_rel = np.array([o[2] for o in obs]).reshape(-1, BODY_JOINTS, 3)
        iou = box_iou(t_box, d_box)                                              # (T, D)
        dist = np.linalg.norm(t_pel[:, None] - d_pel[None], axis=-1)            # (T, D) metres
        mpjpe = np.linalg.norm(t_rel[:, None] - d_rel[None], axis=-1).mean(-1)   # (T, D) metres
        cost = (c.w_iou * (1 - iou) + c.w_pelvis * np.minimum(1, dist / c.pelvis_norm_m)
                + c.w_pose * np.minimum(1, mpjpe / c.pose_norm_m)) / (c.w_iou + c.w_pelvis + c.w_pose)
        blocked = (cost > c.max_cost) | ((iou <= 0) & (dist > c.pelvis_norm_m))
        return np.where(blocked, _BLOCKED, cost)

    def update(self, people: Sequence[Person], frame: int) -> list[Tracked]:
        """Associate one frame's people (any order) with the tracks; returns the confirmed ones matched
        in this frame, in the order of ``people``."""
        c = self.cfg
        self.frames_seen += 1
        matches: dict[int, int] = {}                                             # detection → track index
        duplicates: set[int] = set()
        for stage in (True, False):          # confirmed tracks first; tentative ones get what is left
            rows = [i for i, t in enumerate(self.tracks) if (t.id > 0) == stage]
            duplicates |= self._duplicates(people, matches)
            cols = [d for d in range(len(people)) if d not in matches and d not in duplicates]
            if not rows or not cols:
                continue
            cost = self.cost([self.tracks[i] for i in rows], [people[d] for d in cols], frame)
            r, k = linear_sum_assignment(cost)
            matches.update({cols[b]: rows[a] for a, b in zip(r, k) if cost[a, b] < _BLOCKED})
        duplicates |= self._duplicates(people, matches)
        owner = {d: self.tracks[t] for d, t in matches.items()}                   # detection → Track
        for d, track in owner.items():
            self._match(track, people[d], frame)
        matched_tracks = set(matches.values())
        survivors = []
        for i, t in enumerate(self.tracks):
            if i not in matched_tracks:
                t.missed += 1
                t.hits = 0
                if t.id == 0 or t.missed > c.max_missed:
                    continue                                                    # death
            survivors.append(t)
        self.tracks = survivors
        new = [d for d in range(len(people)) if d not in matches and d not in duplicates]
        born: dict[int, int] = {}
        for d in sorted(new, key=lambda d: -people[d].score):       # the best of overlapping newcomers starts the track
            if self._duplicates(people, {**matches, **born}, only=d):
                continue
            born[d] = -1
            box, pelvis, rel = _observation(people[d])
            track = Track(box, pelvis, rel, frame)
            if self.frames_seen <= c.min_hits:
                self._confirm(track)
            self.tracks.append(track)
            owner[d] = track
        return [Tracked(owner[d].id, people[d]) for d in range(len(people)) if d in owner and owner[d].id > 0]

    def _duplicates(self, people: Sequence[Person], matches: dict[int, int], only: int | None = None) -> set[int]:
        """Unmatched detections (or just ``only``) overlapping a matched one by ``dup_iou`` or more: the
        same person again."""
        rest = [d for d in range(len(people)) if d not in matches] if only is None else [only]
        if not rest or not matches:
            return set()
        taken = np.array([people[d].box for d in matches], dtype=np.float64)
        overlap = box_iou(np.array([people[d].box for d in rest], dtype=np.float64), taken).max(1)
        return {d for d, o in zip(rest, overlap) if o >= self.cfg.dup_iou}

    def _match(self, track: Track, p: Person, frame: int) -> None:
        box, pelvis, rel = _observation(p)
        gap = max(1, frame - track.last_frame)
        m = self.cfg.momentum
        track.box_vel = m * track.box_vel + (1 - m) * (box - track.box) / gap
        track.pelvis_vel = m * track.pelvis_vel + (1 - m) * (pelvis - track.pelvis) / gap
        track.box, track.pelvis, track.joints_rel, track.last_frame = box, pelvis, rel, frame
        track.hits += 1
        track.missed = 0
        if track.id == 0 and track.hits >= self.cfg.min_hits:
            self._confirm(track)

    def _confirm(self, track: Track) -> None:
        track.id = self._next_id
        self._next_id += 1

    @property
    def live_ids(self) -> set[int]:
        """Ids of the confirmed tracks still alive (their smoothing state is worth keeping)."""
        return {t.id for t in self.tracks if t.id > 0}


def build_tracker(cfg: TrackerConfig | None = None) -> Tracker:
    """A tracker for one stream of frames (one per video and detection threshold)."""
    return Tracker(cfg or TrackerConfig())
