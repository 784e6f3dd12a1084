"""OpenVINO export (`sathmr export --format openvino`): the two-stage ONNX graphs converted to OpenVINO IR.

Converted, not traced again: ``openvino.convert_model`` reads the graphs of `sathmr export` (every axis
stays dynamic: batch, image size, token counts), so the IR is the very network the ONNX Runtime backend
runs, and the shared token selection runs between its two graphs on the host (``TwoStage``). The
sathmr metadata goes into each IR's ``rt_info`` (``sathmr.backends.ir``); the copy of the ONNX
metadata_props that the converter keeps on its own is dropped, so the one source says e.g. int8.

Precisions (``ExportMeta.precision``):
  * ``fp32``: weights saved as float32 — ``save_model`` would halve them to fp16 by default, which is
    never wanted here (the backend also forces the f32 inference precision: bf16 on AMX CPUs is
    OpenVINO's own default).
  * ``int8``: NNCF weight compression (int8, symmetric, one scale per output channel) of exactly the
    matrix products ONNX Runtime's int8 export quantises (``sathmr.export.quantize.quantised_nodes``:
    stages B/C, ``feature_proj`` and the decoder's memory projections); the ``scale_map`` graph (stage
    A) is copied unchanged, so the token selection never depends on the precision. The activations are
    quantised at run time by OpenVINO's CPU plugin (dynamic quantisation, ``sathmr.backends.openvino_backend``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from sathmr.backends.ir import IR_SUFFIX, RT_INFO_KEY
from sathmr.backends.meta import Artifact, ExportMeta, read_artifact
from sathmr.common.errors import SathmrError
from sathmr.common.optional import require
from sathmr.export.onnx import EXTERNAL_DATA_BYTES, replace_folder

log = logging.getLogger("sathmr.export")
#: what the converter copies from the ONNX file into rt_info (a second, stale copy of the metadata)
CONVERTER_RT_INFO = "framework"
PRECISIONS = ("fp32", "int8")


def stage_bc_products(onnx_file: Path) -> set[str]:
    """Names of the matrix products int8 compresses: the ONNX nodes ORT's int8 quantises (the IR keeps
    the ONNX node names as the operations' friendly names)."""
    import onnx

    from sathmr.export.mlp_conv import mlps_as_matmuls
    from sathmr.export.quantize import quantised_nodes

    proto = onnx.load(str(onnx_file))
    mlps_as_matmuls(proto)                   # the form OpenVINO converts (matmul_form; it moves weights)
    return set(quantised_nodes(proto))


def compressed_products(model) -> set[str]:
    """Friendly names of the MatMuls whose weight is an int8 constant (through its decompression ops)."""
    out = set()
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        node = op.input_value(1).get_node()
        for _ in range(8):      # Convert → Multiply (scale) → Convert → Constant
            if node.get_type_name() == "Constant" or node.get_input_size() == 0:
                break
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant" and node.get_element_type().get_type_name() == "i8":
            out.add(op.get_friendly_name())
    return out


def compress_stage_bc(model, chosen: set[str]):
    """``model`` with int8 weights in the MatMuls ``chosen`` only (NNCF; everything else untouched)."""
    nncf = require("nncf")
    names = {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"}
    missing = chosen - names
    if missing:     # the converter renamed nodes: a bug to fix here, not the user's
        raise RuntimeError(f"the IR lacks {len(missing)} of the matrix products to compress (e.g. {sorted(missing)[0]})")
    ignored = nncf.IgnoredScope(names=sorted(names - chosen), types=["Convolution", "GroupConvolution", "Gather"],
                                validate=False)
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(sys.stderr):       # its progress bars: never on our stdout
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=ignored)
    done = compressed_products(model)
    if done != chosen:
        raise RuntimeError(f"NNCF compressed {len(done)} matrix products, expected exactly the {len(chosen)} of stages B/C")
    return model


def matmul_form(onnx_file: Path, tmp: Path) -> Path:
    """The ONNX file to convert: an fp32 ONNX Runtime export runs its MLPs as calls of a model-local
    function (1×1 convolutions, ``sathmr.export.mlp_conv``) that OpenVINO's frontend does not inline; their
    MatMul form is written to ``tmp``. Other files are converted as they are."""
    import onnx

    from sathmr.export.mlp_conv import mlps_as_matmuls

    proto = onnx.load(str(onnx_file))
    if not mlps_as_matmuls(proto):
        return onnx_file
    out = tmp / onnx_file.name
    onnx.save_model(proto, str(out), save_as_external_data=proto.ByteSize() > EXTERNAL_DATA_BYTES,
                    location=out.name + ".data")
    return out


def convert_export(source: str | Path, output: str | Path, precision: str = "fp32") -> Artifact:
    """The OpenVINO IR of the fp32 two-stage ONNX export ``source``, at ``precision``, into the folder
    ``output`` (written beside it and moved into place when complete)."""
    ov = require("openvino")
    if precision not in PRECISIONS:
        raise SathmrError(f"OpenVINO exports run {', '.join(PRECISIONS)}, not {precision!r}")
    art, output = read_artifact(source), Path(output)
    if art.meta.layout != "two-stage" or art.meta.precision != "fp32":
        raise SathmrError(f"{source}: OpenVINO IR is converted from an fp32 two-stage export, not a {art.meta.layout} "
                          f"{art.meta.precision} one")
    meta = replace(art.meta, precision=precision).with_extra(openvino=ov.__version__.split("-")[0])
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
        folder = Path(tmp) / "export"
        folder.mkdir()
        for graph, onnx_file in art.files.items():
            t0 = time.perf_counter()
            # only ONNX Runtime-target graphs can hold the MLP calls: the portable ones (the default) convert as they are
            source_file = matmul_form(onnx_file, Path(tmp)) if art.meta.target == "onnxruntime" else onnx_file
            model = ov.convert_model(str(source_file))
            if precision == "int8" and graph == "tokens":
                model = compress_stage_bc(model, stage_bc_products(source_file))
            if source_file != onnx_file:
                source_file.unlink()
            write_ir(ov, model, meta, graph, folder / f"{graph}{IR_SUFFIX}")
            log.info("  %s: %s%s in %.1f s", graph, graph, IR_SUFFIX, time.perf_counter() - t0)
            del model
        replace_folder(folder, output)
    return read_artifact(output, IR_SUFFIX)


def write_ir(ov, model, meta: ExportMeta, graph: str, path: Path) -> None:
    """One graph as ``path`` (+ ``.bin``) with the sathmr metadata as its only copy of it."""
    rt = model.get_rt_info()
    if CONVERTER_RT_INFO in list(rt.keys()):
        del rt[CONVERTER_RT_INFO]
    model.set_rt_info(json.dumps(meta.to_props(graph)), RT_INFO_KEY)
    ov.save_model(model, str(path), compress_to_fp16=False)
