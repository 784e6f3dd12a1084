"""Inputs (images, folders, videos, streams) and outputs (written atomically, so a crash never leaves half a file)."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sathmr.errors import SathmrError
from sathmr.files import atomic_write
from sathmr.input_files import find_inputs
from sathmr.preprocess import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, read_image
from sathmr.video.source import VIDEO_SUFFIXES, FrameReader, VideoSource, is_video_file, source_from_spec


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
    :mod:`sathmr.input_files`). Images are :class:`InputItem`; each video or stream is one
    :class:`~sathmr.video.source.VideoSource` unit, read frame by frame by whoever processes it.

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


def ensure_writable(folder: Path) -> None:
    """Create the output folder and prove that it takes files, so a read-only target fails before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise SathmrError(f"cannot write to the output folder {folder}: {exc.strerror or exc}") from None


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1).encode())


def encode_png(img_bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img_bgr)
    if not ok:
        raise SathmrError(f"cannot encode a PNG of a {img_bgr.shape} {img_bgr.dtype} image")
    return buf.tobytes()


def write_png(path: Path, img_bgr: np.ndarray) -> None:
    atomic_write(path, encode_png(img_bgr))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(path, buf.getvalue())
