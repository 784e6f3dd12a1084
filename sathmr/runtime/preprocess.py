"""Image → network input, exactly as the original (OpenCV bilinear resize, pad to 56, ImageNet norm).

Shared by inference, evaluation and training so that every path sees the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from sathmr.common.errors import SathmrError

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class Prepared:
    """One image ready for the network, plus what post-processing needs to map results back."""
    tensor: torch.Tensor        # 3 x H x W float32, normalised, H and W multiples of pad_multiple
    img_hw: tuple[int, int]     # (h, w) of the resized, unpadded image
    scale: float                # resize rate r: canvas px = original px * r
    orig_hw: tuple[int, int]    # (H0, W0) of the input image
    resized_bgr: np.ndarray     # h x w x 3 uint8, for overlays


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
