"""What a benchmark runs: the network (a checkpoint's, or the full architecture with random weights),
its body model, and the input images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from sathmr.body import load_body_model, load_mean_params
from sathmr.inputs.items import iter_images
from sathmr.model import SATHMR, build_model
from sathmr.model.config import get_config
from sathmr.zoo.weights import EMBEDDED, load_network, resolve, synthetic_smpl_dir

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


@dataclass
class Setup:
    """How to build the network: every benchmark process builds the same one from this description."""
    config: str | None              # None: the checkpoint's own (or sat_644 for an official file)
    checkpoint: str | None
    smpl_dir: Path
    seed: int = 0

    @property
    def random_weights(self) -> bool:
        return self.checkpoint is None

    def network(self) -> SATHMR:
        if self.checkpoint is not None:
            return load_network(self.checkpoint, self.config, self.smpl_dir)[0]
        return random_network(self.config or "sat_644", self.smpl_dir, self.seed)

    def param_count(self) -> int:
        """Parameters of the architecture, counted on the meta device (no memory, no weights read)."""
        if self.checkpoint is not None:
            return sum(p.numel() for p in self.network().parameters())
        with torch.device("meta"):
            return sum(p.numel() for p in build_model(get_config(self.config or "sat_644")).parameters())

    def body(self, device: str = "cpu"):
        body = load_body_model(self.smpl_dir)
        return body.to(device) if device.startswith("cuda") else body

    def note(self, smpl_given: bool) -> str:
        if self.checkpoint is not None:
            return resolve(self.checkpoint, self.smpl_dir).note     # says so when it is the embedded default
        return (f"no checkpoint: the {self.config or 'sat_644'} architecture with RANDOM weights (scale and confidence heads spread "
                f"so the token set mixes SAT, level-1 and level-2 tokens) and "
                f"{f'the body model in {self.smpl_dir}' if smpl_given else 'the synthetic body model sathmr generates'}. "
                "Timings only: the people found are meaningless.")


def make_setup(config: str | None, checkpoint, smpl_dir, seed: int = 0) -> Setup:
    if checkpoint is not None:   # a path or a registry name: every worker gets the file
        res = resolve(checkpoint, smpl_dir)
        return Setup(config, str(res.checkpoint or EMBEDDED), res.smpl_dir, seed)
    cfg = get_config(config or "sat_644")
    smpl = Path(smpl_dir) if smpl_dir else synthetic_smpl_dir("full" if cfg.name == "sat_644" else "tiny")
    return Setup(cfg.name, None, smpl, seed)


def synthetic_images(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """A landscape (16:9) and a portrait (4:5) image with smooth structure, as phone photos have."""
    rng = np.random.default_rng(seed)
    out = []
    for name, (h, w) in (("synthetic_landscape", (1080, 1920)), ("synthetic_portrait", (1350, 1080))):
        small = rng.integers(0, 256, (h // 40 + 1, w // 40 + 1, 3), dtype=np.uint8)
        out.append((name, cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)))
    return out


def load_images(images) -> list[tuple[str, np.ndarray]]:
    return [(it.name, it.load()) for it in iter_images(images)]
