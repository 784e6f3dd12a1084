"""The tracker's and the smoother's settings, apart from their numerics so that the CLI can show their
defaults without importing numpy, scipy or torch (see :mod:`sathmr.video.tracker`, :mod:`sathmr.video.smoothing`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sathmr.common.errors import SathmrError


@dataclass(frozen=True)
class SmoothConfig:
    min_cutoff: float = 1.0       # Hz: cutoff of a still signal (lower = smoother, more lag)
    beta: float = 1.0             # s per unit of speed: how fast the cutoff rises with motion
    d_cutoff: float = 1.0         # Hz: cutoff of the speed estimate itself

    def __post_init__(self) -> None:
        if not (self.min_cutoff > 0 and self.beta >= 0 and self.d_cutoff > 0):
            raise SathmrError(f"smoothing: need min_cutoff > 0, beta >= 0, d_cutoff > 0, got {self}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrackerConfig:
    max_missed: int = 10          # frames a confirmed track survives without a match (1/3 s at 30 fps)
    min_hits: int = 2             # consecutive matches that confirm a tentative track
    max_cost: float = 0.75        # pairs costing more are never matched
    w_iou: float = 0.5
    w_pelvis: float = 0.3
    w_pose: float = 0.2
    pelvis_norm_m: float = 1.0    # pelvis distance at which its term saturates (and the no-overlap gate)
    pose_norm_m: float = 0.3      # root-relative MPJPE at which the pose term saturates
    # an unmatched detection overlapping a matched (or newly born) one this much is a duplicate; 0.4, not 0.7:
    # the embedded model gives one mannequin 2-4 detections overlapping 0.4-0.7 (benchmarks/tracking.py)
    dup_iou: float = 0.4
    momentum: float = 0.5         # weight of the old velocity in the velocity update (0: last step only)

    def __post_init__(self) -> None:
        if self.max_missed < 0 or self.min_hits < 1:
            raise SathmrError(f"tracker: need max_missed >= 0 and min_hits >= 1, got {self.max_missed}, {self.min_hits}")
        if min(self.w_iou, self.w_pelvis, self.w_pose) < 0 or self.w_iou + self.w_pelvis + self.w_pose <= 0:
            raise SathmrError("tracker: cost weights must be >= 0 and not all 0")
        if not 0 < self.max_cost or self.pelvis_norm_m <= 0 or self.pose_norm_m <= 0:
            raise SathmrError("tracker: max_cost, pelvis_norm_m and pose_norm_m must be > 0")
        if not 0 <= self.momentum < 1 or not 0 < self.dup_iou <= 1:
            raise SathmrError("tracker: momentum must be in [0, 1) and dup_iou in (0, 1]")

    def to_json(self) -> dict:
        return asdict(self)
