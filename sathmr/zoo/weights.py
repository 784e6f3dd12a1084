"""Where weights and body models come from: the user's ``weights/`` folder, else the embedded default.

The embedded default is a small model trained on synthetic mannequin scenes (``sathmr train``) that
ships inside the package, paired with the synthetic body model the package generates itself. It makes
every command work on a fresh machine without downloads; it is *not* a model of real people.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sathmr.body import default_smpl_dir, generate_synthetic, load_mean_params
from sathmr.common.errors import SathmrError
from sathmr.model.checkpoint import load_model
from sathmr.model.config import ModelConfig
from sathmr.model.sathmr import SATHMR
from sathmr.zoo.local import cache_dir, default_checkpoint, locate, weights_dir
from sathmr.zoo.registry import EMBEDDED, MODELS

__all__ = ["EMBEDDED", "Resolved", "cache_dir", "checkpoint_path", "load_network", "resolve", "synthetic_smpl_dir",
           "weights_dir"]


def synthetic_smpl_dir(size: str = "tiny") -> Path:
    """The synthetic body model, generated once into the cache (deterministic, so safe to reuse)."""
    out = cache_dir() / f"smpl_synthetic_{size}"
    if not (out / "SMPL_NEUTRAL.npz").is_file() or not (out / "smpl_mean_params.npz").is_file():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        generate_synthetic(tmp, size=size)
        tmp.mkdir(parents=True, exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    return out


@dataclass
class Resolved:
    checkpoint: Path | None      # None = embedded default
    smpl_dir: Path
    embedded: bool
    note: str                    # what was picked and why, printed for the user


def checkpoint_path(spec: str | Path) -> Path:
    """A checkpoint given as a path or as a registry name (``sat_644_3dpw``: its file in weights/)."""
    path = locate(spec, "checkpoint")
    if not path.is_file():
        raise SathmrError(f"{path} is a folder, not a checkpoint file (an export? pass it with --model)")
    return path


def resolve(checkpoint: str | Path | None, smpl_dir: str | Path | None) -> Resolved:
    """Pick the checkpoint (a path or registry name; default: the first official one in weights/, else the
    embedded default) and the body model that goes with it; say plainly when real weights are absent."""
    if checkpoint is not None:
        ckpt = checkpoint_path(checkpoint)
        ckpt = None if ckpt.resolve() == EMBEDDED else ckpt
    else:
        ckpt = default_checkpoint()
    if ckpt is None:
        if not EMBEDDED.is_file():
            raise SathmrError(f"no checkpoint given, none in {weights_dir()}/ and no embedded default packaged")
        smpl = Path(smpl_dir) if smpl_dir else synthetic_smpl_dir("tiny")
        official = ", ".join(n for n, e in MODELS.items() if e.kind == "checkpoint" and e.hub is not None)
        note = ("using the embedded default, a tiny model trained on synthetic mannequins (not a model of real "
                "people) with the synthetic body model" if checkpoint is not None else
                f"no SAT-HMR weights in {weights_dir()}/ ({official}): using the embedded default, a tiny model "
                "trained on synthetic mannequins (not a model of real people) with the synthetic body model. "
                "Get the official weights with `sathmr weights fetch sat_644` (see `sathmr models`).")
        return Resolved(None, smpl, True, note)
    smpl = Path(smpl_dir) if smpl_dir else default_smpl_dir()
    return Resolved(ckpt, smpl, False, f"weights: {ckpt}; body model: {smpl}")


def load_network(checkpoint=None, config: str | ModelConfig | None = None, smpl_dir=None) -> tuple[SATHMR, dict]:
    """The PyTorch network from a checkpoint (official or ours), the user's weights/ or the embedded default.

    ``info`` holds what ``load_model`` reports plus ``note`` (what was picked, for the user),
    ``smpl_dir`` (the body model that goes with it) and ``embedded``.
    """
    res = resolve(checkpoint, smpl_dir)
    mean_params = None
    if res.checkpoint is not None and res.checkpoint.suffix != ".safetensors":
        try:
            mean_params = load_mean_params(res.smpl_dir)
        except SathmrError:
            mean_params = None  # the official checkpoints carry the means; load_model says if not
    model, info = load_model(res.checkpoint or EMBEDDED, config, mean_params)
    info.update(note=res.note, smpl_dir=str(res.smpl_dir), embedded=res.embedded)
    return model, info
