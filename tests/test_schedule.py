"""Learning-rate schedule of the training loop: the original's cosine by default, warm-up and floor as options."""

from __future__ import annotations

import math

import pytest
import torch

from sathmr.common.errors import SathmrError
from sathmr.train.schedule import warmup_cosine_lambda


def test_defaults_are_the_original_cosine() -> None:
    f = warmup_cosine_lambda(100)
    for step in range(0, 130, 7):
        assert f(step) == pytest.approx(0.5 * (1.0 + math.cos(math.pi * min(step, 100) / 100)), abs=1e-12)
    assert f(0) == 1.0 and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-15)


def test_warmup_is_linear_then_cosine_to_the_floor() -> None:
    f = warmup_cosine_lambda(110, warmup_steps=10, min_ratio=0.1)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == 1.0
    assert f(60) == pytest.approx(0.55)                  # half-way through the decay
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_drives_lambdalr_per_step() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine_lambda(20, warmup_steps=4))
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


@pytest.mark.parametrize("warmup, floor", [(-1, 0.0), (0, 1.5), (0, -0.1)])
def test_bad_options_are_one_line_errors(warmup: int, floor: float) -> None:
    with pytest.raises(SathmrError, match="warmup-steps"):
        warmup_cosine_lambda(10, warmup, floor)
