"""Is an exported ONNX file what its metadata says, and does it stay inside its folder?

Checked when an export is read (``sathmr.backends.meta.read_artifact``), before any runtime — ONNX
Runtime, TensorRT's parser, ``onnx.load`` — opens the graph, so every backend gets the same one-line
refusal instead of a traceback or, worse, a read of someone else's file:

  * external data: an initializer may keep its bytes in a side file, and ONNX names that file with a
    free-form ``location``. One that is absolute, climbs out with ``..``, is a symlink or resolves
    outside the export folder would make the runtime read an arbitrary file (ONNX Runtime < 1.24.1
    does, without a word); it is refused here whatever the runtime.
  * the graph's own signature: element types and fixed dimensions of its inputs, and the position
    table's grid, against the metadata's config, batch and canvas. Metadata edited consistently in
    both graphs otherwise fails deep inside the runtime on the first image.
  * metadata values of the wrong type or sign (``batch=-5``, ``max_batch="x"``).

This module imports nothing of ``sathmr.export``: ``meta`` calls into it, with plain values.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from sathmr.common.errors import SathmrError
from sathmr.model.config import ModelConfig

#: element type of every graph input (ONNX Runtime exports take float32 images at every precision)
INPUT_TYPES = {"images": TensorProto.FLOAT, "img_hw": TensorProto.INT64, "t1": TensorProto.FLOAT,
               "cls": TensorProto.FLOAT, "sat_idx": TensorProto.INT64, "sat_valid": TensorProto.BOOL,
               "ctx_idx": TensorProto.INT64, "ctx_valid": TensorProto.BOOL}
POS_TABLE = "model.encoder_pos_embeds"      # (grid0, grid0, embed_dim): the one initializer input_size shows in


@dataclass(frozen=True)
class OnnxHeader:
    """What the checks need of one ONNX file, without its weights: metadata, inputs, the position table."""
    props: dict[str, str]
    inputs: dict[str, tuple[int, tuple[int | str, ...]]]    # name → (element type, dims: int or dim_param)
    pos_table: tuple[int, ...] | None
    external: tuple[tuple[str, str], ...]                   # (tensor, location) of data kept in side files


def read_header(path: Path) -> OnnxHeader:
    """Parse ``path`` (once per file version, no external data loaded) and refuse side files outside its
    folder; the side files are checked on every call (one may have become a symlink since)."""
    st = path.stat()
    header = _read_header(str(path), st.st_mtime_ns, st.st_size)
    check_external_data(header.external, path)
    return header


@functools.lru_cache(maxsize=8)
def _read_header(path: str, mtime_ns: int, size: int) -> OnnxHeader:   # the key: one entry per file version
    try:
        proto = onnx.load(path, load_external_data=False)
    except DecodeError as exc:
        raise SathmrError(f"cannot read ONNX model {path}: not an ONNX file, or truncated ({exc})") from None
    inputs = {}
    for i in proto.graph.input:
        t = i.type.tensor_type
        inputs[i.name] = (t.elem_type, tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                                             for d in t.shape.dim))
    pos = next((tuple(t.dims) for t in proto.graph.initializer if t.name == POS_TABLE), None)
    return OnnxHeader({p.key: p.value for p in proto.metadata_props}, inputs, pos, external_locations(proto))


# ------------------------------------------------------------------------------------ external data
def _node_tensors(nodes) -> Iterator[TensorProto]:
    for node in nodes:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _tensors(g)


def _tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor a graph stores: initializers, sparse ones, constants in attributes, subgraphs'."""
    yield from graph.initializer
    for s in graph.sparse_initializer:
        yield from (s.values, s.indices)
    yield from _node_tensors(graph.node)


def outside_reason(location: str, folder: Path) -> str | None:
    """Why an external-data ``location`` is not a plain file inside ``folder`` (None: it is)."""
    if not location or "\x00" in location:
        return "an empty or malformed location"
    if os.path.isabs(location) or Path(location).drive or location.startswith(("/", "\\")):
        return "an absolute path"
    if ".." in Path(location.replace("\\", "/")).parts:
        return "a path with '..'"
    path = folder
    for part in Path(location).parts:
        path = path / part
        if path.is_symlink():
            return "a symlink"
    if not path.resolve().is_relative_to(folder.resolve()):
        return "a path that resolves outside the export folder"
    return None


