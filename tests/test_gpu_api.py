"""The GPU code calls only APIs that exist: every TensorRT name sathmr uses (classes, enums, methods,
properties, ``len()``) against the names the real TensorRT 10.16 and 11.4 bindings export, and the ONNX
Runtime CUDA provider options against ONNX Runtime's own — on a CPU, so that a removed or misspelt API
fails CI here instead of on first contact with a GPU.

The lists are generated from the wheels by ``tests/data/gpu_api/generate.py``. The TensorRT code names its
objects by what they are (``builder``, ``network``, ``config``, ``ctx``... see ``TYPED``); the collector
types them by those names, so a new variable holding a TensorRT object needs its name here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sathmr.backends.ort_backend import CUDA_OPTIONS, providers_for
from sathmr.common.optional import TENSORRT_SUPPORTED

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "gpu_api"
TRT_MODULES = ("sathmr/export/trt.py", "sathmr/backends/trt_backend.py")
TRT_VERSIONS = ("10.16.1.11", "11.4.0.106")
#: variable (or ``self.`` attribute) name → the TensorRT class it holds in TRT_MODULES
TYPED = {"builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "_parser": "OnnxParser",
         "config": "IBuilderConfig", "profile": "IOptimizationProfile", "data": "IHostMemory", "runtime": "Runtime",
         "engine": "ICudaEngine", "context": "IExecutionContext", "ctx": "IExecutionContext", "logger": "Logger",
         "layer": "ILayer"}
#: methods whose result is a TensorRT object used in a chain (``parser.get_error(i).desc()``)
RETURNS = {("OnnxParser", "get_error"): "ParserError"}


def names_of(version: str) -> set[str]:
    return set((DATA / f"tensorrt-{version}.txt").read_text().split())


def _typed(node: ast.AST) -> str | None:
    """The TensorRT class of an expression, when the collector knows it."""
    if isinstance(node, ast.Name):
        return TYPED.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return TYPED.get(node.attr)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        owner = _typed(node.func.value)
        return RETURNS.get((owner, node.func.attr)) if owner else None
    return None


def _is_trt(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "trt") or (
        isinstance(node, ast.Attribute) and node.attr == "trt" and isinstance(node.value, ast.Name) and node.value.id == "self")


def used_names(source: str) -> set[str]:
    """Every TensorRT name ``source`` uses: ``trt.A`` / ``trt.A.B`` chains, members of typed objects, and
    ``len()`` of a typed object (``Class.__len__``)."""
    used = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            if _is_trt(node.value):
                used.add(node.attr)
            elif isinstance(node.value, ast.Attribute) and _is_trt(node.value.value):
                used.add(f"{node.value.attr}.{node.attr}")
            elif (cls := _typed(node.value)) is not None:
                used.add(f"{cls}.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len" and node.args:
            if (cls := _typed(node.args[0])) is not None:
                used.add(f"{cls}.__len__")
    return used


def code_names() -> set[str]:
    return set().union(*(used_names((ROOT / m).read_text()) for m in TRT_MODULES))


def test_the_lists_are_the_supported_releases():
    lo, hi = TENSORRT_SUPPORTED
    for version in TRT_VERSIONS:
        assert lo <= tuple(int(v) for v in version.split(".")[:2]) < hi, version
        assert {"Builder", "BuilderFlag.TF32", "IExecutionContext.set_input_shape"} <= names_of(version)
    assert "BuilderFlag.FP16" in names_of("10.16.1.11") and "BuilderFlag.FP16" not in names_of("11.4.0.106")


@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_every_tensorrt_name_the_code_uses_exists(version):
    used = code_names()
    # the collector sees the calls that matter (else this test would pass on nothing)
    assert {"Builder", "BuilderFlag.TF32", "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "IHostMemory.nbytes",
            "IExecutionContext.set_input_shape", "IExecutionContext.execute_async_v3", "ICudaEngine.get_tensor_dtype",
            "IOptimizationProfile.set_shape", "OnnxParser.parse", "ParserError.desc", "DataType.BOOL"} <= used
    missing = sorted(used - names_of(version))
    assert not missing, f"not in TensorRT {version}: {missing}"


def test_a_removed_or_misspelt_name_is_caught():
    """What the two defects of the first TensorRT code look like to the collector: TensorRT 11 has no
    ``BuilderFlag.FP16``, no TensorRT has ``len(IHostMemory)``, and a typo is a typo."""
    planted = ("config.set_flag(trt.BuilderFlag.FP16)\n"
               "n = len(data)\n"
               "ctx.set_input_shapes('x', (1,))\n")
    used = used_names(planted)
    assert {"BuilderFlag.FP16", "IHostMemory.__len__", "IExecutionContext.set_input_shapes"} <= used
    assert used - names_of("11.4.0.106") == {"BuilderFlag.FP16", "IHostMemory.__len__", "IExecutionContext.set_input_shapes"}
    assert used - names_of("10.16.1.11") == {"IHostMemory.__len__", "IExecutionContext.set_input_shapes"}


def test_ort_cuda_provider_options_exist():
    known = set((DATA / "onnxruntime-gpu-1.31.1-cuda-options.txt").read_text().split())
    (_, options), _ = providers_for("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert options == {"device_id": "1", **CUDA_OPTIONS}
    assert set(options) <= known, sorted(set(options) - known)
    assert f"cudnn_conv_algo_search={options['cudnn_conv_algo_search']}" in known
    assert options["use_tf32"] == "0"
