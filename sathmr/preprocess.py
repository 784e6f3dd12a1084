"""Image → network input, exactly as the original (OpenCV bilinear resize, pad to 56, ImageNet norm).

Shared by inference, evaluation and training so that every path sees the same pixels.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from sathmr.errors import SathmrError
from sathmr.input_files import DEFAULT_MAX_PIXELS

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
JPEG_SOI = b"\xff\xd8"


@dataclass
class Prepared:
    """One image ready for the network, plus what post-processing needs to map results back."""
    tensor: torch.Tensor        # 3 x H x W float32, normalised, H and W multiples of pad_multiple
    img_hw: tuple[int, int]     # (h, w) of the resized, unpadded image
    scale: float                # resize rate r: canvas px = original px * r
    orig_hw: tuple[int, int]    # (H0, W0) of the input image
    resized_bgr: np.ndarray     # h x w x 3 uint8, for overlays


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


def resize_rate(hw: tuple[int, int], size: int) -> tuple[float, tuple[int, int]]:
    """The original's resize arithmetic: rate r and resized (h, w), long side ``size``.

    The original holds (H0, W0) in an int64 tensor: ``size / long`` is torch's ``__rtruediv__``, i.e.
    ``reciprocal(long) * size`` in float32 (two roundings), and ``r * short`` is a float32 product that
    ``int`` truncates. Python float64 differs for many sizes: 4032x3024 gives 965 rows, not 966.
    """
    h0, w0 = hw
    long_side, short_side = (w0, h0) if w0 >= h0 else (h0, w0)
    r = (np.float32(1.0) / np.float32(long_side)) * np.float32(size)
    short_new = max(int(r * np.float32(short_side)), 1)      # the original would fail on 0; we keep 1 px
    return float(r), ((short_new, size) if w0 >= h0 else (size, short_new))


def resize_long_side(img_bgr: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize (OpenCV bilinear) so the long side is ``size``; returns the image and the float32 rate r."""
    r, (new_h, new_w) = resize_rate(img_bgr.shape[:2], size)
    return cv2.resize(img_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR), r


def padded_size(h: int, w: int, multiple: int) -> tuple[int, int]:
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def normalize(img_bgr: np.ndarray, out_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """BGR uint8 h x w → normalised RGB float tensor, zero-padded (before normalisation) to out_hw."""
    h, w = img_bgr.shape[:2]
    H, W = out_hw or (h, w)
    canvas = np.zeros((H, W, 3), dtype=np.uint8)
    canvas[:h, :w] = img_bgr
    rgb = canvas[:, :, ::-1].astype(np.float32) / 255.0
    rgb = (rgb - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def prepare(img_bgr: np.ndarray, input_size: int, pad_multiple: int) -> Prepared:
    if img_bgr.ndim != 3 or img_bgr.shape[2] != 3 or img_bgr.dtype != np.uint8:
        raise SathmrError(f"expected an H x W x 3 uint8 BGR image, got {img_bgr.shape} {img_bgr.dtype}")
    resized, r = resize_long_side(img_bgr, input_size)
    h, w = resized.shape[:2]
    tensor = normalize(resized, padded_size(h, w, pad_multiple))
    return Prepared(tensor, (h, w), r, tuple(img_bgr.shape[:2]), resized)


def collate(items: list[Prepared], canvas_hw: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack prepared images into one zero-padded batch plus their (h, w).

    ``canvas_hw`` fixes the batch size in pixels (static export); by default the batch is as large as
    its largest member. Pixels beyond an image's own 56-px-padded size are masked out inside the
    network, so the amount of extra padding never changes results.
    """
    H = max(p.tensor.shape[1] for p in items)
    W = max(p.tensor.shape[2] for p in items)
    if canvas_hw is not None:
        if H > canvas_hw[0] or W > canvas_hw[1]:
            raise SathmrError(f"image of padded size {H}x{W} does not fit the {canvas_hw[0]}x{canvas_hw[1]} canvas")
        H, W = canvas_hw
    batch = torch.zeros(len(items), 3, H, W)
    for i, p in enumerate(items):
        batch[i, :, : p.tensor.shape[1], : p.tensor.shape[2]] = p.tensor
    img_hw = torch.tensor([p.img_hw for p in items], dtype=torch.int64)
    return batch, img_hw