def external_locations(model: onnx.ModelProto) -> tuple[tuple[str, str], ...]:
    """(tensor, location) of every tensor of ``model`` (graph, subgraphs, functions) kept in a side file."""
    tensors = itertools.chain(_tensors(model.graph), *(_node_tensors(f.node) for f in model.functions))
    return tuple((t.name, next((e.value for e in t.external_data if e.key == "location"), ""))
                 for t in tensors if t.data_location == TensorProto.EXTERNAL)


def check_external_data(external: tuple[tuple[str, str], ...], path: Path) -> None:
    for name, location in external:
        reason = outside_reason(location, path.parent)
        if reason:
            raise SathmrError(f"{path}: tensor {name!r} keeps its data in {location!r}, {reason}; refusing to "
                              "read outside the export folder (re-export the model)")


# ------------------------------------------------------------------------------------ metadata
def _positive_int(value, what: str, source: str, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SathmrError(f"{source} has damaged sathmr metadata: {what} = {value!r} is not a positive integer; "
                          "re-export it")


def check_meta_values(batch, max_batch, canvas_hw, budget, thresholds, source: str) -> None:
    """Refuse metadata values of the wrong type or sign (they would fail far from here, or not at all)."""
    _positive_int(batch, "batch", source, none_ok=True)
    _positive_int(max_batch, "max_batch", source)
    if canvas_hw is not None and len(canvas_hw) != 2:
        raise SathmrError(f"{source} has damaged sathmr metadata: canvas_hw = {list(canvas_hw)!r} is not "
                          "[height, width]; re-export it")
    for side in canvas_hw or ():
        _positive_int(side, "canvas_hw", source)
    if budget is not None:
        for what, v in (("budget sat_cells", budget.sat_cells), ("budget context", budget.context)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SathmrError(f"{source} has damaged sathmr metadata: {what} = {v!r}; re-export it")
    if not thresholds or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < 1
                                 for t in thresholds):
        raise SathmrError(f"{source} has damaged sathmr metadata: thresholds = {list(thresholds)!r} are not "
                          "numbers in [0, 1); re-export it")


def expected_dims(name: str, cfg: ModelConfig, batch: int | None,
                  canvas_hw: tuple[int, int] | None) -> tuple[int | None, ...]:
    """The dimensions the metadata implies for input ``name``: a number where fixed, None where dynamic."""
    b, C = batch, cfg.embed_dim
    H, W = canvas_hw or (None, None)
    return {"images": (b, 3, H, W), "img_hw": (b, 2), "t1": (b, None, None, C), "cls": (b, 1, C),
            "sat_idx": (b, None), "sat_valid": (b, None), "ctx_idx": (b, None), "ctx_valid": (b, None)}[name]


def check_signature(header: OnnxHeader, cfg: ModelConfig, batch: int | None, canvas_hw: tuple[int, int] | None,
                    source: str) -> None:
    """The graph's own input types and dimensions (fixed where the metadata fixes them, dynamic elsewhere)
    and its position grid, against the metadata."""
    for name, (elem, dims) in header.inputs.items():
        if name not in INPUT_TYPES:
            continue                              # names are checked against GRAPHS by the metadata
        if elem != INPUT_TYPES[name]:
            raise SathmrError(f"{source}: input {name!r} is {TensorProto.DataType.Name(elem)}, not "
                              f"{TensorProto.DataType.Name(INPUT_TYPES[name])}; the metadata does not describe "
                              "this graph (re-export it)")
        want = expected_dims(name, cfg, batch, canvas_hw)
        got = tuple(d if isinstance(d, int) and d > 0 else None for d in dims)
        if got != want:
            raise SathmrError(f"{source}: input {name!r} has shape {list(dims)}, but the metadata (config "
                              f"{cfg.name!r}, batch {batch}, canvas {canvas_hw}) implies "
                              f"{['?' if w is None else w for w in want]}; re-export it")
    grid = (cfg.grid0, cfg.grid0, cfg.embed_dim)
    if header.pos_table is not None and header.pos_table != grid:
        raise SathmrError(f"{source}: the graph's position table is {list(header.pos_table)} (a canvas of "
                          f"{header.pos_table[0] * cfg.patch_size} px), but its metadata says input_size "
                          f"{cfg.input_size} ({list(grid)}); re-export it")
