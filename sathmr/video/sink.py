"""One video's outputs, per detection threshold: the overlay video, the tracks file, UDP messages.

Results arrive in frame order (the pipeline's writer thread). For each threshold the people are
tracked (:mod:`.tracker`), smoothed (:mod:`.smoothing`), drawn into ``<name>.mp4`` coloured and
labelled by track id, appended to ``<name>_tracks.json`` and published on ``--stream``. A frame that
cannot be decoded repeats the previous overlay frame, so the video keeps the input's frame count and
timing, and is listed under ``frames_skipped``.

``<name>_tracks.json`` is written (atomically) when the video ends, also when a run is interrupted;
its first key ``complete`` says whether the whole source was read, and a later run redoes videos whose
file says false.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from sathmr.common.files import atomic_write
from sathmr.inputs.video import Frame, FrameLimits, VideoSource
from sathmr.outputs.render import result_mosaic
from sathmr.runtime.postprocess import ImageResult, Person
from sathmr.video.mp4 import Mp4Writer
from sathmr.video.smoothing import SmoothConfig, build_smoother
from sathmr.video.tracker import TrackerConfig, build_tracker
from sathmr.video.udp import UdpPublisher

COMPLETE_PREFIX = b'{"complete":true'
DIGITS = 6


class ThresholdDirs(Protocol):
    """Where a threshold's files go (``sathmr.infer.OutputPlan`` is one)."""
    def tdir(self, t: float) -> Path: ...


@dataclass(frozen=True)
class VideoOptions:
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    smooth: SmoothConfig | None = field(default_factory=SmoothConfig)   # None: --no-smooth
    per_frame: bool = False           # also the per-image files of every frame (PNG, JSON, ...)
    limits: FrameLimits = field(default_factory=FrameLimits)
    stream: str | None = None         # udp://HOST:PORT
    live: bool | None = None          # drop stale frames; None: by source (webcams, rtsp, ...)


def video_paths(dirs: ThresholdDirs, t: float, name: str) -> tuple[Path, Path]:
    """(overlay video, tracks file) of video ``name`` at threshold ``t``."""
    d = dirs.tdir(t)
    return d / f"{name}.mp4", d / f"{name}_tracks.json"


def video_done(dirs: ThresholdDirs, thresholds: Sequence[float], name: str, overlay: bool) -> bool:
    """Whether every threshold has a complete tracks file (and the video when overlays are on)."""
    for t in thresholds:
        mp4, tracks = video_paths(dirs, t, name)
        try:
            with open(tracks, "rb") as f:
                if not f.read(len(COMPLETE_PREFIX)) == COMPLETE_PREFIX:
                    return False
        except OSError:
            return False
        if overlay and not mp4.is_file():
            return False
    return True


def fresh_name(dirs: ThresholdDirs, thresholds: Sequence[float], name: str) -> str:
    """``name``, or ``name_2``, ``name_3`` … when files of that name exist (live captures never overwrite)."""
    k, candidate = 1, name
    while any(p.exists() for t in thresholds for p in video_paths(dirs, t, candidate)):
        k += 1
        candidate = f"{name}_{k}"
    return candidate


class TrackLog:
    """Every tracked person of one threshold, per track id (float32 arrays until written)."""

    def __init__(self) -> None:
        self.tracks: dict[int, dict[str, list]] = {}

    def add(self, frame: int, ids: Sequence[int], people: Sequence[Person]) -> None:
        for i, p in zip(ids, people):
            tr = self.tracks.setdefault(i, {k: [] for k in ("frames", "boxes", "scores", "pose", "betas", "transl",
                                                            "joints3d")})
            tr["frames"].append(frame)
            tr["boxes"].append(np.asarray(p.box, np.float32))
            tr["scores"].append(float(p.score))
            tr["pose"].append(np.asarray(p.pose, np.float32).reshape(24, 3))
            tr["betas"].append(np.asarray(p.betas, np.float32))
            tr["transl"].append(np.asarray(p.transl, np.float32))
            tr["joints3d"].append(np.asarray(p.joints3d, np.float32))

    def to_json(self) -> list[dict]:
        r = lambda a, d=DIGITS: np.round(np.asarray(a, np.float64), d).tolist()   # noqa: E731
        out = []
        for i in sorted(self.tracks):
            tr = self.tracks[i]
            pose = np.stack(tr["pose"])
            out.append({"id": i, "frames": tr["frames"], "boxes": r(tr["boxes"], 2), "scores": r(tr["scores"]),
                        "smpl": {"global_orient": r(pose[:, 0]), "body_pose": r(pose[:, 1:].reshape(len(pose), -1)),
                                 "betas": r(tr["betas"]), "transl": r(tr["transl"])},
                        "joints3d": r(tr["joints3d"])})
        return out


