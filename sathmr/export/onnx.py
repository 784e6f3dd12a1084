"""Static-shape ONNX export of the network (spec §10.2 Option A) and the metadata the file carries.

The exported graph is the *same* PyTorch code as the dynamic model, run with fixed token budgets
(``SATHMR.set_budget``): image (B,3,Hc,Wc) + img_hw (B,2) → ``NET_OUTPUTS``. Everything that
decides whether a file may be used with a given body model, config or checkpoint travels inside the
file (``metadata_props``), so backends can refuse mismatches with a clear message instead of
producing wrong people.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from sathmr import __version__
from sathmr.config import ModelConfig
from sathmr.errors import SathmrError
from sathmr.model.sathmr import NET_OUTPUTS, SATHMR
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
    import onnx

    path = Path(path)
    if not path.is_file():
        raise SathmrError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file for the user
        raise SathmrError(f"cannot read ONNX model {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    return ExportMeta.from_props({p.key: p.value for p in proto.metadata_props}, str(path))


class StaticNet(nn.Module):
    """images (B,3,Hc,Wc) float32, img_hw (B,2) int64 → the NET_OUTPUTS tuple.

    In fp16 the weights are half but the interface stays float32 (the cast happens in the graph), so
    every backend feeds and reads the same dtypes.
    """

    def __init__(self, model: SATHMR, fp16: bool = False):
        super().__init__()
        self.model = model
        self.dtype = torch.float16 if fp16 else torch.float32

    def forward(self, images: torch.Tensor, img_hw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.net_outputs(images.to(self.dtype), img_hw)
        return tuple(out[k].float() if out[k].is_floating_point() else out[k] for k in NET_OUTPUTS)


def sample_inputs(cfg: ModelConfig, canvas_hw: tuple[int, int], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tracing inputs; img_hw smaller than the canvas so no code path is specialised to 'full image'."""
    H, W = canvas_hw
    g = torch.Generator().manual_seed(0)
    hw = torch.tensor([[H - cfg.pad_multiple if H > cfg.pad_multiple else H, W]] * batch, dtype=torch.int64)
    return torch.randn(batch, 3, H, W, generator=g), hw


