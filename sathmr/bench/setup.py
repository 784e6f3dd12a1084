"""What a benchmark runs: the network (a checkpoint's, or the full architecture with random weights),
its body model, and the input images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from sathmr.body import load_body_model
from sathmr.inputs.items import iter_images
from sathmr.model import SATHMR, build_model
from sathmr.model.config import get_config
from sathmr.zoo.random_weights import random_network
from sathmr.zoo.weights import EMBEDDED, load_network, resolve, synthetic_smpl_dir


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
