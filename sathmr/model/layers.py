"""Transformer building blocks. Parameter names follow the official checkpoint (timm/DINOv2 style)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def key_mask_bias(key_valid: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """(B, L) bool, True = attend → additive SDPA mask (B, 1, 1, L) of 0 / −inf, or None when nothing is masked.

    Padding slots of a batch (other images' extra tokens, unused budget slots, cells outside the image)
    are excluded from every softmax this way, which is what makes a padded batch equal to the
    original's block-diagonal per-image attention. Additive rather than boolean: PyTorch computes the
    same thing either way (bit for bit), but an exported graph then needs one Add, where a boolean mask
    brings a guard against all-masked rows (IsNaN + Where over every attention score) — which cannot
    occur here, since every sequence holds its CLS token.
    """
    if key_valid is None:
        return None
    return torch.zeros(key_valid.shape, dtype=dtype, device=key_valid.device).masked_fill(
        ~key_valid, float("-inf"))[:, None, None, :]


_XOPS = None


def _xformers():
    """xformers' kernels when installed (optional CUDA speed-up, `pip install 'sathmr[xformers]'`)."""
    global _XOPS
    if _XOPS is None:
        try:
            import xformers.ops as xops
            _XOPS = xops
        except ImportError:
            _XOPS = False
    return _XOPS


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention on (B, heads, L, d) tensors; softmax scale 1/sqrt(d of q).

    PyTorch's SDPA everywhere; on CUDA, unmasked attention goes through xformers when it is installed.
    """
    if mask is None and q.is_cuda and not torch.jit.is_tracing() and not torch.compiler.is_compiling() and _xformers():
        out = _xformers().memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's MLP); ``dims`` = [in, hidden..., out]."""

    def __init__(self, dims: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x, inplace=frozen_inference())   # in place: no fresh buffer to fault in
        return x


def stack_mlps(mlps) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Equally shaped MLPs → per depth (weights (N, in, out), biases (N, 1, out)) for :func:`batched_mlp`."""
    return [(torch.stack([m.layers[j].weight.t() for m in mlps]), torch.stack([m.layers[j].bias for m in mlps])[:, None])
            for j in range(len(mlps[0].layers))]


def batched_mlp(x: torch.Tensor, stacked: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """N different MLPs on N inputs (N, M, in) at once: one ``baddbmm`` per depth instead of N ``addmm``
    (the same products, bit for bit on CPU, in fewer and better-threaded calls)."""
    for j, (w, b) in enumerate(stacked):
        x = torch.baddbmm(b, x, w)
        if j < len(stacked) - 1:
            x = F.relu(x, inplace=frozen_inference())
    return x


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ViTAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2], mask)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """DINOv2 pre-norm block with LayerScale (LN eps 1e-6, exact GELU)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ViTMlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if frozen_inference():  # x + branch · gamma in one pass (one rounding where there were two)
            x = torch.addcmul(x, self.attn(self.norm1(x), mask), self.ls1.gamma)
            return torch.addcmul(x, self.mlp(self.norm2(x)), self.ls2.gamma)
        x = x + self.ls1(self.attn(self.norm1(x), mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


_FOLD_IN_GRAPHS = [False]


@contextlib.contextmanager
def folded_graphs() -> Iterator[None]:
    """While inside, traced graphs (ONNX export) take the inference-only rewrites that keep every output
    within rounding of the plain arithmetic (the decoder's folded cross-attention), not the weight caches."""
    _FOLD_IN_GRAPHS[0] = True
    try:
        yield
    finally:
        _FOLD_IN_GRAPHS[0] = False


def fold_cross_attention() -> bool:
    """Eager inference, or a graph traced under :func:`folded_graphs`; never training or torch.compile."""
    return frozen_inference() or (_FOLD_IN_GRAPHS[0] and not torch.is_grad_enabled())


def frozen_inference() -> bool:
    """True in eager inference (autograd off, not tracing, exporting or compiling): values derived from
    the weights may then be kept between forwards. Everywhere else they are recomputed in the graph."""
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or torch.compiler.is_exporting())


def _quads(x: torch.Tensor, dims: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """The four strided views (top-left, top-right, bottom-left, bottom-right) of the aligned 2x2 groups of
    the two axes ``dims`` (adjacent-free: ``dims[0] < dims[1]``)."""
    a, b = dims
    v = x.unflatten(b, (x.shape[b] // 2, 2)).unflatten(a, (x.shape[a] // 2, 2))
    pick = lambda i, j: v.select(b + 2, j).select(a + 1, i)  # noqa: E731
    return pick(0, 0), pick(0, 1), pick(1, 0), pick(1, 1)


def mean_pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)`` on (B, C, H, W). Eager inference adds the four strided views in the kernel's
    order (((tl + tr) + bl) + br) / 4, in place after the first sum: bit for bit the same and ~3x faster on
    CPU; graphs keep the op."""
    if not frozen_inference():
        return F.avg_pool2d(x, 2)
    tl, tr, bl, br = _quads(x, (2, 3))
    return (tl + tr).add_(bl).add_(br).div_(4)


def max_pool2(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h·w, C) raster tokens → (B, h/2·w/2, C): channel max over each aligned 2x2 group. Eager
    inference: three elementwise maxima (exact, ~10x faster than a strided ``amax`` on CPU); graphs keep
    one ``amax``."""
    B, _, C = t.shape
    if not frozen_inference():
        return t.view(B, h // 2, 2, w // 2, 2, C).amax(dim=(2, 4)).reshape(B, -1, C)
    tl, tr, bl, br = _quads(t.view(B, h, w, C), (1, 2))
    return torch.maximum(torch.maximum(tl, tr), torch.maximum(bl, br)).reshape(B, -1, C)


class Derived:
    """A tensor computed from parameters, kept until one of them changes.

    Valid while every source is the same tensor object with the same version counter (bumped by each
    in-place update: ``load_state_dict``, optimiser steps, ``copy_`` under ``no_grad``), storage, dtype
    and device (``.to()``, ``.half()``). The sources are held, so a replaced parameter can never be
    mistaken for a new one at the same address. Writes through ``.data`` bypass version counters: call
    :meth:`clear` after those. Outside :func:`frozen_inference`, or when a source is an inference tensor
    (a model built under ``torch.inference_mode``: no version counter), it is computed on every call.
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self._sources: tuple[torch.Tensor, ...] = ()
        self._key: tuple = ()
        self._value = None

    def get(self, compute, *sources: torch.Tensor):
        if not frozen_inference() or any(t.is_inference() for t in sources):
            return compute()
        key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in sources)
        if (len(sources) != len(self._sources) or any(a is not b for a, b in zip(sources, self._sources))
                or key != self._key):
            self._value, self._sources, self._key = compute(), sources, key
        return self._value


def run_blocks(blocks, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
    mask = key_mask_bias(key_valid, x.dtype)
    for blk in blocks:
        x = blk(x, mask)
    return x
