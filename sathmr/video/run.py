"""Videos in the inference pipeline: the events one video makes (reader thread) and their consumer
(writer thread), both plugged into :func:`sathmr.runtime.pipeline.run_pipeline` by ``sathmr infer``.

    VideoStart, Work(FrameJob) | FrameFailed, ..., VideoEnd        (or one Skipped / Failed)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sathmr.common.errors import SathmrError
from sathmr.inputs.video import Frame, FrameReader, VideoSource
from sathmr.runtime.pipeline import Failed, Skipped, Work
from sathmr.runtime.postprocess import ImageResult
from sathmr.runtime.preprocess import Prepared
from sathmr.video.sink import ThresholdDirs, VideoOptions, VideoSink, fresh_name, video_done
from sathmr.video.udp import UdpPublisher


@dataclass
class VideoStart:
    src: VideoSource
    name: str                # output stem (a fresh one for live captures)
    fps: float
    fps_note: str | None = None     # the source's own frame rate was unusable (said once)
    cancelled: threading.Event = field(default_factory=threading.Event)   # its outputs failed: stop reading


@dataclass
class FrameJob:
    """The payload of a frame's :class:`~sathmr.runtime.pipeline.Work`."""
    video: VideoStart
    frame: Frame


@dataclass
class FrameFailed:
    video: VideoStart
    frame: Frame


@dataclass
class VideoEnd:
    video: VideoStart
    complete: bool           # the source was read to its end (no Ctrl-C, no error)
    note: str | None         # how it ended when not cleanly
    dropped: int             # live frames dropped to keep up


def video_events(src: VideoSource, prepare: Callable[..., Prepared], dirs: ThresholdDirs,
                 thresholds: Sequence[float], opts: VideoOptions, stop: threading.Event, overwrite: bool = False,
                 overlay: bool = True) -> Iterator:
    """Open ``src`` and yield its events; a finished file is one :class:`Skipped` (unless ``overwrite``)."""
    if opts.live is not None:
        src = VideoSource(src.name, src.source, src.kind, opts.live)
    if src.resumable and not overwrite and video_done(dirs, thresholds, src.name, overlay):
        yield Skipped(src.source)
        return
    try:
        reader = FrameReader(src)
    except SathmrError as exc:
        yield Failed(src.source, str(exc))
        return
    name = src.name if src.resumable or overwrite else fresh_name(dirs, thresholds, src.name)
    start = VideoStart(src, name, reader.fps, reader.fps_note)
    yield start
    note = None
    try:
        for frame in reader.frames(opts.limits, stop):
            if start.cancelled.is_set():
                break
            if frame.error is None:
                try:
                    work = Work(FrameJob(start, frame), prepare(frame.image), f"{name}_{frame.index:06d}")
                except SathmrError as exc:
                    frame.error = f"frame {frame.index} of {src.source}: {exc}"
            yield work if frame.error is None else FrameFailed(start, frame)
    except SathmrError as exc:
        note = str(exc)
    finally:
        reader.close()
    note = note or reader.note
    yield VideoEnd(start, complete=not stop.is_set() and note is None, note=note, dropped=reader.dropped)


#: the events of a video unit (everything else in the pipeline is an image's)
VIDEO_EVENTS = (VideoStart, FrameJob, FrameFailed, VideoEnd)


class VideoOutputs:
    """Writer side: routes video events to one :class:`VideoSink` per open video.

    ``report`` lists a failure in the run's summary; ``say`` tells something once (an assumed frame rate).
    A video whose outputs cannot be written (the overlay writer does not open) is one failure: its partial
    files are dropped, its reader stops, and the run goes on with the next input.
    """

    def __init__(self, dirs: ThresholdDirs, thresholds: Sequence[float], predictor, opts: VideoOptions,
                 overlay: bool, report: Callable[[str], None],
                 per_frame: Callable[[ImageResult, str, dict[float, list[int]]], None] | None = None,
                 on_tracks: Callable[[Path, dict], None] | None = None, say: Callable[[str], None] | None = None):
        self.dirs, self.thresholds, self.predictor, self.opts = dirs, thresholds, predictor, opts
        self.overlay, self.report, self.per_frame, self.on_tracks = overlay, report, per_frame, on_tracks
        self.say = say or report
        self.udp = UdpPublisher(opts.stream) if opts.stream else None
        self.sinks: dict[int, VideoSink] = {}      # id(VideoStart) → its sink
        self.failed: set[int] = set()              # id(VideoStart) of videos whose outputs failed
        self.videos = self.frames = 0

    def handle(self, ev, res: ImageResult | None) -> bool:
        """Consume ``ev`` if it is a video's; returns whether it was."""
        if not isinstance(ev, VIDEO_EVENTS):
            return False
        video = ev if isinstance(ev, VideoStart) else ev.video
        if id(video) in self.failed:
            if isinstance(ev, VideoEnd):
                self.failed.discard(id(video))
            return True
        try:
            self._handle(ev, res)
        except SathmrError as exc:            # this video's outputs only; a bug keeps its traceback
            sink = self.sinks.pop(id(video), None)
            if sink is not None:
                sink.abort()
            video.cancelled.set()
            if not isinstance(ev, VideoEnd):
                self.failed.add(id(video))
            self.report(f"{video.src.source}: {exc}")
        return True

    def _handle(self, ev, res: ImageResult | None) -> None:
        if isinstance(ev, VideoStart):
            if ev.fps_note:
                self.say(ev.fps_note)
            self.sinks[id(ev)] = VideoSink(ev.src, ev.name, ev.fps, self.dirs, self.thresholds, self.predictor,
                                           self.opts, self.overlay, self.udp, self.per_frame, self.on_tracks)
        elif isinstance(ev, FrameJob):
            self.sinks[id(ev.video)].add(ev.frame, res)
            self.frames += 1
        elif isinstance(ev, FrameFailed):
            self.sinks[id(ev.video)].skip(ev.frame)
            self.report(ev.frame.error or f"frame {ev.frame.index} unreadable")
        elif isinstance(ev, VideoEnd):
            sink = self.sinks.pop(id(ev.video))
            sink.close(ev.complete, ev.note, ev.dropped)
            self.videos += 1
            if ev.note:
                self.report(ev.note)

    def close(self) -> None:
        """After the run: videos still open (an error broke the run) are finished as incomplete."""
        for sink in self.sinks.values():
            try:
                sink.close(False, "the run ended with an error")
            except Exception:
                sink.abort()
                raise
        self.sinks.clear()
        if self.udp is not None:
            self.udp.close()
