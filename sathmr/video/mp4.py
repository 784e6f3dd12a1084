"""The overlay video file: H.264 when the installed OpenCV can encode it, else MPEG-4 Part 2 (mp4v).

Frames go to a hidden temporary ``.mp4`` beside the target, which replaces the target only when the
writer is released (that is when the MP4 index is written), so a video file under its final name is
always complete and playable, and an interrupted run never leaves half a file there.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from sathmr.common.errors import SathmrError
from sathmr.common.files import UMASK

CODECS = ("avc1", "mp4v")          # preference order: H.264, then MPEG-4 Part 2 (in every OpenCV build)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C-level stderr while probing: FFmpeg prints errors for every encoder it cannot open."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):   # no real stderr (captured by a test runner)
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


@lru_cache(maxsize=1)
def video_codec() -> str:
    """The first fourcc of ``CODECS`` this OpenCV can write into an MP4 (probed once on a tiny file)."""
    with tempfile.TemporaryDirectory() as d, _quiet_stderr():
        for fourcc in CODECS:
            path = os.path.join(d, f"probe_{fourcc}.mp4")
            w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 10.0, (64, 64))
            ok = w.isOpened()
            if ok:
                w.write(np.zeros((64, 64, 3), np.uint8))
            w.release()
            if ok and os.path.getsize(path) > 0:
                return fourcc
    raise SathmrError("this OpenCV build cannot write MP4 video (neither avc1 nor mp4v); use --no-overlay")


class Mp4Writer:
    """Writes BGR frames of one size at ``fps``; opened at the first frame, published at :meth:`close`."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = Path(path), float(fps)
        self.codec = video_codec()
        self.frames = 0
        self._tmp: Path | None = None
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, frame_bgr: np.ndarray) -> None:
        h, w = frame_bgr.shape[:2]
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=".tmp.mp4")
            os.close(fd)
            self._tmp, self._size = Path(tmp), (w, h)
            self._writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*self.codec), self.fps, (w, h))
            if not self._writer.isOpened():
                self.abort()
                raise SathmrError(f"cannot write the video {self.path} ({self.codec}, {w}x{h})")
        if (w, h) != self._size:
            raise ValueError(f"video frames must keep one size: {self._size}, then {(w, h)}")
        self._writer.write(np.ascontiguousarray(frame_bgr))
        self.frames += 1

    def close(self) -> None:
        """Finish the file (writes the MP4 index) and move it to its final name."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        os.chmod(self._tmp, 0o666 & ~UMASK)      # mkstemp's owner-only mode is not what the video should keep
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file (an unexpected error: no half video under the final name)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
