"""The full architecture with random weights whose heads are spread: what ``--random-weights`` runs
(benchmarks, parity, the tests), since official weights cannot be shipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sathmr.body import load_mean_params
from sathmr.model import SATHMR, build_model
from sathmr.model.config import get_config

# Scale-head biases for random weights. Random features barely cluster in space, so a conf bias of -1.5
# marks nearly every 2x2 group as "person" and leaves no level-2 background. With these biases the
# sat_644 network selects on the two test photos 912/1016/57 and 392/558/158 level-0/1/2 tokens (1985
# and 1108 in all): every level present, high-res tokens 20-45 % of the sequence.
RANDOM_CONF_BIAS, RANDOM_SCALE_BIAS = -2.5, 0.0


def spread_heads(model: SATHMR, seed: int = 0, conf_bias: float = -1.5, scale_bias: float = 1.0,
                 spread: float = 3.0) -> SATHMR:
    """Give randomly initialised heads outputs that spread across the thresholds, in place.

    Random weights make the scale map uninformative (sigmoid of ~0: conf = scale = 0.5 in every
    cell, so every cell is valid and the token set is degenerate) and every box the anchor. For
    parity runs and benchmarks without trained weights: He-initialised scale-head layers and logits
    of standard deviation ``spread`` around the given biases give a mixed set of SAT, level-1 and
    level-2 tokens, boxes that move, and confidences on both sides of the detection threshold.
    """
    g = torch.Generator().manual_seed(seed)
    randn = lambda t: torch.randn(t.shape, generator=g)  # noqa: E731
    with torch.no_grad():
        *hidden, last = model.scale_head.layers
        for lin in hidden:
            lin.weight.copy_(randn(lin.weight) * (2.0 / lin.in_features) ** 0.5)
            lin.bias.zero_()
        w = randn(last.weight)
        last.weight.copy_((w - w.mean(1, keepdim=True)) * spread / last.in_features ** 0.5)  # ReLU inputs: zero-sum rows keep logits centred
        last.bias.copy_(torch.tensor([conf_bias, scale_bias]))
        for mlp in model.bbox_embed:
            w = mlp.layers[-1].weight
            w.copy_(randn(w) * 0.2 / w.shape[1] ** 0.5)
        model.conf_head.weight.copy_(randn(model.conf_head.weight) * spread / model.conf_head.in_features ** 0.5)
        model.conf_head.bias.zero_()
    return model


def random_network(config: str, smpl_dir: Path, seed: int = 0) -> SATHMR:
    """The ``config`` architecture with random weights whose heads are spread (deterministic in ``seed``)."""
    cfg = get_config(config)
    pose, shape = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in load_mean_params(smpl_dir))
    torch.manual_seed(seed)
    return spread_heads(build_model(cfg, pose, shape).eval(), seed=seed, conf_bias=RANDOM_CONF_BIAS,
                        scale_bias=RANDOM_SCALE_BIAS)
