"""Video inputs as whole units: files, webcams and network streams, read frame by frame through OpenCV.

A video is one unit of the input listing (:func:`sathmr.inputs.items.iter_inputs`), so a shard function can hand
whole videos to processes. Frames keep their index in the source even when one cannot be decoded: a
corrupt frame comes as a :class:`Frame` with ``error`` set (reported and skipped by the caller) and
reading goes on with the next one.

What ends a source: the end of the file (a read fails at or past the frame count the container
announces, or ``MAX_BAD_RUN`` reads in a row fail), ``max_frames``, ``duration`` (seconds of video for
files, of wall time for live sources) or the ``stop`` event (Ctrl-C). *Live* sources (webcams and
``rtsp``/``rtmp``/``udp``/``srt``/``tcp`` streams by default) are drained by their own thread into a short
buffer that drops the oldest frame when the network falls behind, so the outputs follow the scene
instead of lagging further and further; files and ``http(s)`` sources give every frame.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import cv2
import numpy as np

from sathmr.common.errors import SathmrError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "srt", "tcp")
MAX_BAD_RUN = 16          # failed reads in a row after which a file counts as ended
STREAM_PATIENCE_S = 2.0   # a stream without frames for this long has ended
LIVE_BUFFER = 2           # frames a live source keeps ahead of the network (older ones are dropped)
DEFAULT_FPS = 30.0        # when the source does not say (many webcams), or says less than MIN_FPS
MIN_FPS = 1.0


@dataclass
class Frame:
    index: int                        # position in the source, 0-based (unreadable frames keep theirs)
    time: float                       # seconds: index / fps for files, since the first frame when live
    image: np.ndarray | None = None   # H x W x 3 BGR uint8; None when the frame could not be decoded
    error: str | None = None


@dataclass(frozen=True)
class FrameLimits:
    max_frames: int | None = None     # frames to read at most (counted from the start of the source)
    duration: float | None = None     # seconds to read at most (video time; wall time when live)

    def __post_init__(self) -> None:
        if self.max_frames is not None and self.max_frames < 1:
            raise SathmrError(f"--max-frames must be >= 1, got {self.max_frames}")
        if self.duration is not None and not self.duration > 0:
            raise SathmrError(f"--duration must be > 0 seconds, got {self.duration}")

    def reached(self, frame: Frame) -> bool:
        return ((self.max_frames is not None and frame.index >= self.max_frames)
                or (self.duration is not None and frame.time >= self.duration))


@dataclass
class VideoSource:
    """One video unit: a file, a webcam index or a stream URL, and the output name of its files."""
    name: str                  # output stem, the relative path without suffix for files ("a/clip")
    source: str                # what OpenCV opens: a path, a URL or the webcam index
    kind: str                  # "file" | "webcam" | "stream"
    live: bool = False         # drop stale frames to keep up (webcams, rtsp/rtmp/udp/srt/tcp)

    @property
    def resumable(self) -> bool:
        """Files are skipped when their outputs are complete; live captures are new every time."""
        return self.kind == "file"

    def open(self) -> FrameReader:
        return FrameReader(self)


def source_from_spec(spec: str) -> VideoSource | None:
    """The webcam (``"0"``) or stream (``"rtsp://…"``) an ``--input`` names, or None for paths.

    An existing file or folder called ``0`` stays a path.
    """
    if spec.isdigit() and not Path(spec).exists():
        return VideoSource(f"webcam{spec}", spec, "webcam", live=True)
    if URL_RE.match(spec):
        url = urlparse(spec)
        stem = PurePosixPath(url.path).stem or url.hostname or "stream"
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "stream"
        return VideoSource(stem, spec, "stream", live=url.scheme.lower() in LIVE_SCHEMES)
    return None


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


class FrameReader:
    """An opened source: ``fps``, ``size`` and the ``announced`` frame count, and its :meth:`frames`."""

    def __init__(self, src: VideoSource):
        self.src = src
        target: str | int = int(src.source) if src.kind == "webcam" else src.source
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            what = {"file": "video", "webcam": "webcam", "stream": "stream"}[src.kind]
            raise SathmrError(f"cannot open {what}: {src.source}")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        usable = bool(np.isfinite(fps)) and MIN_FPS <= fps < 1000
        self.fps = float(fps) if usable else DEFAULT_FPS
        # said once per video by the caller: below 1 fps is a broken header (mdhd timescale 0 reads 0.00098)
        self.fps_note = None if usable else (f"{src.source}: the frame rate it declares ({fps:g} fps) is unknown or "
                                             f"unusable; timing assumes {DEFAULT_FPS:g} fps")
        n = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.announced = int(n) if src.kind != "webcam" and np.isfinite(n) and n > 0 else None
        self.size = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.read_count = 0           # frames decoded
        self.dropped = 0              # live frames dropped because the network fell behind
        self.note: str | None = None  # how the source ended, when not cleanly
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self.cap.release()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def frames(self, limits: FrameLimits = FrameLimits(), stop: threading.Event | None = None) -> Iterator[Frame]:
        """Every frame in order, unreadable ones as frames with ``error``, until the source or a limit ends."""
        stop = stop or threading.Event()
        raw = self._live(stop) if self.src.live else self._sequential(stop)
        try:
            for frame in raw:
                if limits.reached(frame) or stop.is_set():
                    break
                yield frame
        finally:
            raw.close()          # a live source's drain thread ends with it

    # ------------------------------------------------------------------ reading
    def _read(self) -> np.ndarray | None:
        with self._lock:
            ok, img = self.cap.read()
        return img if ok and img is not None and img.size else None

    def _sequential(self, stop: threading.Event) -> Iterator[Frame]:
        """Files and non-live streams: one read per frame; a failed read consumes that frame's packet,
        so the next read is the next frame and indices stay exact."""
        index, bad, waited_since = 0, [], None
        while not stop.is_set():
            img = self._read()
            if img is not None:
                for i in bad:
                    yield Frame(i, i / self.fps, error=f"frame {i} of {self.src.source} cannot be decoded; skipped")
                bad, waited_since = [], None
                self.read_count += 1
                yield Frame(index, index / self.fps, img)
            else:
                if self.announced is not None and index >= self.announced:
                    break
                if self.src.kind == "stream" and self.announced is None:
                    waited_since = waited_since or time.monotonic()
                    if time.monotonic() - waited_since > STREAM_PATIENCE_S:
                        break
                    time.sleep(0.02)
                    continue
                bad.append(index)
                if len(bad) >= MAX_BAD_RUN:
                    break
            index += 1
        if bad and self.announced is not None and bad[0] < self.announced:
            self.note = (f"{self.src.source}: frames from {bad[0]} on cannot be decoded (the file announces "
                         f"{self.announced}); ended there")
        elif self.read_count == 0 and not stop.is_set():
            raise SathmrError(f"no frames could be read from {self.src.source}")

    def _live(self, stop: threading.Event) -> Iterator[Frame]:
        """Live sources: a thread drains the capture into a short buffer (oldest dropped when full)."""
        buf: deque[Frame] = deque()
        cond = threading.Condition()
        ended = threading.Event()       # the consumer is done (a limit, Ctrl-C) or the source is
        t0 = time.monotonic()

        def drain() -> None:
            index, waited_since = 0, None
            while not (stop.is_set() or ended.is_set()):
                img = self._read()
                if img is None:
                    waited_since = waited_since or time.monotonic()
                    if time.monotonic() - waited_since > STREAM_PATIENCE_S:
                        break
                    time.sleep(0.01)
                    continue
                waited_since = None
                with cond:
                    if len(buf) >= LIVE_BUFFER:
                        buf.popleft()
                        self.dropped += 1
                    buf.append(Frame(index, time.monotonic() - t0, img))
                    cond.notify()
                self.read_count += 1
                index += 1
            ended.set()
            with cond:
                cond.notify()

        thread = threading.Thread(target=drain, name=f"capture-{self.src.name}", daemon=True)
        thread.start()
        try:
            while True:
                with cond:
                    while not buf and not ended.is_set():
                        cond.wait(0.1)
                    if not buf:
                        break
                    frame = buf.popleft()
                yield frame
        finally:
            ended.set()
            thread.join(timeout=5)
        if self.read_count == 0 and not stop.is_set():
            raise SathmrError(f"no frames could be read from {self.src.source}")
