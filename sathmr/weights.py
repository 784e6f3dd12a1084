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
from sathmr.config import ModelConfig
from sathmr.errors import SathmrError
from sathmr.model.checkpoint import load_model
from sathmr.model.sathmr import SATHMR

OFFICIAL_NAMES = ("sat_644.pth", "sat_644_agora.pth", "sat_644_3dpw.pth")
EMBEDDED = Path(__file__).parent / "data" / "default_tiny.safetensors"


def weights_dir() -> Path:
    return Path(os.environ.get("SATHMR_WEIGHTS", "weights"))


def cache_dir() -> Path:
    base = os.environ.get("SATHMR_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "sathmr")
    return Path(base)


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


def resolve(checkpoint: str | Path | None, smpl_dir: str | Path | None) -> Resolved:
    """Pick the checkpoint and body model; say plainly when real weights are absent."""
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise SathmrError(f"checkpoint not found: {ckpt}")
    else:
        found = [weights_dir() / n for n in OFFICIAL_NAMES if (weights_dir() / n).is_file()]
        ckpt = found[0] if found else None
    if ckpt is None:
        if not EMBEDDED.is_file():
            raise SathmrError(f"no checkpoint given, none in {weights_dir()}/ and no embedded default packaged")
        smpl = Path(smpl_dir) if smpl_dir else synthetic_smpl_dir("tiny")
        note = (f"no SAT-HMR weights in {weights_dir()}/ ({', '.join(OFFICIAL_NAMES)}): using the embedded "
                "default, a tiny model trained on synthetic mannequins (not a model of real people) with the "
                "synthetic body model. See weights/README.md for the official weights.")
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
