"""Small numeric building blocks shared by the network, post-processing and training.

Everything is written in plain tensor ops (no in-place masking, no device-specific calls) so that the
same code runs on CPU/CUDA and exports to ONNX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SINE_TEMPERATURE = 20.0  # not DETR's 10000: the original uses 20 [must match]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def grid_divmod(idx: torch.Tensor, n) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of raster indices on a grid ``n`` wide (written without ``%``, which the ONNX
    exporter cannot take with a symbolic ``n``)."""
    row = idx // n
    return row, idx - row * n


def sine_embed(p: torch.Tensor, dim: int) -> torch.Tensor:
    """e(p): ``dim`` values per scalar, sin/cos interleaved, frequencies 2π / 20^(2k/dim).

    ``p`` (...,) → (..., dim). Computed in float32 whatever the model dtype.
    """
    k = torch.arange(dim // 2, dtype=torch.float32, device=p.device)
    freq = 2 * math.pi / (SINE_TEMPERATURE ** (2 * k / dim))
    arg = p.float().unsqueeze(-1) * freq
    return torch.stack((arg.sin(), arg.cos()), dim=-1).flatten(-2)


def sine_xy(x: torch.Tensor, y: torch.Tensor, dim: int) -> torch.Tensor:
    """Position code of a 2D point: [e(y), e(x)], ``dim`` values in total (y first) [must match]."""
    return torch.cat((sine_embed(y, dim // 2), sine_embed(x, dim // 2)), dim=-1)


def sine_box(box: torch.Tensor, dim: int) -> torch.Tensor:
    """Decoder query code of a (cx, cy, w, h) anchor: [e(cy), e(cx), e(h), e(w)], 2*dim values."""
    cx, cy, w, h = box.unbind(-1)
    return torch.cat((sine_xy(cx, cy, dim), sine_xy(w, h, dim)), dim=-1)


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) → (..., 3, 3). The 6 numbers are a row-major 3x2 matrix whose columns are
    Gram-Schmidt-orthonormalised (the SPIN convention of the original) [must match]."""
    m = x.reshape(*x.shape[:-1], 3, 2)
    a1, a2 = m[..., 0], m[..., 1]
    b1 = F.normalize(a1, dim=-1, eps=1e-12)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1, eps=1e-12)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


def rotmat_to_rot6d(r: torch.Tensor) -> torch.Tensor:
    return r[..., :, :2].reshape(*r.shape[:-2], 6)


def rotmat_to_quat(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) → unit quaternions (w, x, y, z), branch-free (Shepperd's method).

    Every branch is computed and the best-conditioned one selected with ``where``, so the function has
    no data-dependent control flow.
    """
    m00, m01, m02 = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
    m10, m11, m12 = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
    m20, m21, m22 = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
    cands = torch.stack((
        torch.stack((1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01), -1),
        torch.stack((m21 - m12, 1 + m00 - m11 - m22, m10 + m01, m02 + m20), -1),
        torch.stack((m02 - m20, m10 + m01, 1 - m00 + m11 - m22, m21 + m12), -1),
        torch.stack((m10 - m01, m02 + m20, m21 + m12, 1 - m00 - m11 + m22), -1),
    ), dim=-2)  # (..., 4 candidates, 4); candidate i has its i-th component = 4 q_i^2
    diag = torch.stack((m00 + m11 + m22, m00, m11, m22), -1)
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(cands, -2, best.unsqueeze(-1).expand(*best.shape, 4)).squeeze(-2)
    return F.normalize(q, dim=-1, eps=1e-12)


def quat_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (w, x, y, z) → axis-angle (..., 3); the zero rotation maps to 0, never NaN."""
    q = torch.where(q[..., :1] < 0, -q, q)  # shortest rotation, angle in [0, π]
    xyz = q[..., 1:]
    sin_half = xyz.norm(dim=-1, keepdim=True)
    half = torch.atan2(sin_half, q[..., :1])
    # angle / sin(angle/2); its limit at 0 is 2
    k = torch.where(sin_half > 1e-8, 2 * half / sin_half.clamp(min=1e-8), torch.full_like(half, 2.0))
    return xyz * k


def rotmat_to_axis_angle(r: torch.Tensor) -> torch.Tensor:
    return quat_to_axis_angle(rotmat_to_quat(r))


def axis_angle_to_rotmat(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, (..., 3) → (..., 3, 3)."""
    angle = aa.norm(dim=-1, keepdim=True).unsqueeze(-1)
    axis = aa / aa.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    kmat = torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), -1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(kmat)
    return eye + angle.sin() * kmat + (1 - angle.cos()) * (kmat @ kmat)


def box_cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)


def box_xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), -1)


def bicubic_half_matrix(n: int) -> torch.Tensor:
    """(n/2, n) matrix of PyTorch's bicubic 2x reduction (a = -0.75, align_corners=False, edge clamp).

    Applied on both axes it reproduces ``F.interpolate(..., size=n/2, mode='bicubic')`` with plain
    matmuls, which ONNX Runtime and TensorRT run identically [must match, §1.4(c)].
    """
    taps = torch.tensor([-0.09375, 0.59375, 0.59375, -0.09375])
    m = torch.zeros(n // 2, n)
    for i in range(n // 2):
        for t, w in zip(range(2 * i - 1, 2 * i + 3), taps):
            m[i, min(max(t, 0), n - 1)] += w
    return m
