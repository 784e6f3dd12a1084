"""`sathmr export`: the network as a static ONNX graph, or a TensorRT engine built from one."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from sathmr.errors import SathmrError
from sathmr.export.meta import DEFAULT_OPSET, sidecar
from sathmr.export.onnx import export_from_checkpoint
from sathmr.export.trt import build_engine
from sathmr.model.tokens import TokenBudget, stage_lengths


def parse_canvas(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SathmrError(f"--canvas {text!r}: expected HxW, e.g. 1288x1288") from None
    return h, w


@click.command("export")
@click.option("--format", "fmt", type=click.Choice(["onnx", "trt"]), default="onnx", show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="model.onnx or model.engine")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="SAT-HMR weights (default: weights/ or the embedded model).")
@click.option("--config", default=None, help="Model config of an official checkpoint (default sat_644).")
@click.option("--smpl-dir", type=click.Path(file_okay=False), help="SMPL folder; its fingerprint is stored in the model.")
@click.option("--budget-sat", type=int, default=None, help="SAT cells per image (each = 4 level-0 tokens); default 3/8 of the canvas cells.")
@click.option("--budget-context", type=int, default=None, help="Level-1 + level-2 tokens per image; default all canvas cells (never overflows).")
@click.option("--canvas", default=None, help="Fixed input HxW (multiples of 56, long side = input size); default square.")
@click.option("--batch", type=int, default=None, help="Fix the batch size of the graph (default: dynamic batch, which costs nothing on ORT).")
@click.option("--dynamic-batch", is_flag=True, help="Dynamic batch dimension (the default unless --batch is given).")
@click.option("--fp16", is_flag=True, help="Half-precision weights and activations (GPU engines; CPU ORT is slow in fp16).")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True)
@click.option("--simplify", is_flag=True, help="Simplify the graph with onnxslim/onnxsim when installed.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), help="--format trt: build from this ONNX file instead of exporting one.")
@click.option("--workspace-gb", type=float, default=4.0, show_default=True, help="--format trt: builder workspace.")
def export_command(fmt, output, checkpoint, config, smpl_dir, budget_sat, budget_context, canvas, batch, dynamic_batch,
                   fp16, opset, simplify, onnx_path, workspace_gb):
    """Export the network with fixed token budgets (static shapes) for ONNX Runtime or TensorRT."""
    output = Path(output)
    if dynamic_batch and batch is not None:
        raise SathmrError("--batch and --dynamic-batch exclude each other")
    dynamic_batch = batch is None
    if fmt == "trt" and onnx_path:
        return _build_trt(Path(onnx_path), output, fp16, workspace_gb)
    onnx_out = output if fmt == "onnx" else output.with_suffix(".onnx")
    # the exporter prints progress on stdout; keep stdout for our own result lines
    with contextlib.redirect_stdout(sys.stderr):
        path, meta = export_from_checkpoint(
            onnx_out, checkpoint=checkpoint, smpl_dir=smpl_dir, config=config,
            budget=TokenBudget(budget_sat, budget_context), canvas_hw=parse_canvas(canvas), batch=batch or 1,
            dynamic_batch=dynamic_batch, opset=opset, simplify=simplify,
            fp16=fp16 and fmt == "onnx")   # TensorRT builds fp16 itself from an fp32 graph
    lengths = stage_lengths(meta.budget)
    click.echo(f"wrote {path}: config {meta.cfg.name}, canvas {meta.canvas_hw[0]}x{meta.canvas_hw[1]}, "
               f"batch {meta.batch or 'dynamic'}, budgets sat={meta.budget.sat_cells} context={meta.budget.context} "
               f"(stage B {lengths['stage_b']} tokens, stage C {lengths['stage_c']}), fp16={meta.fp16}")
    if fmt == "trt":
        _build_trt(path, output, fp16, workspace_gb)


def _build_trt(onnx_path: Path, output: Path, fp16: bool, workspace_gb: float) -> None:
    build_engine(onnx_path, output, fp16=fp16, workspace_gb=workspace_gb)
    click.echo(f"wrote {output} (+ {sidecar(output).name})")
