"""Learning-rate schedules of the training loop, as multipliers of each group's base rate (LambdaLR).

The original decays with a plain cosine from the first step (``warmup_steps=0, min_ratio=0``, the
default). A small model trained from scratch at a higher rate diverges in its first updates without a
warm-up, and a cosine that ends at zero wastes its last steps, hence the two recipe options.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from sathmr.common.errors import SathmrError


def warmup_cosine_lambda(total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up from 1/warmup to 1 over ``warmup_steps``, then cosine from 1 to ``min_ratio``.

    With ``warmup_steps=0`` and ``min_ratio=0`` this is the original's cosine (up to float rounding).
    """
    if warmup_steps < 0 or not 0.0 <= min_ratio <= 1.0:
        raise SathmrError(f"need --warmup-steps >= 0 and 0 <= --min-lr-ratio <= 1, got {warmup_steps}, {min_ratio}")
    decay_steps = max(total_steps - warmup_steps, 0)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(step - warmup_steps, decay_steps) / max(decay_steps, 1)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor
