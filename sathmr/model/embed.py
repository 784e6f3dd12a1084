"""Patch embeddings and position codes of the token levels, laid out for what they cost on a CPU.

Each function computes bit for bit what its plain formulation does (the tests compare them); only the
memory layout differs, chosen because oneDNN's convolution and PyTorch's elementwise kernels run these
layouts several times faster than the obvious ones:

* level 0: the selected 28x28 cells side by side in one channels-last strip (one wide image) instead
  of a batch of K small images — the same convolution products, ~3x faster, and only the selected cells
  are copied (not the whole full-resolution image rearranged into cells first);
* level 1: the convolution on a channels-last image, so its output is already token-major and the
  position add reads contiguous memory (~1.7x faster);
* memory position code: in eager inference, gathered from a kept per-level table of
  [sine code + level embedding] halves, since a token's code depends only on its level and its cell.
"""

from __future__ import annotations

import torch
from torch import nn

from sathmr.model.geometry import grid_divmod, sine_embed, sine_xy


def cell_strip(images: torch.Tensor, idx: torch.Tensor, cs: int) -> torch.Tensor:
    """images (B, 3, H, W), idx (B, K) raster indices of its cs x cs cells → (B, 3, cs, K·cs): the K cells
    side by side, in index order.

    One ``index_select`` of cs-pixel row segments (each image row is W/cs of them, contiguous): only the
    picked cells are read, and several times faster on CPU than advanced indexing of a cell view.
    """
    B, ch, H, W = images.shape
    wc, K = W // cs, idx.shape[1]
    row, col = grid_divmod(idx, wc)
    dev = idx.device
    plane = (torch.arange(B, device=dev)[:, None] * ch + torch.arange(ch, device=dev)) * H    # (B, ch) first rows
    line = plane[:, :, None, None] + (row * cs)[:, None, None, :] + torch.arange(cs, device=dev)[:, None]
    seg = line * wc + col[:, None, None, :]                                   # (B, ch, cs, K) segment numbers
    return images.reshape(-1, cs).index_select(0, seg.flatten()).view(B, ch, cs, K * cs)


def embed_cells(proj: nn.Conv2d, images: torch.Tensor, idx: torch.Tensor, cs: int, pos: torch.Tensor) -> torch.Tensor:
    """Level-0 tokens of the cells ``idx`` plus their position codes ``pos`` (B, 4K, C): ``proj`` (a
    stride-14 patch convolution) on each cell's 2x2 patches → (B, 4K, C), per cell in the order top-left,
    top-right, bottom-left, bottom-right.

    Equal to ``proj`` on the (B·K, 3, cs, cs) batch of cells (the original's call), token-major, + pos,
    bit for bit.
    """
    B, K = idx.shape
    strip = cell_strip(images, idx, cs).contiguous(memory_format=torch.channels_last)
    t = proj(strip).permute(0, 2, 3, 1)                   # (B, 2, 2K, C) = (B, dy, K, dx, C) in memory
    C = t.shape[-1]
    return (t.view(B, 2, K, 2, C).transpose(1, 2) + pos.view(B, K, 2, 2, C)).reshape(B, 4 * K, C)


def embed_grid(proj: nn.Conv2d, image: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Raster tokens of a whole image plus their position table: ``proj`` on image (B, 3, H, W) →
    (B, h·w, C) + pos[:h, :w] (pos: (≥h, ≥w, C)).

    Equal to ``proj(image).flatten(2).transpose(1, 2) + pos[:h, :w].reshape(h·w, C)``, bit for bit.
    """
    t = proj(image.contiguous(memory_format=torch.channels_last))              # (B, C, h, w), NHWC in memory
    B, C, h, w = t.shape
    return (t.permute(0, 2, 3, 1) + pos[:h, :w]).reshape(B, h * w, C)


def level_code_table(grids: tuple[int, ...], level_embed: torch.Tensor) -> torch.Tensor:
    """(levels, max grid, 2, C/2): for level l and coordinate v, [e(v) + embed_l[:C/2], e(v) + embed_l[C/2:]]
    with e(v) the sine code of the cell centre (v + 0.5) / grid_l — the two halves of every memory
    token's position code, ready to gather (see :func:`memory_pos_code`)."""
    n, C = level_embed.shape
    grid = torch.tensor(grids, dtype=torch.float32, device=level_embed.device)[:, None]
    v = torch.arange(max(grids), device=level_embed.device)
    e = sine_embed((v + 0.5) / grid, C // 2).to(level_embed.dtype)            # (levels, G, C/2)
    return e[:, :, None, :] + level_embed.view(n, 1, 2, C // 2)


def memory_pos_code(y: torch.Tensor, x: torch.Tensor, lvl: torch.Tensor, grids: tuple[int, ...],
                    level_embed: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """Position code of memory tokens at cells (y, x) of levels ``lvl`` (each (B, L)) → (B, L, C):
    [e(y), e(x)] of the cell centre plus the level's embedding [must match].

    ``table`` (:func:`level_code_table` of the same embedding): gathered from it, which is bit for bit the
    same — every element is the same sine of the same float plus the same embedding value.
    """
    C = level_embed.shape[1]
    if table is None:
        grid = torch.tensor(grids, dtype=torch.float32, device=lvl.device)[lvl]
        return sine_xy((x + 0.5) / grid, (y + 0.5) / grid, C).to(level_embed.dtype) + level_embed[lvl]
    row = lvl * table.shape[1]
    idx = torch.stack(((row + y) * 2, (row + x) * 2 + 1), -1)                  # (B, L, 2): y half, x half
    return table.view(-1, C // 2).index_select(0, idx.flatten()).view(*lvl.shape, C)
