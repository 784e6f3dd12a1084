"""`sathmr export`: the network as ONNX (two-stage by default, or one fixed-budget graph), TensorRT or OpenVINO IR."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sathmr.backends.formats import (
    DEFAULT_OPSET,
    DEFAULT_TRT_MAX_BATCH,
    EXPORT_FORMATS,
    EXPORT_ONLY,
    TRT_ACTIVATION_BUDGET_GB,
    export_format,
    formats_taking,
)
from sathmr.backends.precision import EXPORT_PRECISIONS
from sathmr.common.errors import SathmrError
from sathmr.common.options import CONFIG_HELP, Command, batch_size_option, output_option

if TYPE_CHECKING:      # torch and onnx load when an export runs, not for `sathmr export --help`
    from sathmr.backends.meta import Artifact

#: options that only mean something with the --static-budget layout (a format's own: its row in FORMATS)
STATIC_ONLY = ("budget_sat", "budget_context", "canvas")


def parse_canvas(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SathmrError(f"--canvas {text!r}: expected HxW, e.g. 1288x1288") from None
    return h, w


def validate_args(fmt: str, static_budget: bool, given: dict) -> None:
    """Refuse an option the chosen format or layout would silently ignore."""
    def flag(k: str) -> str:
        return "--" + {"onnx_path": "onnx"}.get(k, k).replace("_", "-")
    bad = [flag(k) for k in STATIC_ONLY if given.get(k) is not None and not static_budget]
    if bad:
        raise SathmrError(f"{', '.join(bad)}: only with --static-budget (the default export has no token budgets)")
    row = export_format(fmt)
    bad = [f"{flag(k)}: only with --format {'/'.join(f.export_as for f in formats_taking(k))}"
           for k in EXPORT_ONLY if given.get(k) not in (None, False) and k not in row.export_options]
    if bad:
        raise SathmrError(f"{'; '.join(bad)} (not an option of --format {fmt})")
    precision = given.get("precision") or "fp32"
    if precision not in row.precisions:
        raise SathmrError(f"--precision {precision}: --format {fmt} exports {', '.join(row.precisions)}"
                          + (" (TensorRT builds int8 only from a calibration, which sathmr does not offer: use "
                             "--precision fp16, or --format onnx --precision int8 for CPUs)" if precision == "int8" else ""))
    if fmt == "openvino" and static_budget:
        raise SathmrError("--format openvino converts the two-stage export (no --static-budget)")
    if given.get("max_tokens") is not None and static_budget:
        raise SathmrError("--max-tokens sizes the two-stage tokens engine; the --static-budget graph has fixed budgets")
    if given.get("onnx_path") is not None and static_budget:
        raise SathmrError("--onnx builds from an existing export: its layout is already fixed")
    if precision != "fp32" and static_budget:
        raise SathmrError(f"--precision {precision} applies after the token selection of the two-stage export; the "
                          "--static-budget graph holds stage A too, which stays fp32")


def describe(art: Artifact) -> str:
    from sathmr.backends.meta import EMBEDDED_NOTE, is_embedded
    from sathmr.export.trt import token_maxima
    from sathmr.model.tokens import stage_lengths

    m = art.meta
    note = f"\nnote: {EMBEDDED_NOTE}" if is_embedded(m) else ""
    head = (f"wrote {art.path}: config {m.cfg.name}, {m.layout}, {m.precision}, {m.target}, batch {m.batch or 'dynamic'}, "
            f"files {', '.join(f.name for f in art.files.values())}")
    if m.layout == "static":
        lengths = stage_lengths(m.budget)
        return (f"{head}; canvas {m.canvas_hw[0]}x{m.canvas_hw[1]}, budgets sat={m.budget.sat_cells} "
                f"context={m.budget.context} (stage B {lengths['stage_b']} tokens, stage C {lengths['stage_c']}){note}")
    if "tensorrt" in m.extra:
        ks, kc = token_maxima(m, m.extra.get("tensorrt_max_tokens"))
        head += (f"; TensorRT {m.extra['tensorrt']} profiles: batch <= {m.extra['tensorrt_max_batch']}, SAT cells <= {ks}, "
                 f"context tokens <= {kc} (stage C <= {4 * ks + kc} tokens)")
    ax = m.axes()
    return (f"{head}; dynamic axes: images up to {m.cfg.input_size}x{m.cfg.input_size} in steps of "
            f"{m.cfg.pad_multiple}, SAT cells 1..{ax['sat_cells'][1]}, context tokens 1..{ax['ctx_tokens'][1]}{note}")


@click.command("export", cls=Command, renamed={"--checkpoint": "--model", "--batch": "--batch-size",
                                                "--max-batch": "--max-batch-size"})
@click.option("--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)), default="onnx", show_default=True)
@output_option(type=click.Path(), help="A folder (two-stage, the default; always for openvino), or model.onnx / model.engine with --static-budget.")
@click.option("--model", "-m", "checkpoint", help="SAT-HMR weights to export: a file or a name from `sathmr models` "
              "(default: the first official checkpoint in weights/, else the embedded model).")
@click.option("--config", default=None, help=CONFIG_HELP)
@click.option("--smpl-dir", type=click.Path(file_okay=False), help="SMPL folder; its fingerprint is stored in the model.")
@click.option("--static-budget", is_flag=True,
              help="One graph with fixed token budgets (runtimes without dynamic shapes, CUDA graphs); overflow is flagged.")
@click.option("--budget-sat", type=int, default=None, help="--static-budget: SAT cells per image (each = 4 level-0 tokens); default 3/8 of the canvas cells.")
@click.option("--budget-context", type=int, default=None, help="--static-budget: level-1 + level-2 tokens per image; default all canvas cells.")
@click.option("--canvas", default=None, help="--static-budget: the fixed input HxW (multiples of 56, long side = input size); default square.")
@batch_size_option(default=None, help="Fix the batch size (default: a dynamic batch axis).")
@click.option("--precision", type=click.Choice(list(EXPORT_PRECISIONS)), default=None,
              help="After the token selection (stage A always fp32): fp32 (default), fp16 (GPUs), int8 (CPUs: int8 weights "
                   "in the tokens graph; onnx: ONNX Runtime dynamic quantisation, openvino: NNCF weight compression).")
@click.option("--fp16", is_flag=True, hidden=True, help="Old spelling of --precision fp16.")
@click.option("--int8", is_flag=True, hidden=True, help="Old spelling of --precision int8.")
@click.option("--portable", is_flag=True, help="Standard ONNX operators only (no ONNX Runtime fusions), for other runtimes.")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True)
@click.option("--simplify", is_flag=True, help="Simplify the graphs with onnxslim/onnxsim when installed.")
@click.option("--onnx", "onnx_path", type=click.Path(exists=True), help="--format trt/openvino: build from this ONNX export "
              "(openvino: an fp32 two-stage one) instead of exporting one.")
@click.option("--workspace-gb", type=float, default=None, help="--format trt: builder workspace (default 4).")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=None,
              help=f"--format trt: largest batch of the profiles (default {DEFAULT_TRT_MAX_BATCH}; larger batches run in chunks).")
@click.option("--max-tokens", type=int, default=None, help=f"--format trt: largest stage-C sequence per image (default: all the canvas allows); "
              f"batch x tokens^2 scores must fit {TRT_ACTIVATION_BUDGET_GB:g} GB.")
def export_command(fmt, output, checkpoint, config, smpl_dir, static_budget, budget_sat, budget_context, canvas, batch_size,
                   precision, fp16, int8, portable, opset, simplify, onnx_path, workspace_gb, max_batch_size, max_tokens):
    """Export the network for ONNX Runtime, TensorRT or OpenVINO: by default the exact two-stage model whose
    token axes follow each image; with --static-budget one graph with fixed token budgets."""
    from sathmr.export.trt import build_engines
    from sathmr.model.tokens import TokenBudget

    precision = _old_precision_flags(precision, fp16, int8)
    validate_args(fmt, static_budget, dict(budget_sat=budget_sat, budget_context=budget_context, canvas=canvas,
                                           onnx_path=onnx_path, workspace_gb=workspace_gb, max_batch_size=max_batch_size,
                                           max_tokens=max_tokens, portable=portable, precision=precision))
    precision = precision or "fp32"
    output = Path(output)
    options = dict(static_budget=TokenBudget(budget_sat, budget_context) if static_budget else None,
                   canvas_hw=parse_canvas(canvas), batch=batch_size, opset=opset, simplify=simplify)
    if fmt == "openvino":
        click.echo(describe(_export_openvino(output, onnx_path, checkpoint, smpl_dir, config, precision, options)))
        return
    if fmt == "onnx":
        art = _export(output, checkpoint, smpl_dir, config, precision=precision, portable=portable, **options)
        click.echo(describe(art))
        return
    fp16 = precision == "fp16"
    trt_opts = dict(fp16=fp16, workspace_gb=workspace_gb or 4.0, max_batch=max_batch_size or DEFAULT_TRT_MAX_BATCH,
                    max_tokens=max_tokens)
    if onnx_path:
        art = build_engines(onnx_path, output, **trt_opts)
    else:   # strongly typed engines take their precision from the graphs (stage A stays fp32 in both)
        if fp16 and static_budget:
            raise SathmrError("--format trt --fp16 builds from the two-stage export (the --static-budget graph holds "
                              "stage A, which stays fp32)")
        with tempfile.TemporaryDirectory(prefix="sathmr-export-") as tmp:
            name = "model.onnx" if static_budget else "model_onnx"
            src = _export(Path(tmp) / name, checkpoint, smpl_dir, config, precision="fp16" if fp16 else "fp32",
                          portable=True, **options)
            art = build_engines(src.path, output, **trt_opts)
    click.echo(describe(art))


def _export_openvino(output: Path, onnx_path, checkpoint, smpl_dir, config, precision: str, options: dict) -> Artifact:
    from sathmr.common.optional import require
    from sathmr.export.openvino import convert_export

    for module in ("openvino", "nncf") if precision == "int8" else ("openvino",):   # before minutes of ONNX export
        require(module)
    with contextlib.redirect_stdout(sys.stderr):
        if onnx_path:
            return convert_export(onnx_path, output, precision)
        with tempfile.TemporaryDirectory(prefix="sathmr-export-") as tmp:
            src = _export(Path(tmp) / "model_onnx", checkpoint, smpl_dir, config, precision="fp32", portable=True, **options)
            return convert_export(src.path, output, precision)


def _old_precision_flags(precision: str | None, fp16: bool, int8: bool) -> str | None:
    """``--fp16`` / ``--int8`` (one more release): the precision they stand for, said once on stderr."""
    old = [name for name, on in (("fp16", fp16), ("int8", int8)) if on]
    if not old:
        return precision
    if len(old) > 1 or (precision is not None and precision != old[0]):
        raise SathmrError(f"--{' and --'.join(old)}{f' and --precision {precision}' if precision else ''} exclude each "
                          "other (pick one precision)")
    click.echo(f"note: --{old[0]} is now --precision {old[0]}", err=True)
    return old[0]


def _export(output: Path, checkpoint, smpl_dir, config, **options) -> Artifact:
    from sathmr.export.onnx import export_from_checkpoint

    # the exporter prints progress on stdout; keep stdout for our own result lines
    with contextlib.redirect_stdout(sys.stderr):
        art, _ = export_from_checkpoint(output, checkpoint=checkpoint, smpl_dir=smpl_dir, config=config, **options)
    return art
