"""Model configurations. ``sat_644`` carries the paper's (and the official checkpoints') numbers."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from sathmr.common.errors import SathmrError


@dataclass(frozen=True)
class ModelConfig:
    name: str = "sat_644"
    input_size: int = 1288          # canvas side S; long image side is resized to it
    patch_size: int = 14            # ViT patch; level-1 cells are 2 patches, level-2 groups 4
    embed_dim: int = 768            # encoder width = decoder d_model
    depth: int = 12                 # ViT blocks
    num_heads: int = 12
    mlp_ratio: float = 4.0
    split_layer: int = 3            # blocks before the token split (stages A/B); rest is stage C
    conf_thresh: float = 0.3        # scale-map person presence, strict ">"
    scale_thresh: float = 0.5       # small-person scale, strict "<"
    dec_layers: int = 6
    dec_heads: int = 4
    dim_feedforward: int = 2048
    num_queries: int = 50
    pose_head_layers: int = 6
    shape_head_layers: int = 5
    num_joints: int = 24            # SMPL joints posed by the network
    num_betas: int = 10
    fov_deg: float = 60.0
    dn_number: int = 10             # denoising groups (training only)
    dn_params_dim: int = 82         # axis-angle pose (72) + betas (10) fed to dn_enc

    def __post_init__(self) -> None:
        if self.input_size % (4 * self.patch_size):
            raise SathmrError(f"input_size {self.input_size} must be a multiple of {4 * self.patch_size}")
        if not 0 < self.split_layer < self.depth:
            raise SathmrError(f"split_layer must be in (0, {self.depth})")

    # Derived sizes -------------------------------------------------------------------------
    @property
    def cell_size(self) -> int:
        """Level-1 cell side in canvas pixels (28 for sat_644)."""
        return 2 * self.patch_size

    @property
    def grid0(self) -> int:
        """Level-0 grid side of the full canvas (92)."""
        return self.input_size // self.patch_size

    @property
    def grid1(self) -> int:
        return self.grid0 // 2

    @property
    def grid2(self) -> int:
        return self.grid0 // 4

    @property
    def pad_multiple(self) -> int:
        """Images are zero-padded to multiples of this (56), so level-1 grids are always even."""
        return 4 * self.patch_size

    @property
    def focal(self) -> float:
        return self.input_size / (2.0 * math.tan(math.radians(self.fov_deg) / 2.0))

    # Serialisation ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SathmrError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


CONFIGS: dict[str, ModelConfig] = {
    "sat_644": ModelConfig(),
    # Same structure at a fraction of the size: fast tests and the CPU-trainable embedded default.
    "tiny": ModelConfig(
        name="tiny", input_size=448, embed_dim=64, depth=6, num_heads=4, split_layer=3,
        dec_layers=3, dec_heads=2, dim_feedforward=128, num_queries=12,
    ),
}
# The embedded default: ``tiny`` on a 336-px canvas, which halves its cost per training step on one CPU thread.
CONFIGS["tiny336"] = dataclasses.replace(CONFIGS["tiny"], name="tiny336", input_size=336)


def get_config(name: str) -> ModelConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise SathmrError(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}") from None

