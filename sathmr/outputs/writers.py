"""Output files, written atomically (a crash or a reader never sees half a file)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np

from sathmr.common.errors import SathmrError
from sathmr.common.files import atomic_write


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
