"""What every runtime of an exported model shares (ONNX Runtime, TensorRT, and the next one).

An exported backend opens an artifact (:func:`sathmr.backends.meta.read_artifact`: metadata checked
against the graphs and the folder), refuses one made from other weights, another config or another
precision than asked, checks the body model against the fingerprint it was built with, and runs either
the static graph or the two stages with the shared token selection between them (:class:`TwoStage`).
A subclass provides how its runtime opens the files (``from_file``) and runs each graph (``_scale_map``,
``_tokens``, ``_static``) — nothing else.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sathmr.backends.base import Backend
from sathmr.backends.meta import Artifact, export_note, is_embedded, read_artifact
from sathmr.backends.precision import check_export_precision
from sathmr.backends.two_stage import TwoStage
from sathmr.common.errors import SathmrError
from sathmr.common.files import file_sha256
from sathmr.model.tokens import Selection


class ExportedBackend(Backend):
    """Base of the backends that run a ``sathmr export`` artifact."""

    suffix = ".onnx"          # of the files this runtime reads (a two-stage folder holds scale_map/tokens<suffix>)

    def __init__(self, artifact: Artifact, device, info: dict):
        self.artifact, self.meta = artifact, artifact.meta
        self.cfg = self.meta.cfg
        self.canvas_hw = self.meta.canvas_hw
        self.fixed_batch = self.meta.batch
        self.device, self.info = device, info
        if self.meta.layout == "two-stage":
            self.two_stage = TwoStage(self.cfg, self._scale_map, self._tokens)

    @classmethod
    def read_checked(cls, path: str | Path, config: str | None = None, checkpoint: str | Path | None = None,
                     precision: str | None = None) -> Artifact:
        """The artifact at ``path``; ``config``/``checkpoint``/``precision``, when given, must be the ones it
        was exported with (one-line refusals otherwise)."""
        art = read_artifact(path, suffix=cls.suffix)
        art.meta.check(config=config, checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None, source=str(path))
        check_export_precision(precision, art.meta.precision, str(path))
        return art

    @staticmethod
    def describe(path: str | Path, device, label: str, art: Artifact, **extra) -> dict:
        """The ``info`` every exported backend reports (bench and parity print it)."""
        meta = art.meta
        return {"path": str(path), "device": str(device), "config": meta.cfg.name, "layout": meta.layout,
                "precision": meta.precision, **extra, "note": export_note(path, label, meta),
                "embedded": is_embedded(meta)}

    def check_body_model(self, body_model) -> None:
        self.meta.check(body_fingerprint=getattr(body_model, "fingerprint", None), source=self.info["path"])

    def run_layout(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch through the graphs of this artifact's layout."""
        if self.meta.layout == "two-stage":
            return self.two_stage.run(images, img_hw)
        return self._static(images, img_hw)

    def check_canvas(self, images: torch.Tensor) -> None:
        if tuple(images.shape[2:]) != tuple(self.canvas_hw):
            raise SathmrError(f"the static graph takes {self.canvas_hw[0]}x{self.canvas_hw[1]} inputs, got "
                              f"{images.shape[2]}x{images.shape[3]} (collate to backend.canvas_hw)")

    # what a runtime implements -------------------------------------------------------------------
    def _scale_map(self, images: torch.Tensor, img_hw: torch.Tensor):
        """Stage A: (scale map on the CPU, whatever stage B/C needs of it)."""
        raise NotImplementedError

    def _tokens(self, images: torch.Tensor, stage_a, sel: Selection) -> dict[str, torch.Tensor]:
        """Stages B/C and the decoder on the selected tokens → QUERY_OUTPUTS."""
        raise NotImplementedError

    def _static(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        """The whole network as one fixed-budget graph → NET_OUTPUTS."""
        raise NotImplementedError