class _Lane:
    """One threshold of one video."""

    def __init__(self, t: float, mp4: Path | None, tracks: Path, fps: float, opts: VideoOptions, body_model):
        self.t, self.tracks_path = t, tracks
        self.tracker = build_tracker(opts.tracker)
        self.smoother = build_smoother(opts.smooth, body_model)
        self.video = Mp4Writer(mp4, fps) if mp4 is not None else None
        self.log = TrackLog()
        self.last: np.ndarray | None = None     # last overlay frame (repeated for undecodable frames)
        self.blank = 0                          # undecodable frames before the first overlay frame

    def write(self, mosaic: np.ndarray | None) -> None:
        if self.video is None:
            return
        if mosaic is None:
            if self.last is None:
                self.blank += 1
                return
            mosaic = self.last
        for _ in range(self.blank):
            self.video.write(np.zeros_like(mosaic))
        self.blank = 0
        self.video.write(mosaic)
        self.last = mosaic


class VideoSink:
    """Consumes one video's results in frame order and writes its outputs (module docstring)."""

    def __init__(self, src: VideoSource, name: str, fps: float, dirs: ThresholdDirs, thresholds: Sequence[float],
                 predictor, opts: VideoOptions, overlay: bool, udp: UdpPublisher | None = None,
                 per_frame: Callable[[ImageResult, str, dict[float, list[int]]], None] | None = None,
                 on_tracks: Callable[[Path, dict], None] | None = None):
        self.src, self.name, self.fps, self.opts = src, name, fps, opts
        self.predictor, self.udp, self.per_frame, self.on_tracks = predictor, udp, per_frame, on_tracks
        self.lanes = []
        for t in thresholds:
            mp4, tracks = video_paths(dirs, t, name)
            self.lanes.append(_Lane(t, mp4 if overlay else None, tracks, fps, opts, predictor.body_model))
        self.frames = 0
        self.skipped: list[int] = []
        self.camera: dict | None = None

    def add(self, frame: Frame, res: ImageResult) -> None:
        cfg, faces = self.predictor.cfg, self.predictor.body_model.faces
        if self.camera is None:
            self.camera = {"focal_px_resized": cfg.focal, "principal_point_resized": [res.img_hw[1] / 2, res.img_hw[0] / 2],
                           "resized_hw": list(res.img_hw), "image_hw": list(res.orig_hw), "resize_rate": res.scale}
        tracked_people, tracked_ids = {}, {}
        for lane in self.lanes:
            found = lane.tracker.update(res.people[lane.t], frame.index)
            ids, people = [x.id for x in found], [x.person for x in found]
            if lane.smoother is not None:
                people = lane.smoother(ids, people, frame.time, res.intrinsics, res.scale, lane.tracker.live_ids)
            lane.log.add(frame.index, ids, people)
            if lane.video is not None:
                lane.write(result_mosaic(res, people, faces, cfg.conf_thresh, cfg.patch_size, ids))
            if self.udp is not None:
                self.udp.publish({"source": self.name, "frame": frame.index, "time": round(frame.time, 6),
                                  "fps": self.fps, "threshold": lane.t}, ids, people)
            tracked_people[lane.t], tracked_ids[lane.t] = people, ids
        if self.per_frame is not None:
            self.per_frame(replace(res, people=tracked_people), f"{self.src.source}#frame{frame.index}", tracked_ids)
        self.frames += 1

    def skip(self, frame: Frame) -> None:
        """An undecodable frame: the video repeats the previous one, the tracks file lists it."""
        for lane in self.lanes:
            lane.write(None)
        self.skipped.append(frame.index)
        self.frames += 1

    def close(self, complete: bool, note: str | None = None, dropped: int = 0) -> None:
        for lane in self.lanes:
            if lane.video is not None:
                lane.video.close()
            head = {"complete": complete, "source": self.src.source, "name": self.name, "threshold": lane.t,
                    "fps": self.fps, "num_frames": self.frames, "frames_skipped": self.skipped,
                    "frames_dropped_live": dropped, "note": note, "backend": self.predictor.backend.name,
                    "video": lane.video.path.name if lane.video is not None and lane.video.frames else None,
                    "video_codec": lane.video.codec if lane.video is not None else None,
                    "camera": self.camera, "frame_convention":
                        "smpl and joints3d in the model's OpenCV camera frame of the resized image (x right, y "
                        "down, z forward, metres); boxes in source pixels; frames are 0-based source indices",
                    "tracker": self.opts.tracker.to_json(),
                    "smoothing": self.opts.smooth.to_json() if self.opts.smooth is not None else None,
                    "num_tracks": len(lane.log.tracks)}
            doc = {**head, "tracks": lane.log.to_json()}
            atomic_write(lane.tracks_path, json.dumps(doc, separators=(",", ":")).encode())
            if self.on_tracks is not None:     # e.g. the animation files, made from exactly what was written
                self.on_tracks(lane.tracks_path, doc)

    def abort(self) -> None:
        """An unexpected error: no partial video under a final name; the tracks file is not written."""
        for lane in self.lanes:
            if lane.video is not None:
                lane.video.abort()
