"""The input units an ``--input`` names (images, videos, streams), each loaded only when it is processed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sathmr.common.errors import SathmrError
from sathmr.inputs.discover import DEFAULT_MAX_PIXELS, find_inputs
from sathmr.inputs.images import IMAGE_SUFFIXES, read_image
from sathmr.inputs.video import VIDEO_SUFFIXES, FrameReader, VideoSource, is_video_file, source_from_spec


@dataclass
class InputItem:
    name: str                                  # unique output name, relative path without suffix ("a/x")
    source: str                                # file (and frame) it came from
    load: Callable[[], np.ndarray]             # BGR uint8; raises SathmrError when unreadable
    error: str | None = None                   # set when the input could not even be listed (load raises it)


def iter_inputs(spec: str | Path, exclude: Iterable[str | Path] = (),
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[InputItem | VideoSource]:
    """The input units ``spec`` names: an image, a video, a webcam index (``0``), a stream URL
    (``rtsp://…``, ``http://…``), a folder tree, a glob pattern or a ``.txt``/``.lst`` list of paths (see
    :mod:`sathmr.inputs.discover`). Images are :class:`InputItem`; each video or stream is one
    :class:`~sathmr.inputs.video.VideoSource` unit, read frame by frame by whoever processes it.

    Problems (unreadable folders, symlink loops, missing listed files) come as items with ``error`` set,
    in their place in the order, so that a run reports them and carries on.
    """
    live = source_from_spec(str(spec))
    if live is not None:
        yield live
        return
    for f in find_inputs(spec, IMAGE_SUFFIXES + VIDEO_SUFFIXES, exclude):
        if f.error:
            yield _failed(f.name, str(f.path), f.error)
        elif is_video_file(f.path):
            yield VideoSource(f.name, str(f.path), "file")
        else:
            yield InputItem(f.name, str(f.path), lambda p=f.path: read_image(p, max_pixels))


def iter_images(spec: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[InputItem]:
    """Like :func:`iter_inputs`, with every video frame as an image ``<name>_<frame:06d>`` (for tools
    that compare or time single images: parity, bench)."""
    for unit in iter_inputs(spec, max_pixels=max_pixels):
        if not isinstance(unit, VideoSource):
            yield unit
            continue
        try:
            with FrameReader(unit) as reader:
                for fr in reader.frames():
                    source = f"{unit.source}#frame{fr.index}"
                    if fr.error:
                        yield _failed(f"{unit.name}_{fr.index:06d}", source, fr.error)
                    else:
                        yield InputItem(f"{unit.name}_{fr.index:06d}", source, lambda img=fr.image: img)
        except SathmrError as exc:
            yield _failed(unit.name, unit.source, str(exc))


def _failed(name: str, source: str, error: str) -> InputItem:
    def load() -> np.ndarray:
        raise SathmrError(error)
    return InputItem(name, source, load, error)
