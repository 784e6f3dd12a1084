"""The registry of known models (timm's ``default_cfgs`` idea): one entry per file, with where it comes
from, what it is for, how to check it and what the original authors reported for it.

Sizes and checksums are filled in only where they are known for certain; the official files' are not
published, so `sathmr weights fetch` checks them against the Hub (whose ETag of a large file is its
sha256) and records them locally on first verified use (:mod:`sathmr.zoo.local`).
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from pathlib import Path

from sathmr.common.errors import SathmrError

#: the embedded default: a tiny model trained on synthetic mannequins, shipped inside the package
EMBEDDED = Path(__file__).resolve().parents[1] / "data" / "default_tiny.safetensors"

OFFICIAL_REPO = "ChiSu001/SAT-HMR"
OFFICIAL_LICENCE = "SAT-HMR release terms [n/v]; holds SMPL data (SMPL licence)"
#: the official README's numbers (spec §11.1, commit 7b157fa)
README = "https://github.com/ChiSu001/SAT-HMR#evaluation"


@dataclass(frozen=True)
class HubFile:
    """A file on the Hugging Face Hub (``https://huggingface.co/{repo}/resolve/{revision}/{path}``)."""
    repo: str
    path: str
    revision: str = "main"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/blob/{self.revision}/{self.path}"


@dataclass(frozen=True)
class Reported:
    """A result the original authors published for a model; errors in mm, F1 unitless."""
    benchmark: str
    threshold: float
    values: tuple[tuple[str, float], ...]

    def __str__(self) -> str:
        vals = ", ".join(f"{k} {v:g}" + ("" if k == "F1" else " mm") for k, v in self.values)
        return f"{self.benchmark} (τ {self.threshold:g}): {vals}"


@dataclass(frozen=True)
class ModelEntry:
    """One known model file.

    ``kind`` says what the file is used as: ``checkpoint`` (SAT-HMR weights: infer, eval, export) or
    ``encoder`` (an initialisation for ``sathmr train --init dinov2:PATH``, not runnable by itself).
    """
    name: str
    filename: str                       # its name in the weights folder
    kind: str                           # "checkpoint" | "encoder"
    purpose: str
    licence: str
    config: str | None = None           # ModelConfig name; None: read from the file (ours carry it)
    canvas: int | None = None           # input side in pixels
    hub: HubFile | None = None          # where `sathmr weights fetch` gets it
    url: str | None = None              # where it comes from otherwise
    subdir: str | None = None           # the original release's folder under weights/ (also searched)
    size: int | None = None             # bytes, where known for certain
    sha256: str | None = None           # where known for certain
    packaged: Path | None = None        # shipped inside the package
    reported: tuple[Reported, ...] = ()

    @property
    def source(self) -> str:
        if self.packaged is not None:
            return "packaged with sathmr"
        if self.hub is not None:
            return f"hf://{self.hub.repo}/{self.hub.path}"
        return self.url or "?"


def _official(name: str, purpose: str, *reported: Reported) -> ModelEntry:
    return ModelEntry(name, f"{name}.pth", "checkpoint", purpose, OFFICIAL_LICENCE, config="sat_644", canvas=1288,
                      hub=HubFile(OFFICIAL_REPO, f"weights/sat_hmr/{name}.pth"), subdir="sat_hmr", reported=reported)


_ENTRIES = (
    _official("sat_644", "SAT-HMR trained on the full data mix: the default for real images",
              Reported("AGORA-val", 0.5, (("F1", 0.95), ("MPJPE", 63.0), ("MVE", 59.0))),
              Reported("BEDLAM-val", 0.5, (("F1", 0.98), ("MPJPE", 48.7), ("MVE", 46.2)))),
    _official("sat_644_agora", "SAT-HMR fine-tuned for the AGORA test set (leaderboard submissions)",
              Reported("AGORA-test", 0.5, (("F1", 0.95), ("MPJPE", 67.9), ("MVE", 63.3)))),
    _official("sat_644_3dpw", "SAT-HMR fine-tuned on 3DPW (in-the-wild video, few people)",
              Reported("3DPW-test", 0.3, (("MPJPE", 63.6), ("PA-MPJPE", 41.6), ("MVE", 73.7)))),
    ModelEntry("embedded", EMBEDDED.name, "checkpoint",
               "tiny model trained on synthetic mannequins: runs everywhere, NOT a model of real people",
               "Apache-2.0 (sathmr)", packaged=EMBEDDED),
    ModelEntry("dinov2_vitb14", "dinov2_vitb14_pretrain.pth", "encoder",
               "DINOv2 ViT-B/14 (distilled, no registers): encoder initialisation for training from scratch",
               "Apache-2.0 (DINOv2)", url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
               subdir="dinov2"),
)
MODELS: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}


def list_models(pattern: str = "*") -> list[ModelEntry]:
    """Entries whose name matches a shell pattern (``sat_644*``); a plain word matches as a substring."""
    if not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    return [e for e in MODELS.values() if fnmatch.fnmatchcase(e.name, pattern)]


def get_entry(name: str) -> ModelEntry:
    """The entry called ``name`` (its file name works too: ``sat_644.pth``)."""
    found = MODELS.get(name) or next((e for e in MODELS.values() if e.filename == name), None)
    if found is None:
        close = difflib.get_close_matches(name, list(MODELS), n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(MODELS)}"
        raise SathmrError(f"unknown model {name!r}{hint} (see `sathmr models`)")
    return found
