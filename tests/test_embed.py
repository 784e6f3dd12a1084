"""The token embeddings' CPU layouts (sathmr.model.embed) equal the plain formulations bit for bit.

They are used everywhere (eager, autograd and the exported graphs), so a layout whose arithmetic differed
would move every output away from the original's; the full-size patch convolution (768 filters) is
checked as well as a small one, since oneDNN picks its kernels by shape.
"""

import pytest
import torch

from sathmr.model.embed import cell_strip, embed_cells, embed_grid, level_code_table, memory_pos_code
from sathmr.model.sathmr import batched_gather


@pytest.fixture(params=[16, 768], ids=["small", "full-size"])
def proj(request):
    torch.manual_seed(request.param)
    return torch.nn.Conv2d(3, request.param, 14, 14).eval()


@pytest.mark.parametrize("k", [1, 5, 228])
def test_cells_in_a_strip_equal_the_batch_of_cells(proj, k):
    """Level 0: ``proj`` on the strip of picked cells = ``proj`` on the (B·K, 3, 28, 28) batch of those cells
    (the original's call), its 2x2 outputs in raster order, plus the position codes — exactly."""
    torch.manual_seed(k)
    B, cs, hc, wc = 2, 28, 16, 18
    images = torch.randn(B, 3, hc * cs, wc * cs)
    idx = torch.stack([torch.randperm(hc * wc)[:k] for _ in range(B)])
    pos = torch.randn(B, 4 * k, proj.out_channels)
    cells = images.view(B, 3, hc, cs, wc, cs).permute(0, 2, 4, 1, 3, 5).reshape(B, hc * wc, 3, cs, cs)
    picked = cells[torch.arange(B)[:, None], idx]                                   # (B, K, 3, cs, cs)
    strip = cell_strip(images, idx, cs)
    assert torch.equal(strip, picked.permute(0, 2, 3, 1, 4).reshape(B, 3, cs, k * cs))
    with torch.no_grad():
        want = proj(picked.reshape(B * k, 3, cs, cs)).flatten(2).transpose(1, 2).reshape(B, 4 * k, -1) + pos
        assert torch.equal(embed_cells(proj, images, idx, cs, pos), want)


@pytest.mark.parametrize("hw", [(448, 644), (224, 224), (252, 140)])
def test_grid_tokens_equal_the_flattened_convolution(proj, hw):
    """Level 1: the channels-last convolution's tokens + the position table = flatten/transpose of the
    plain convolution + the table's top-left corner — exactly."""
    torch.manual_seed(hw[0])
    image = torch.randn(1, 3, *hw)
    h, w = hw[0] // 14, hw[1] // 14
    table = torch.randn(h + 3, w + 2, proj.out_channels)
    with torch.no_grad():
        want = proj(image).flatten(2).transpose(1, 2) + table[:h, :w].reshape(h * w, -1)
        got = embed_grid(proj, image, table)
    assert got.is_contiguous() and torch.equal(got, want)


@pytest.mark.parametrize("dim", [64, 768])
def test_position_code_table_equals_the_computed_code(dim):
    """The memory position code gathered from the per-level table = sine code + level embedding computed
    per token, for every level and coordinate — exactly."""
    torch.manual_seed(dim)
    grids = (92, 46, 23)
    embed = torch.randn(3, dim)
    every = torch.cat([torch.stack((torch.full((g,), lv), torch.arange(g))) for lv, g in enumerate(grids)], 1)
    lvl = every[0][None].repeat(2, 1)                              # every level and coordinate...
    y, x = every[1][None], every[1].flip(0)[None] % torch.tensor(grids)[lvl[:1]]
    y, x = torch.cat((y, x)), torch.cat((x, y))                    # ...as rows and as columns
    want = memory_pos_code(y, x, lvl, grids, embed)
    got = memory_pos_code(y, x, lvl, grids, embed, level_code_table(grids, embed))
    assert got.shape == (2, sum(grids), dim) and torch.equal(got, want)


def test_batched_gather_picks_rows_per_image():
    x = torch.randn(3, 7, 4, 5)
    idx = torch.tensor([[6, 0], [2, 2], [1, 5]])
    assert torch.equal(batched_gather(x, idx), x[torch.arange(3)[:, None], idx])
