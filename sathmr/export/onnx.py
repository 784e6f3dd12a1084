"""ONNX export of the network (`sathmr export --format onnx`): the one exporter of the project.

The default is the exact **two-stage** export (spec §10.2 Option B with dynamic axes): a folder with
``scale_map.onnx`` and ``tokens.onnx`` whose batch, image size and token axes are dynamic, the shared
``TokenSelector`` deciding in between. ``--static-budget`` writes the single fixed-budget graph instead
(§10.2 Option A). The graphs are the model's own seams (``sathmr.export.graphs``); the metadata that
decides what a file may be used with travels inside every file (``sathmr.backends.meta``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import onnx
import torch

from sathmr.backends.formats import DEFAULT_OPSET
from sathmr.backends.meta import GRAPHS, Artifact, ExportMeta, read_artifact, state_sha256
from sathmr.body import load_body_model
from sathmr.common.errors import SathmrError
from sathmr.common.files import file_sha256
from sathmr.export.graphs import dynamic_shapes, graph_module, sample_inputs
from sathmr.export.ort_fusions import TRANSLATIONS, fuse_residuals
from sathmr.export.quantize import quantize_weights
from sathmr.model.config import ModelConfig
from sathmr.model.layers import folded_graphs
from sathmr.model.sathmr import SATHMR
from sathmr.model.tokens import TokenBudget, default_budget
from sathmr.zoo.weights import load_network

log = logging.getLogger("sathmr.export")
# protobuf cannot serialise a single message above 2 GiB; weights go to a side file beyond this
EXTERNAL_DATA_BYTES = 1_800_000_000
MAX_BATCH = 64


def validate_static(cfg: ModelConfig, budget: TokenBudget, canvas_hw: tuple[int, int]) -> None:
    H, W = canvas_hw
    m = cfg.pad_multiple
    if H % m or W % m or not (0 < H <= cfg.input_size and 0 < W <= cfg.input_size):
        raise SathmrError(f"--canvas {H}x{W}: both sides must be multiples of {m} and at most {cfg.input_size}")
    if max(H, W) != cfg.input_size:
        raise SathmrError(f"--canvas {H}x{W}: the long side must be {cfg.input_size} (every image is resized to it)")
    n1 = (H // cfg.cell_size) * (W // cfg.cell_size)
    if not 0 <= budget.sat_cells <= n1:
        raise SathmrError(f"--budget-sat {budget.sat_cells} must be in [0, {n1}] for a {H}x{W} canvas")
    if not 1 <= budget.context <= n1:
        raise SathmrError(f"--budget-context {budget.context} must be in [1, {n1}] for a {H}x{W} canvas")


@contextlib.contextmanager
def export_state(model: SATHMR, budget: TokenBudget | None) -> Iterator[SATHMR]:
    """The model in eval mode with ``budget`` (None = dynamic); restored afterwards whatever happens."""
    old, was_training = model.tokens.budget, model.training
    model.eval().set_budget(budget)
    try:
        yield model
    finally:
        model.set_budget(old if old.is_static else None)
        model.train(was_training)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's registry, which logs a warning per torchvision operator it cannot register
    when torchvision is absent (it is not needed: the network uses none of them); other warnings stay."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)


def export_graph(model: SATHMR, graph: str, meta: ExportMeta, path: Path, simplify: bool = False) -> Path:
    """One graph to ``path`` with its metadata; checked with onnx.checker. Returns ``path``."""
    t0 = time.perf_counter()
    module = graph_module(graph, model, meta.precision).eval()
    inputs, outputs = GRAPHS[graph]
    # an exporter failure is a bug, not a user error: it keeps its traceback
    with torch.no_grad(), folded_graphs(), warnings.catch_warnings(), quiet_exporter():
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape.*")
        # torch's own pytree use inside the exporter (torch 2.13), nothing the user can act on
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
        program = torch.onnx.export(module, sample_inputs(graph, model, meta), None, input_names=list(inputs),
                                    output_names=list(outputs), opset_version=meta.opset, dynamo=True,
                                    dynamic_shapes=dynamic_shapes(graph, meta), verbose=False,
                                    custom_translation_table=TRANSLATIONS if meta.target == "onnxruntime" else None)
    program.model.metadata_props.update(meta.to_props(graph))
    external = sum(p.numel() * p.element_size() for p in module.parameters()) > EXTERNAL_DATA_BYTES
    program.save(path, external_data=external)
    if simplify:
        simplify_onnx(path, external)
    if meta.target == "onnxruntime":
        fuse_residuals(path, model.cfg, cpu_kernels=meta.precision == "fp32")
    if meta.precision == "int8" and graph == "tokens":
        quantize_weights(path)
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise SathmrError(f"exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    log.info("  %s: %s in %.1f s (%.0f MB)", graph, path.name, time.perf_counter() - t0,
             sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) / 2**20)
    return path


def export_onnx(model: SATHMR, output: str | Path, meta: ExportMeta, simplify: bool = False) -> Artifact:
    """Every graph of ``meta``'s layout into ``output`` — a folder (two-stage) or a ``.onnx`` file
    (static) — written beside it first and moved into place only when complete."""
    output = Path(output)
    if meta.layout == "static":
        validate_static(model.cfg, meta.budget, meta.canvas_hw)
        if meta.precision == "int8":
            raise SathmrError("--precision int8 quantises the tokens graph of the two-stage export; the --static-budget graph "
                              "holds stage A too, which must stay fp32 (the token selection thresholds its output)")
    if (meta.batch is not None and meta.batch < 1) or meta.opset < DEFAULT_OPSET:
        raise SathmrError(f"--batch-size must be >= 1 and --opset >= {DEFAULT_OPSET}")
    output.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s (%s, %s) to %s", model.cfg.name, meta.layout, meta.precision, output)
    with export_state(model, meta.budget) as m, tempfile.TemporaryDirectory(dir=output.parent,
                                                                          prefix=f".{output.name}.") as tmp:
        tmp = Path(tmp)
        if meta.layout == "static":
            export_graph(m, "static", meta, tmp / output.name, simplify)
            # side files first, the .onnx last: a complete .onnx always has its data beside it
            for f in sorted(tmp.iterdir(), key=lambda p: p.name == output.name):
                os.replace(f, output.parent / f.name)
        else:
            folder = tmp / "export"
            folder.mkdir()
            for graph in meta.graphs:
                export_graph(m, graph, meta, folder / f"{graph}.onnx", simplify)
            replace_folder(folder, output)
    return read_artifact(output)


def quantize_export(source: str | Path, output: str | Path) -> Artifact:
    """The int8 version of an fp32 two-stage export — what ``--precision int8`` exports, derived without tracing
    the network again (`sathmr bench` measures both): ``scale_map`` copied, ``tokens`` quantised, the
    metadata of both saying int8."""
    art, output = read_artifact(source), Path(output)
    if art.meta.layout != "two-stage" or art.meta.precision != "fp32":
        raise SathmrError(f"{source}: int8 is derived from an fp32 two-stage export, not a {art.meta.layout} "
                          f"{art.meta.precision} one")
    meta = replace(art.meta, precision="int8")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
        folder = Path(tmp) / "export"
        folder.mkdir()
        scale_map = onnx.load(str(art.files["scale_map"]))
        del scale_map.metadata_props[:]
        for k, v in meta.to_props("scale_map").items():
            scale_map.metadata_props.add(key=k, value=v)
        onnx.save_model(scale_map, str(folder / "scale_map.onnx"))
        quantize_weights(art.files["tokens"], folder / "tokens.onnx", meta.to_props("tokens"))
        replace_folder(folder, output)
    return read_artifact(output)


def replace_folder(new: Path, output: Path) -> None:
    """Move a finished folder to ``output``; an earlier export there is replaced only after that."""
    if output.exists() and not output.is_dir():
        raise SathmrError(f"{output} exists and is not a folder (a two-stage export is a folder)")
    old = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}") if output.exists() else None
    if old is not None:
        os.replace(output, old)
    os.replace(new, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def simplify_onnx(path: Path, external: bool) -> bool:
    """Simplify in place with onnxslim (or onnxsim) when installed; returns whether it ran."""
    for name in ("onnxslim", "onnxsim"):
        try:
            tool = importlib.import_module(name)
        except ImportError:
            continue
        model = onnx.load(str(path))
        props = {p.key: p.value for p in model.metadata_props}
        if name == "onnxslim":
            model = tool.slim(model)
        else:
            model, ok = tool.simplify(model)
            if not ok:
                warnings.warn("onnxsim could not validate the simplified graph; keeping the original", stacklevel=2)
                return False
        del model.metadata_props[:]
        for k, v in props.items():
            model.metadata_props.add(key=k, value=v)
        onnx.save_model(model, str(path), save_as_external_data=external, location=path.name + ".data")
        return True
    warnings.warn("--simplify: neither onnxslim nor onnxsim is installed (pip install onnxslim); "
                  "keeping the graph as exported", stacklevel=2)
    return False


def export_network(model: SATHMR, body_model, output: str | Path, checkpoint: str | Path | None = None,
                   static_budget: TokenBudget | None = None, canvas_hw: tuple[int, int] | None = None,
                   batch: int | None = None, opset: int = DEFAULT_OPSET, precision: str = "fp32",
                   portable: bool = False, simplify: bool = False,
                   thresholds: Sequence[float] = (0.3,)) -> tuple[Artifact, ExportMeta]:
    """Fill the metadata of an in-memory network and its body model, and export it (`sathmr export` and
    `sathmr bench` both come here). ``static_budget`` (unset fields take the defaults) selects the
    fixed-budget single graph on ``canvas_hw``; without it the two-stage export is written."""
    cfg = model.cfg
    common = dict(cfg=cfg, batch=batch, max_batch=batch or MAX_BATCH, thresholds=tuple(thresholds),
                  body_fingerprint=body_model.fingerprint, opset=opset, precision=precision,
                  target="portable" if portable else "onnxruntime",
                  checkpoint_sha256=file_sha256(checkpoint) if checkpoint and Path(checkpoint).is_file()
                  else state_sha256(model), export_id=uuid.uuid4().hex)
    if static_budget is None:
        meta = ExportMeta(layout="two-stage", **common)
    else:
        canvas_hw = tuple(canvas_hw or (cfg.input_size, cfg.input_size))
        defaults = default_budget(cfg, canvas_hw)
        budget = TokenBudget(defaults.sat_cells if static_budget.sat_cells is None else static_budget.sat_cells,
                             defaults.context if static_budget.context is None else static_budget.context)
        meta = ExportMeta(layout="static", budget=budget, canvas_hw=canvas_hw, **common)
    return export_onnx(model, output, meta, simplify=simplify), meta


def export_from_checkpoint(output: str | Path, checkpoint=None, smpl_dir=None, config: str | None = None,
                           **options) -> tuple[Artifact, ExportMeta]:
    """What `sathmr export --format onnx` does: load weights and body model, then :func:`export_network`."""
    model, info = load_network(checkpoint, config, smpl_dir)
    body = load_body_model(info.get("smpl_dir") or smpl_dir)
    return export_network(model, body, output, checkpoint=info.get("path"), **options)
