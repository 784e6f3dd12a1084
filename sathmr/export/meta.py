"""What an exported model was built from: the metadata every exported file carries, and its checks.

Neutral ground between the exporters (``sathmr.export.onnx``/``trt``) and the backends that load their
files: both import this module, neither imports the other. Everything that decides whether a file may
be used with a given body model, config or checkpoint travels inside the file (ONNX ``metadata_props``),
so backends refuse mismatches with a clear message instead of producing wrong people.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from torch import nn

from sathmr import __version__
from sathmr.config import ModelConfig
from sathmr.errors import SathmrError
from sathmr.model.sathmr import NET_OUTPUTS
from sathmr.model.tokens import TokenBudget

INPUT_NAMES = ("images", "img_hw")
FORMAT_TAG = "sathmr-onnx-1"
DEFAULT_OPSET = 18
# protobuf cannot serialise a single message above 2 GiB; weights go to a side file beyond this
EXTERNAL_DATA_BYTES = 1_800_000_000


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_sha256(model: nn.Module) -> str:
    """Fingerprint of in-memory weights (when there is no checkpoint file to hash)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ExportMeta:
    """What an exported graph was built from; stored as string pairs in ``metadata_props``."""
    cfg: ModelConfig
    budget: TokenBudget
    canvas_hw: tuple[int, int]
    batch: int | None                    # None = dynamic batch dimension
    thresholds: tuple[float, ...] = (0.3,)
    body_fingerprint: str | None = None
    checkpoint_sha256: str | None = None
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    sathmr_version: str = __version__

    def to_props(self) -> dict[str, str]:
        return {
            "sathmr.format": FORMAT_TAG,
            "sathmr.version": self.sathmr_version,
            "sathmr.config": self.cfg.to_json(),
            "sathmr.budget": json.dumps({"sat_cells": self.budget.sat_cells, "context": self.budget.context}),
            "sathmr.canvas_hw": json.dumps(list(self.canvas_hw)),
            "sathmr.batch": json.dumps(self.batch),
            "sathmr.inputs": json.dumps(list(INPUT_NAMES)),
            "sathmr.outputs": json.dumps(list(NET_OUTPUTS)),
            "sathmr.thresholds": json.dumps(list(self.thresholds)),
            "sathmr.body_model_fingerprint": self.body_fingerprint or "",
            "sathmr.checkpoint_sha256": self.checkpoint_sha256 or "",
            "sathmr.opset": str(self.opset),
            "sathmr.fp16": json.dumps(self.fp16),
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> "ExportMeta":
        if props.get("sathmr.format") != FORMAT_TAG:
            raise SathmrError(f"{source} is not a sathmr export (no '{FORMAT_TAG}' metadata); "
                              "re-export it with `sathmr export`")
        try:
            budget = json.loads(props["sathmr.budget"])
            outputs = tuple(json.loads(props["sathmr.outputs"]))
            meta = cls(
                cfg=ModelConfig.from_json(props["sathmr.config"]),
                budget=TokenBudget(budget["sat_cells"], budget["context"]),
                canvas_hw=tuple(json.loads(props["sathmr.canvas_hw"])),
                batch=json.loads(props["sathmr.batch"]),
                thresholds=tuple(json.loads(props["sathmr.thresholds"])),
                body_fingerprint=props.get("sathmr.body_model_fingerprint") or None,
                checkpoint_sha256=props.get("sathmr.checkpoint_sha256") or None,
                opset=int(props["sathmr.opset"]),
                fp16=json.loads(props["sathmr.fp16"]),
                sathmr_version=props.get("sathmr.version", "?"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise SathmrError(f"{source} has damaged sathmr metadata ({exc}); re-export it") from None
        if outputs != NET_OUTPUTS:
            raise SathmrError(f"{source} was exported by sathmr {meta.sathmr_version} with outputs {list(outputs)}; "
                              f"this version expects {list(NET_OUTPUTS)}: re-export it")
        return meta

    def check(self, config: str | None = None, checkpoint_sha256: str | None = None,
              body_fingerprint: str | None = None, source: str = "model") -> None:
        """Refuse a file built for another config, checkpoint or body model (clear one-line errors)."""
        if config is not None and config != self.cfg.name:
            raise SathmrError(f"{source} was exported with config {self.cfg.name!r}, not {config!r}")
        if checkpoint_sha256 and self.checkpoint_sha256 and checkpoint_sha256 != self.checkpoint_sha256:
            raise SathmrError(f"{source} was exported from a different checkpoint "
                              f"(sha256 {self.checkpoint_sha256[:12]}…, given {checkpoint_sha256[:12]}…)")
        if body_fingerprint and self.body_fingerprint and body_fingerprint != self.body_fingerprint:
            raise SathmrError(f"{source} was exported with a different body model (fingerprint "
                              f"{self.body_fingerprint[:12]}…, --smpl-dir gives {body_fingerprint[:12]}…): "
                              "pass the --smpl-dir used at export, or re-export")


def read_meta(path: str | Path) -> ExportMeta:
    """Metadata of an exported ONNX file, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise SathmrError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError as exc:
        raise SathmrError(f"cannot read ONNX model {path}: not an ONNX file, or truncated ({exc})") from None
    return ExportMeta.from_props({p.key: p.value for p in proto.metadata_props}, str(path))




def sidecar(engine_path: str | Path) -> Path:
    """The JSON file beside a TensorRT engine that holds its metadata (an engine has no room for it)."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")
