"""Inputs (images, folders, videos) and outputs (written atomically, so a crash never leaves half a file)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from sathmr.errors import SathmrError
from sathmr.input_files import find_inputs
from sathmr.preprocess import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, read_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass
class InputItem:
    name: str                                  # unique output name, relative path without suffix ("a/x")
    source: str                                # file (and frame) it came from
    load: Callable[[], np.ndarray]             # BGR uint8; raises SathmrError when unreadable
    error: str | None = None                   # set when the input could not even be listed (load raises it)


def iter_inputs(spec: str | Path, exclude: Iterable[str | Path] = (),
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[InputItem]:
    """Every image and video frame that ``spec`` names: an image, a video (every frame), a folder tree,
    a glob pattern or a ``.txt``/``.lst`` list of paths (see :mod:`sathmr.input_files`).

    Problems (unreadable folders, symlink loops, missing listed files, videos that do not open) come as
    items with ``error`` set, in their place in the order, so that a run reports them and carries on.
    """
    for f in find_inputs(spec, IMAGE_SUFFIXES + VIDEO_SUFFIXES, exclude):
        if f.error:
            yield _failed(f.name, str(f.path), f.error)
        elif f.path.suffix.lower() in VIDEO_SUFFIXES:
            try:
                yield from iter_video(f.path, f.name)
            except SathmrError as exc:
                yield _failed(f.name, str(f.path), str(exc))
        else:
            yield InputItem(f.name, str(f.path), lambda p=f.path: read_image(p, max_pixels))


def _failed(name: str, source: str, error: str) -> InputItem:
    def load() -> np.ndarray:
        raise SathmrError(error)
    return InputItem(name, source, load, error)


def iter_video(path: Path, name: str | None = None) -> Iterator[InputItem]:
    """Every frame of a video, named ``<name>_<frame:06d>`` (``name`` defaults to the file stem)."""
    name = path.stem if name is None else name
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SathmrError(f"cannot open video: {path}")
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield InputItem(f"{name}_{i:06d}", f"{path}#frame{i}", lambda frame=frame: frame)
            i += 1
    finally:
        cap.release()
    if i == 0:
        raise SathmrError(f"no frames could be read from video: {path}")


def ensure_writable(folder: Path) -> None:
    """Create the output folder and prove that it takes files, so a read-only target fails before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise SathmrError(f"cannot write to the output folder {folder}: {exc.strerror or exc}") from None


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1).encode())


def write_png(path: Path, img_bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", img_bgr)
    if not ok:
        raise SathmrError(f"cannot encode PNG for {path}")
    atomic_write(path, buf.tobytes())


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(path, buf.getvalue())
