"""Image files and bytes → BGR uint8 arrays, with the size checked before a pixel is decoded.

Shared by ``sathmr infer`` (files) and ``sathmr serve`` (uploads): a hostile header (a 15000² PNG, a
truncated JPEG) is refused in one line before it costs memory.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from sathmr.common.errors import SathmrError
from sathmr.inputs.discover import DEFAULT_MAX_PIXELS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
JPEG_SOI = b"\xff\xd8"


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as BGR uint8 (see :func:`decode_image`), or raise a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise SathmrError(f"image not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SathmrError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_image(data, str(path), max_pixels)


def decode_image(data: bytes, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image like the original's ``cv2.imread`` (EXIF orientation applied; 16-bit
    scaled to 8, grey expanded, alpha dropped, CMYK converted), or raise a one-line error naming ``source``.

    The size is read from the header first, so an image over ``max_pixels`` is refused before any
    pixel is decoded; a JPEG cut short (which OpenCV 4 fills with grey) is refused too.
    """
    if not data:
        raise SathmrError(f"empty file (0 bytes): {source}")
    check_pixels(header_size(data), max_pixels, source)
    if data[:2] == JPEG_SOI and not jpeg_is_complete(data):
        raise SathmrError(f"truncated JPEG (the file ends before its image data does): {source}")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise SathmrError(f"cannot decode image (not an image, corrupt or unsupported): {source}")
    return img


def check_pixels(size: tuple[int, int] | None, max_pixels: int, source: str) -> None:
    """Refuse an image whose header (``size``: width, height) says it is over ``max_pixels``."""
    if size is not None and size[0] * size[1] > max_pixels:
        raise SathmrError(f"image of {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels is over the limit of "
                          f"{max_pixels:,} (--max-pixels): {source}")


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding pixels (PIL's lazy open); None when PIL
    cannot tell (OpenCV then decides whether the file is an image). Thread-safe: PIL's limit is a
    global, lifted under a lock (two threads lifting and restoring it in turn left one with PIL's own
    limit, and a DecompressionBombError where our one-line refusal belongs)."""
    with _PIL_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None       # our own limit applies, with a message that names it
        try:
            with Image.open(io.BytesIO(data)) as im:
                return im.size
        except (OSError, ValueError, EOFError):
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


_PIL_LIMIT = threading.Lock()


def jpeg_is_complete(data: bytes) -> bool:
    """Whether the JPEG's marker chain reaches its end-of-image marker.

    Walks the segments (skipping each by its length, so thumbnails inside EXIF do not count) and jumps
    over the entropy-coded data after every start-of-scan to the next marker that can end it; bytes
    after the end marker (e.g. the video of a motion photo) are ignored. A file cut anywhere never
    reaches the end marker.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    ff = np.flatnonzero(buf[:-1] == 0xFF)
    nxt = buf[ff + 1]
    # inside scan data, FF00 is a stuffed byte, FFD0-FFD7 a restart and FFFF fill: none ends the scan
    scan_ends = ff[(nxt != 0x00) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD7))]
    n, pos = len(data), 2
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:   # fill byte, restart, TEM
            pos += 1 if marker == 0xFF else 2
            continue
        if pos + 3 >= n:
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            k = int(np.searchsorted(scan_ends, pos))
            if k == len(scan_ends):
                return False
            pos = int(scan_ends[k])
    return False
