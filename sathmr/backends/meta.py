"""What an exported model is and was built from: the graphs' names and axes, and the metadata every
exported file carries.

Neutral ground between the exporters (``sathmr.export.onnx``/``trt``) and the backends that load their
files: both import this module, neither imports the other. Everything that decides whether a file may
be used with a given body model, config or checkpoint travels inside the file (ONNX ``metadata_props``,
a JSON header in front of a TensorRT engine), so backends refuse mismatches with a clear message
instead of producing wrong people.

Two layouts:
  * ``two-stage`` (the default): a folder with ``scale_map.onnx`` (stage A → scale map) and
    ``tokens.onnx`` (stages B/C, decoder, heads), the shared ``TokenSelector`` running between them on
    the host. Every token axis is dynamic, so the graphs cost what each image needs and are exact on
    every image; the selected indices enter as inputs, so neither graph has a data-dependent shape.
  * ``static``: one graph with fixed token budgets (``--static-budget``), for runtimes without dynamic
    shapes or CUDA-graph capture; overflow is flagged in ``tok_overflow``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from sathmr import __version__
from sathmr.backends.formats import DEFAULT_OPSET
from sathmr.backends.formats import STAGES as GRAPH_STAGES
from sathmr.backends.integrity import check_meta_values, check_signature, read_header
from sathmr.backends.ir import IR_SUFFIX, ir_props
from sathmr.backends.precision import EXPORT_PRECISIONS
from sathmr.common.errors import SathmrError
from sathmr.common.files import file_sha256
from sathmr.model.config import ModelConfig
from sathmr.model.sathmr import NET_OUTPUTS
from sathmr.model.tokens import TokenBudget

FORMAT_TAG = "sathmr-onnx-2"        # -1: the single static graph of sathmr <= 0.1 (refused: re-export)
LAYOUTS = ("two-stage", "static")
#: onnxruntime: with ONNX Runtime's fused operators (the default); portable: standard ONNX operators only
TARGETS = ("onnxruntime", "portable")
#: int8: the tokens graph's MatMul weights quantised (sathmr.export.quantize); stage A stays fp32 at every precision
PRECISIONS = EXPORT_PRECISIONS
QUERY_OUTPUTS = ("pred_boxes", "pred_confs", "pred_pose6d", "pred_betas", "pred_cam")
#: graph name → (input names, output names); a two-stage folder holds <name>.onnx / <name>.engine
GRAPHS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "scale_map": (("images", "img_hw"), ("scale_map", "t1", "cls")),
    "tokens": (("images", "t1", "cls", "sat_idx", "sat_valid", "ctx_idx", "ctx_valid"), QUERY_OUTPUTS),
    "static": (("images", "img_hw"), NET_OUTPUTS),
}
STAGES = GRAPH_STAGES
ENGINE_MAGIC = b"SATHMR-TRT\x00"    # + little-endian u32 length + JSON metadata, then the serialized engine


def state_sha256(model: nn.Module) -> str:
    """Fingerprint of in-memory weights (when there is no checkpoint file to hash)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def axis_ranges(cfg: ModelConfig, max_batch: int) -> dict[str, tuple[int, int]]:
    """The dynamic axes of the two-stage graphs and their ranges (what TensorRT's profiles span)."""
    side = cfg.input_size // cfg.pad_multiple
    cells = (cfg.input_size // cfg.cell_size) ** 2
    return {"batch": (1, max_batch), "h56": (1, side), "w56": (1, side), "sat_cells": (1, cells),
            "ctx_tokens": (1, cells)}


@dataclass(frozen=True)
class ExportMeta:
    """What an exported model was built from; stored as string pairs in every file it consists of."""
    cfg: ModelConfig
    layout: str = "two-stage"
    budget: TokenBudget | None = None            # static layout: the fixed token budgets
    canvas_hw: tuple[int, int] | None = None     # static layout: the fixed input size
    batch: int | None = None                     # a fixed batch size; None = dynamic
    max_batch: int = 64                          # largest dynamic batch the graphs were declared for
    thresholds: tuple[float, ...] = (0.3,)
    body_fingerprint: str | None = None
    checkpoint_sha256: str | None = None
    opset: int = DEFAULT_OPSET
    precision: str = "fp32"
    target: str = "onnxruntime"
    export_id: str = ""                          # the same in every file of one export
    sathmr_version: str = __version__
    extra: dict = field(default_factory=dict, compare=False)   # engine build settings (TensorRT)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise SathmrError(f"unknown export layout {self.layout!r}; choose from {', '.join(LAYOUTS)}")
        if self.target not in TARGETS:
            raise SathmrError(f"unknown export target {self.target!r}; choose from {', '.join(TARGETS)}")
        if self.precision not in PRECISIONS:
            raise SathmrError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.layout == "static" and (self.budget is None or not self.budget.is_static or self.canvas_hw is None):
            raise SathmrError("a static export needs both token budgets and a canvas")

    @property
    def graphs(self) -> tuple[str, ...]:
        return STAGES if self.layout == "two-stage" else ("static",)

    def axes(self) -> dict[str, tuple[int, int]]:
        return axis_ranges(self.cfg, self.batch or self.max_batch)

    def to_props(self, graph: str) -> dict[str, str]:
        inputs, outputs = GRAPHS[graph]
        return {
            "sathmr.format": FORMAT_TAG,
            "sathmr.version": self.sathmr_version,
            "sathmr.layout": self.layout,
            "sathmr.graph": graph,
            "sathmr.export_id": self.export_id,
            "sathmr.config": self.cfg.to_json(),
            "sathmr.budget": json.dumps(None if self.budget is None else
                                        {"sat_cells": self.budget.sat_cells, "context": self.budget.context}),
            "sathmr.canvas_hw": json.dumps(None if self.canvas_hw is None else list(self.canvas_hw)),
            "sathmr.batch": json.dumps(self.batch),
            "sathmr.max_batch": json.dumps(self.max_batch),
            "sathmr.axes": json.dumps(self.axes()),
            "sathmr.inputs": json.dumps(list(inputs)),
            "sathmr.outputs": json.dumps(list(outputs)),
            "sathmr.thresholds": json.dumps(list(self.thresholds)),
            "sathmr.body_model_fingerprint": self.body_fingerprint or "",
            "sathmr.checkpoint_sha256": self.checkpoint_sha256 or "",
            "sathmr.opset": str(self.opset),
            "sathmr.precision": self.precision,
            "sathmr.target": self.target,
            "sathmr.extra": json.dumps(self.extra),
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model", graph: str | None = None) -> ExportMeta:
        """Parse and validate; ``graph``, when given, is the graph the file must hold."""
        tag = props.get("sathmr.format")
        if tag != FORMAT_TAG:
            raise SathmrError(f"{source} is not a sathmr export of this version (format {tag or 'none'}, expected "
                              f"{FORMAT_TAG}); re-export it with `sathmr export`")
        try:
            budget = json.loads(props["sathmr.budget"])
            canvas = json.loads(props["sathmr.canvas_hw"])
            meta = cls(
                cfg=ModelConfig.from_json(props["sathmr.config"]),
                layout=props["sathmr.layout"],
                budget=None if budget is None else TokenBudget(budget["sat_cells"], budget["context"]),
                canvas_hw=None if canvas is None else tuple(canvas),
                batch=json.loads(props["sathmr.batch"]),
                max_batch=json.loads(props["sathmr.max_batch"]),
                thresholds=tuple(json.loads(props["sathmr.thresholds"])),
                body_fingerprint=props.get("sathmr.body_model_fingerprint") or None,
                checkpoint_sha256=props.get("sathmr.checkpoint_sha256") or None,
                opset=int(props["sathmr.opset"]),
                precision=props["sathmr.precision"],
                target=props["sathmr.target"],
                export_id=props["sathmr.export_id"],
                sathmr_version=props.get("sathmr.version", "?"),
                extra=json.loads(props.get("sathmr.extra", "{}")),
            )
            found = props["sathmr.graph"]
            io = (tuple(json.loads(props["sathmr.inputs"])), tuple(json.loads(props["sathmr.outputs"])))
        except (KeyError, ValueError, TypeError) as exc:
            raise SathmrError(f"{source} has damaged sathmr metadata ({exc}); re-export it") from None
        check_meta_values(meta.batch, meta.max_batch, meta.canvas_hw, meta.budget, meta.thresholds, source)
        if graph is not None and found != graph:
            raise SathmrError(f"{source} holds the {found!r} graph, expected {graph!r}")
        if found not in GRAPHS or io != GRAPHS[found]:
            raise SathmrError(f"{source} was exported by sathmr {meta.sathmr_version} with other inputs/outputs "
                              f"({io}); re-export it")
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

    def with_extra(self, **extra) -> ExportMeta:
        return replace(self, extra={**self.extra, **extra})


@dataclass(frozen=True)
class Artifact:
    """An exported model on disk: its metadata and the file of each of its graphs."""
    meta: ExportMeta
    files: dict[str, Path]       # graph name → file
    path: Path                   # what the user named (a folder for two-stage, a file for static)


def _onnx_props(path: Path) -> dict[str, str]:
    return read_header(path).props      # refuses external data outside the folder (sathmr.backends.integrity)


def _check_graphs(art: Artifact) -> Artifact:
    """The ONNX graphs' own input signatures against the metadata (sathmr.backends.integrity)."""
    for f in art.files.values():
        if f.suffix == ".onnx":
            check_signature(read_header(f), art.meta.cfg, art.meta.batch, art.meta.canvas_hw, str(f))
    return art


def read_engine(path: Path) -> tuple[dict[str, str], bytes]:
    """(metadata, serialized engine) of an engine file written by `sathmr export --format trt`."""
    data = path.read_bytes()
    n = len(ENGINE_MAGIC)
    if data[:n] != ENGINE_MAGIC or len(data) < n + 4:
        raise SathmrError(f"{path} is not an engine written by `sathmr export --format trt` (no sathmr header)")
    (size,) = struct.unpack("<I", data[n:n + 4])
    try:
        props = json.loads(data[n + 4:n + 4 + size])
    except ValueError:
        raise SathmrError(f"{path} has a damaged sathmr header; rebuild it") from None
    return props, data[n + 4 + size:]


def engine_bytes(props: dict[str, str], engine: bytes) -> bytes:
    """An engine file: magic, metadata length and JSON, then the serialized engine (ultralytics' habit)."""
    header = json.dumps(props).encode()
    return ENGINE_MAGIC + struct.pack("<I", len(header)) + header + engine


def graph_props(path: Path) -> dict[str, str]:
    """The sathmr metadata of one exported file (ONNX or engine), without loading its weights."""
    if not path.is_file():
        raise SathmrError(f"model file not found: {path}")
    if path.suffix == IR_SUFFIX:
        return ir_props(path)
    return read_engine(path)[0] if path.suffix == ".engine" else _onnx_props(path)


def read_artifact(path: str | Path, suffix: str = ".onnx") -> Artifact:
    """An exported model: a two-stage folder (``scale_map``/``tokens`` + ``suffix``) or a static file."""
    path = Path(path)
    if path.is_dir():
        files = {g: path / f"{g}{suffix}" for g in STAGES}
        missing = [f.name for f in files.values() if not f.is_file()]
        if missing:
            raise SathmrError(f"{path} is not a two-stage sathmr export: {', '.join(missing)} missing "
                              "(export one with `sathmr export`)")
        metas = {g: ExportMeta.from_props(graph_props(f), str(f), graph=g) for g, f in files.items()}
        first, second = metas.values()
        if first.export_id != second.export_id or first != second:
            raise SathmrError(f"{path}: {files['scale_map'].name} and {files['tokens'].name} come from different "
                              "exports; re-export the folder")
        return _check_graphs(Artifact(first, files, path))
    if not path.exists():
        raise SathmrError(f"model not found: {path}")
    meta = ExportMeta.from_props(graph_props(path), str(path))
    if meta.layout != "static":
        raise SathmrError(f"{path} is one graph of a two-stage export: pass its folder ({path.parent})")
    return _check_graphs(Artifact(meta, {"static": path}, path))


def read_meta(path: str | Path) -> ExportMeta:
    """Metadata of an exported model (folder or file), without loading its weights."""
    path = Path(path)
    suffix = next((s for s in (".engine", IR_SUFFIX) if path.is_dir() and any(path.glob(f"*{s}"))), ".onnx")
    return read_artifact(path, suffix).meta


EMBEDDED_NOTE = ("an export of the embedded default, a tiny model trained on synthetic mannequins (not a model of real "
                 "people); get the official weights with `sathmr weights fetch sat_644`")


def is_embedded(meta: ExportMeta) -> bool:
    """Whether an export was made from the embedded default (the sha256 of its weights is in the metadata)."""
    from sathmr.zoo.registry import EMBEDDED

    return bool(meta.checkpoint_sha256) and EMBEDDED.is_file() and meta.checkpoint_sha256 == file_sha256(EMBEDDED)


def export_note(path: str | Path, runtime: str, meta: ExportMeta) -> str:
    """The line a command prints about the export it runs; it says so when that is the embedded default."""
    line = f"model: {path} ({runtime}, {meta.layout}, {meta.precision})"
    return f"{line}: {EMBEDDED_NOTE}" if is_embedded(meta) else line
