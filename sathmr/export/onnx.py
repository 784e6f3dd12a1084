"""Static-shape ONNX export of the network (spec §10.2 Option A) and the metadata the file carries.

The exported graph is the *same* PyTorch code as the dynamic model, run with fixed token budgets
(``SATHMR.set_budget``): image (B,3,Hc,Wc) + img_hw (B,2) → ``NET_OUTPUTS``. Everything that
decides whether a file may be used with a given body model, config or checkpoint travels inside the
file (``metadata_props``), so backends can refuse mismatches with a clear message instead of
producing wrong people.
"""

from __future__ import annotations

import copy
import importlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import onnx
import torch
from torch import nn

from sathmr.body import load_body_model
from sathmr.config import ModelConfig
from sathmr.errors import SathmrError
from sathmr.export.meta import DEFAULT_OPSET, INPUT_NAMES, ExportMeta, file_sha256, state_sha256
from sathmr.model.sathmr import NET_OUTPUTS, SATHMR
from sathmr.model.tokens import TokenBudget, default_budget
from sathmr.weights import load_network

# protobuf cannot serialise a single message above 2 GiB; weights go to a side file beyond this
EXTERNAL_DATA_BYTES = 1_800_000_000

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
    try:   # an exporter failure is a bug, not a user error: it keeps its traceback
        with torch.no_grad():
            program = torch.onnx.export(net, args, None, input_names=list(INPUT_NAMES), output_names=list(NET_OUTPUTS),
                                        opset_version=meta.opset, dynamo=True, dynamic_shapes=dyn)
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
                   budget: TokenBudget | None = None, canvas_hw: tuple[int, int] | None = None, batch: int = 1,
                   dynamic_batch: bool = False, opset: int = DEFAULT_OPSET, fp16: bool = False, simplify: bool = False,
                   thresholds: Sequence[float] = (0.3,)) -> tuple[Path, ExportMeta]:
    """Fill the metadata of an in-memory network and its body model, and export it (the one exporter:
    `sathmr export` and `sathmr bench` both come here). Unset budgets take the defaults."""
    cfg = model.cfg
    canvas_hw = canvas_hw or (cfg.input_size, cfg.input_size)
    defaults = default_budget(cfg, canvas_hw)
    budget = TokenBudget(
        defaults.sat_cells if budget is None or budget.sat_cells is None else budget.sat_cells,
        defaults.context if budget is None or budget.context is None else budget.context)
    meta = ExportMeta(cfg=cfg, budget=budget, canvas_hw=tuple(canvas_hw), batch=None if dynamic_batch else batch,
                      thresholds=tuple(thresholds), body_fingerprint=body_model.fingerprint,
                      checkpoint_sha256=file_sha256(checkpoint) if checkpoint and Path(checkpoint).is_file()
                      else state_sha256(model), opset=opset, fp16=fp16)
    return export_onnx(model, output, meta, dynamic_batch=dynamic_batch, simplify=simplify, trace_batch=batch), meta


def export_from_checkpoint(output: str | Path, checkpoint=None, smpl_dir=None, config: str | None = None,
                           **options) -> tuple[Path, ExportMeta]:
    """What `sathmr export --format onnx` does: load weights and body model, then :func:`export_network`."""
    model, info = load_network(checkpoint, config, smpl_dir)
    body = load_body_model(info.get("smpl_dir") or smpl_dir)
    return export_network(model, body, output, checkpoint=info.get("path"), **options)