def validate_export_args(cfg: ModelConfig, budget: TokenBudget, canvas_hw: tuple[int, int], batch: int) -> None:
    H, W = canvas_hw
    m = cfg.pad_multiple
    if H % m or W % m or not (0 < H <= cfg.input_size and 0 < W <= cfg.input_size):
        raise SathmrError(f"--canvas {H}x{W}: both sides must be multiples of {m} and at most {cfg.input_size}")
    if max(H, W) != cfg.input_size:
        raise SathmrError(f"--canvas {H}x{W}: the long side must be {cfg.input_size} (every image is resized to it)")
    n1 = (H // cfg.cell_size) * (W // cfg.cell_size)
    if not budget.is_static:
        raise SathmrError("export needs both token budgets (sat_cells, context)")
    if not 0 <= budget.sat_cells <= n1:
        raise SathmrError(f"--budget-sat {budget.sat_cells} must be in [0, {n1}] for a {H}x{W} canvas")
    if not 1 <= budget.context <= n1:
        raise SathmrError(f"--budget-context {budget.context} must be in [1, {n1}] for a {H}x{W} canvas")
    if batch < 1:
        raise SathmrError("--batch must be >= 1")


def export_onnx(model: SATHMR, output: str | Path, meta: ExportMeta, dynamic_batch: bool = False,
                simplify: bool = False, trace_batch: int | None = None) -> Path:
    """Export ``model`` with ``meta``'s budgets/canvas to ``output`` (atomically); returns the path.

    The model is restored to its previous budget and dtype afterwards. ``meta.batch`` must be None
    exactly when ``dynamic_batch``.
    """
    import onnx

    cfg = model.cfg
    batch = trace_batch or meta.batch or 1
    if dynamic_batch:
        batch = max(batch, 2)   # a size-1 trace would be specialised to 1 by torch.export
    validate_export_args(cfg, meta.budget, meta.canvas_hw, batch)
    if dynamic_batch != (meta.batch is None):
        raise ValueError("meta.batch must be None iff dynamic_batch")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    old_budget = model.tokens.budget
    was_training = model.training
    model.eval().set_budget(meta.budget)
    net = StaticNet(copy.deepcopy(model).half() if meta.fp16 else model, meta.fp16).eval()
    args = sample_inputs(cfg, meta.canvas_hw, batch)
    dyn = None
    if dynamic_batch:
        b = torch.export.Dim("batch", min=1, max=64)
        dyn = {"images": {0: b}, "img_hw": {0: b}}
    try:
        with torch.no_grad():
            program = torch.onnx.export(net, args, None, input_names=list(INPUT_NAMES), output_names=list(NET_OUTPUTS),
                                        opset_version=meta.opset, dynamo=True, dynamic_shapes=dyn)
    except SathmrError:
        raise
    except Exception as exc:  # noqa: BLE001 - exporter failures are reported, with the cause chained
        root = exc
        while root.__cause__ is not None:
            root = root.__cause__
        hint = " (fp16 export needs every tensor of the model in half precision)" if meta.fp16 else ""
        raise SathmrError(f"ONNX export failed: {type(root).__name__}: {str(root).strip().splitlines()[0]}{hint}") from exc
    finally:
        model.set_budget(old_budget if old_budget.is_static else None)
        model.train(was_training)
    program.model.metadata_props.update(meta.to_props())
    size = sum(p.numel() * p.element_size() for p in net.parameters())
    external = size > EXTERNAL_DATA_BYTES
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
        tmp_path = Path(tmp) / output.name
        program.save(tmp_path, external_data=external)
        if simplify:
            simplify_onnx(tmp_path, external)
        try:
            onnx.checker.check_model(str(tmp_path), full_check=False)
        except onnx.checker.ValidationError as exc:
            raise SathmrError(f"exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc
        # side files first, the .onnx last: a complete .onnx always has its data beside it
        for f in sorted(Path(tmp).iterdir(), key=lambda p: p == tmp_path):
            os.replace(f, output.parent / f.name)
    return output


def simplify_onnx(path: Path, external: bool) -> bool:
    """Simplify in place with onnxslim (or onnxsim) when installed; returns whether it ran."""
    import importlib
    import warnings

    import onnx

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


def graph_op_types(path: str | Path) -> set[str]:
    """Every op type in the graph (tests use it to prove there is no data-dependent NonZero)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {n.op_type for n in proto.graph.node}


def static_output_shapes(path: str | Path) -> dict[str, list[int | str]]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {o.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in o.type.tensor_type.shape.dim]
            for o in proto.graph.output}


def export_from_checkpoint(output: str | Path, checkpoint=None, smpl_dir=None, config: str | None = None,
                           budget: TokenBudget | None = None, canvas_hw: tuple[int, int] | None = None,
                           batch: int = 1, dynamic_batch: bool = False, opset: int = DEFAULT_OPSET,
                           fp16: bool = False, simplify: bool = False,
                           thresholds: Sequence[float] = (0.3,)) -> tuple[Path, ExportMeta]:
    """What `sathmr export --format onnx` does: load weights and body model, fill the metadata, export."""
    from sathmr.api import load_network
    from sathmr.body import load_body_model
    from sathmr.export.budgets import default_budget

    model, info = load_network(checkpoint, config, smpl_dir)
    cfg = model.cfg
    canvas_hw = canvas_hw or (cfg.input_size, cfg.input_size)
    defaults = default_budget(cfg, canvas_hw)
    budget = TokenBudget(
        defaults.sat_cells if budget is None or budget.sat_cells is None else budget.sat_cells,
        defaults.context if budget is None or budget.context is None else budget.context)
    body = load_body_model(info.get("smpl_dir") or smpl_dir)
    ckpt_path = info.get("path")
    meta = ExportMeta(cfg=cfg, budget=budget, canvas_hw=tuple(canvas_hw), batch=None if dynamic_batch else batch,
                      thresholds=tuple(thresholds), body_fingerprint=body.fingerprint,
                      checkpoint_sha256=file_sha256(ckpt_path) if ckpt_path and Path(ckpt_path).is_file()
                      else state_sha256(model), opset=opset, fp16=fp16)
    return export_onnx(model, output, meta, dynamic_batch=dynamic_batch, simplify=simplify,
                       trace_batch=batch), meta
