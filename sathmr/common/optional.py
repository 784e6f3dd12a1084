"""Lazy imports of optional packages, with a one-line hint naming the extra that provides them, and the
checks an import alone does not make: which TensorRT releases sathmr supports, and ONNX Runtime
distributions that overwrite each other's files."""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

from sathmr.common.errors import SathmrError

# import name -> (pip extra, what it is for)
EXTRAS = {
    "onnxruntime": ("ort", "the ONNX Runtime backend"),
    "tensorrt": ("gpu", "the TensorRT backend and export"),
    "openvino": ("openvino", "the OpenVINO backend and export"),
    "nncf": ("openvino", "the int8 OpenVINO export (NNCF weight compression)"),
    "matplotlib": ("bench", "the scaling plot of sathmr bench"),
    "fastapi": ("serve", "sathmr serve"),
    "uvicorn": ("serve", "sathmr serve"),
    "multipart": ("serve", "multipart uploads to sathmr serve (python-multipart)"),
    "prometheus_client": ("serve", "the metrics of sathmr serve"),
    "pygltflib": ("anim", "the animated glTF of sathmr infer --save-anim"),
    "ray": ("ray", "replicas under Ray Serve (sathmr serve --ray-replicas)"),
}


#: the TensorRT releases whose Python API tests/data/gpu_api holds (tests/test_gpu_api.py checks the code
#: against both): [min, max) as (major, minor). Both build strongly typed networks (sathmr.export.trt).
TENSORRT_SUPPORTED = ((10, 16), (12, 0))
#: distributions that all install the ``onnxruntime`` module: two of them overwrite each other's files
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn")


def installed(names) -> list[str]:
    """``name==version`` of each of the distributions ``names`` that is installed."""
    found = []
    for name in names:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def check_ort_install() -> None:
    """Two ONNX Runtime distributions in one environment share the ``onnxruntime`` module folder; whichever
    was installed last wins file by file, and CUDA then vanishes (or half works) without a word."""
    found = installed(ORT_DISTRIBUTIONS)
    if len(found) > 1:
        names = " ".join(f.split("==")[0] for f in found)
        keep = "onnxruntime-gpu" if "onnxruntime-gpu" in names else found[-1].split("==")[0]
        raise SathmrError(f"{' and '.join(found)} are both installed and overwrite each other's onnxruntime module: "
                          f"pip uninstall -y {names} && pip install {keep}")


def check_tensorrt_version(version: str) -> tuple[int, int]:
    """(major, minor) of a supported TensorRT; any other release is refused in one line."""
    try:
        major, minor = (int(v) for v in version.split(".")[:2])
    except ValueError:
        raise SathmrError(f"cannot read the TensorRT version {version!r}") from None
    lo, hi = TENSORRT_SUPPORTED
    if not lo <= (major, minor) < hi:
        raise SathmrError(f"TensorRT {version} is not supported: sathmr needs TensorRT >= {lo[0]}.{lo[1]}, < {hi[0]} "
                          "(pip install 'sathmr[gpu]')")
    return major, minor


def require(module: str) -> ModuleType:
    """Import ``module`` or raise a SathmrError that says which extra to install."""
    top = module.split(".")[0]
    if top == "onnxruntime":
        check_ort_install()
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        extra, purpose = EXTRAS.get(top, (None, module))
        hint = f"pip install 'sathmr[{extra}]'" if extra else f"pip install {module}"
        raise SathmrError(f"{module} is needed for {purpose} but is not installed: {hint}") from exc
    if module == "tensorrt":
        check_tensorrt_version(mod.__version__)
    return mod
