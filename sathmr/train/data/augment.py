"""Training augmentation of spec §5.3: rotation/flip/zoom warp, camera update, occlusion, colour jitter."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sathmr.train.data.geometry import embed_3x3, rotation_2d

ROT_RANGE = 15.0            # degrees, U(-15, 15)
SCALE_RANGE = (0.8, 1.8)
FLIP_PROB = 0.5             # flip when random() <= 0.5
OCCLUDE_PROB = 0.6
OCCLUDE_MAX_AREA = 0.3
OCCLUDE_ASPECT = (0.5, 2.0)
OCCLUDE_TRIES = 5
JITTER = 0.2                # brightness, contrast, saturation; hue 0


@dataclass(frozen=True)
class AugParams:
    rot: float = 0.0        # degrees; the image is turned by OpenCV angle rot (−rot after a flip)
    flip: bool = False
    scale: float = 1.0      # > 1 zooms in

    @property
    def is_identity(self) -> bool:
        return self.rot == 0.0 and not self.flip and self.scale == 1.0


def draw_aug(rng: np.random.Generator) -> AugParams:
    rot = float(rng.uniform(-ROT_RANGE, ROT_RANGE))
    flip = bool(rng.random() <= FLIP_PROB)
    scale = float(rng.uniform(*SCALE_RANGE))
    return AugParams(rot, flip, scale)


def warp_image(img: np.ndarray, aug: AugParams) -> tuple[np.ndarray, np.ndarray]:
    """Flip, then rotate-and-scale about the integer centre; returns the image and its valid mask."""
    h, w = img.shape[:2]
    if aug.flip:
        img = np.ascontiguousarray(img[:, ::-1])
    angle = -aug.rot if aug.flip else aug.rot
    mat = cv2.getRotationMatrix2D((int(w / 2), int(h / 2)), angle, aug.scale)
    kw = dict(flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = cv2.warpAffine(img, mat, (w, h), **kw)
    mask = cv2.warpAffine(np.full((h, w), 255, np.uint8), mat, (w, h), **kw)
    return out, mask


def augment_intrinsics(k: np.ndarray, resize_rate: float, aug: AugParams, img_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics of the original image → those of the resized, warped image; works on (...,3,3).

    [quirk] rotates about the exact centre (w/2, h/2) while the image warp uses the integer centre.
    """
    h, w = img_hw
    centre = np.array([w / 2.0, h / 2.0])
    out = np.array(k, dtype=np.float64, copy=True)
    f = resize_rate * aug.scale
    out[..., 0, 0] *= f
    out[..., 1, 1] *= f
    pp = out[..., :2, 2] * f + (1.0 - aug.scale) * centre
    pp = (pp - centre) @ rotation_2d(-aug.rot).T + centre
    if aug.flip:
        pp[..., 0] = w - pp[..., 0]
    out[..., :2, 2] = pp
    return out


def augment_extrinsics(cam_rot: np.ndarray, cam_trans: np.ndarray, aug: AugParams) -> tuple[np.ndarray, np.ndarray]:
    """The in-plane rotation as a camera roll: R ← R_aug·R, T ← R_aug·T (flip is applied later, to the GT)."""
    r_aug = embed_3x3(rotation_2d(-aug.rot))
    return r_aug @ cam_rot, cam_trans @ r_aug.T


def occlude(img: np.ndarray, boxes_xyxy_px: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint, with probability 0.6 per person, a random-noise rectangle inside the person's box."""
    h, w = img.shape[:2]
    img = img.copy()
    for x0, y0, x1, y1 in boxes_xyxy_px:
        if rng.random() >= OCCLUDE_PROB:
            continue
        bw, bh = x1 - x0, y1 - y0
        for _ in range(OCCLUDE_TRIES):
            area = rng.uniform(0.0, OCCLUDE_MAX_AREA) * bw * bh
            aspect = rng.uniform(*OCCLUDE_ASPECT)
            rw, rh = int(np.sqrt(area / aspect)), int(np.sqrt(area * aspect))
            if rw < 1 or rh < 1 or rw > bw or rh > bh:
                continue
            rx = int(rng.uniform(x0, x1 - rw))
            ry = int(rng.uniform(y0, y1 - rh))
            if rx >= 0 and ry >= 0 and rx + rw <= w and ry + rh <= h:
                img[ry:ry + rh, rx:rx + rw] = rng.uniform(0, 255, (rh, rw, img.shape[2])).astype(np.uint8)
                break
    return img


def _gray(img: np.ndarray) -> np.ndarray:
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def color_jitter(img_rgb: np.ndarray, rng: np.random.Generator, strength: float = JITTER) -> np.ndarray:
    """torchvision-style ColorJitter(b, c, s, hue=0) on a uint8 RGB image, ops in random order.

    [quirk] applied to the padded image, so contrast jitter (which blends towards the image-wide grey
    mean) can lift the black padding.
    """
    x = img_rgb.astype(np.float32) / 255.0
    for op in rng.permutation(3):
        factor = float(rng.uniform(1.0 - strength, 1.0 + strength))
        if op == 0:
            x = x * factor
        elif op == 1:
            x = factor * x + (1.0 - factor) * float(_gray(x).mean())
        else:
            x = factor * x + (1.0 - factor) * _gray(x)[..., None]
        x = np.clip(x, 0.0, 1.0)
    return np.round(x * 255.0).astype(np.uint8)
