"""Inputs (images, folders, videos) and outputs (written atomically, so a crash never leaves half a file)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from sathmr.errors import SathmrError
from sathmr.preprocess import IMAGE_SUFFIXES, read_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass
class InputItem:
    name: str                                  # unique output stem
    source: str                                # file (and frame) it came from
    load: Callable[[], np.ndarray]             # BGR uint8; raises SathmrError when unreadable


def iter_inputs(path: str | Path) -> Iterator[InputItem]:
    """An image, a folder of images (sorted, non-recursive) or a video file (every frame)."""
    path = Path(path)
    if not path.exists():
        raise SathmrError(f"input not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        if not files:
            raise SathmrError(f"no images or videos in {path} (looked for {', '.join(IMAGE_SUFFIXES)})")
        seen: set[str] = set()
        for f in files:
            if f.suffix.lower() in VIDEO_SUFFIXES:
                yield from iter_video(f)
                continue
            name = f.stem if f.stem not in seen else f"{f.stem}_{f.suffix[1:].lower()}"
            seen.add(name)
            yield InputItem(name, str(f), lambda f=f: read_image(f))
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        yield from iter_video(path)
    else:
        yield InputItem(path.stem, str(path), lambda: read_image(path))


def iter_video(path: Path) -> Iterator[InputItem]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SathmrError(f"cannot open video: {path}")
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield InputItem(f"{path.stem}_{i:06d}", f"{path}#frame{i}", lambda frame=frame: frame)
            i += 1
    finally:
        cap.release()
    if i == 0:
        raise SathmrError(f"no frames could be read from video: {path}")


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
