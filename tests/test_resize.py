"""The resize of spec §4.1 with the original's float32 tensor arithmetic, for every image size."""

import numpy as np
import pytest
import torch

from sathmr.runtime.preprocess import prepare, resize_long_side, resize_rate


def original_resize(h0: int, w0: int, size: int = 1288) -> tuple[float, tuple[int, int]]:
    """The original's code (datasets/base.py), run with torch: rate and resized (h, w)."""
    img_size = torch.tensor([h0, w0])
    if img_size[1] >= img_size[0]:
        rate = size / img_size[1]
        return rate.item(), (int(rate * img_size[0]), size)
    rate = size / img_size[0]
    return rate.item(), (size, int(rate * img_size[1]))


# (W0, H0) as photos are usually quoted: width x height
TABLE = [(4032, 3024), (3024, 4032), (1200, 900), (4160, 3120), (109, 109), (1500, 2250), (2215, 3819), (640, 480),
         (2016, 1512), (1920, 1080), (1080, 1920), (1, 1), (3000, 20), (20, 3000)]


@pytest.mark.parametrize("w0,h0", TABLE)
@pytest.mark.parametrize("size", [1288, 448])
def test_resize_matches_the_original_float32_arithmetic(w0, h0, size):
    r, hw = resize_rate((h0, w0), size)
    r_orig, hw_orig = original_resize(h0, w0, size)
    assert hw == (max(hw_orig[0], 1), max(hw_orig[1], 1)) and r == r_orig
    img, r_img = resize_long_side(np.zeros((h0, w0, 3), np.uint8), size)
    assert img.shape[:2] == hw and r_img == r


def test_known_cases_where_float64_would_differ():
    # 4:3 phone photos: the original gives 966 rows (float64: 965), in both orientations
    assert resize_rate((3024, 4032), 1288)[1] == (966, 1288)
    assert resize_rate((4032, 3024), 1288)[1] == (1288, 966)
    assert int(1288 / 4032 * 3024) == 965
    # the other way round: 4160x3120 gives 965 (float64: 966)
    assert resize_rate((3120, 4160), 1288)[1] == (965, 1288) and int(1288 / 4160 * 3120) == 966
    # squares: torch's `1288 / t` is reciprocal(t) * 1288, so 109x109 becomes 1287x1288 (float64: 1288)
    assert resize_rate((109, 109), 1288)[1] == (1287, 1288) and int(1288 / 109 * 109) == 1288
    # the recorded rate is the float32 value
    assert resize_rate((3024, 4032), 1288)[0] == float(np.float32(np.float32(1) / np.float32(4032)) * np.float32(1288))
    assert prepare(np.zeros((3024, 4032, 3), np.uint8), 1288, 56).scale == original_resize(3024, 4032)[0]


def test_sweep_of_sizes_matches_torch():
    """Every square up to 2000 and 3000 random sizes: the float32 emulation never disagrees with torch."""
    rng = np.random.default_rng(0)
    sizes = [(a, a) for a in range(1, 2001)] + [tuple(int(v) for v in rng.integers(1, 10000, 2)) for _ in range(3000)]
    differ64 = 0
    for h0, w0 in sizes:
        r_orig, hw_orig = original_resize(h0, w0)
        r, hw = resize_rate((h0, w0), 1288)
        assert (r, hw) == (r_orig, (max(hw_orig[0], 1), max(hw_orig[1], 1))), (h0, w0)
        differ64 += h0 == w0 and int(1288 / w0 * h0) != hw[0]
    assert differ64 > 100           # ~12 % of squares: the reason float64 arithmetic is not enough
