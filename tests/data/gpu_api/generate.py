"""Regenerate the API name lists tests/test_gpu_api.py checks sathmr's GPU code against, from the real wheels.

    python tests/data/gpu_api/generate.py [--tensorrt 10.16.1.11 11.4.0.106] [--onnxruntime-gpu 1.31.1]

Needs pip (PyPI), gcc and binutils-free Python only; no GPU, no CUDA. TensorRT: the bindings wheel
(``tensorrt-cu12-bindings``) is downloaded and its pybind11 module imported against three stub
libraries (``libnvinfer``/``libnvonnxparser``/``libnvinfer_plugin``, whose few entry points return
NULL — the module only calls them when a Builder/Runtime is created), so ``dir()`` of every class is
the real exported API: one ``Class.member`` (or top-level ``Name``) per line. ONNX Runtime: the CUDA
provider's option names are the identifiers between its option-parser strings in
``libonnxruntime_providers_cuda.so`` (ORT rejects an unknown option name when a session starts).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).parent
STUBS = {
    "libnvinfer": ["void* createInferBuilder_INTERNAL(void* a, int b){return 0;}",
                   "void* createInferRefitter_INTERNAL(void* a, void* b, int c){return 0;}",
                   "void* createInferRuntime_INTERNAL(void* a, int b){return 0;}",
                   "void* getBuilderPluginRegistry(int a){return 0;}", "void* getPluginRegistry(void){return 0;}"],
    "libnvonnxparser": ["void* createNvOnnxParserRefitter_INTERNAL(void* a, void* b, int c){return 0;}",
                        "void* createNvOnnxParser_INTERNAL(void* a, void* b, int c){return 0;}",
                        "int getNvOnnxParserVersion(void){return 0;}"],
    "libnvinfer_plugin": ["int initLibNvInferPlugins(void* a, const char* b){return 0;}"],
}
#: dunder members that matter to callers (``len(x)``, ``x[i]``, ``with x:``)
DUNDERS = ("__len__", "__getitem__", "__iter__", "__enter__", "__exit__", "__buffer__")
DUMP = """
import inspect, sys
sys.path.insert(0, sys.argv[1])
import tensorrt_bindings as trt
names = {"__version__"} if hasattr(trt, "__version__") else set()
for n in dir(trt):
    if n.startswith("_"):
        continue
    names.add(n)
    obj = getattr(trt, n)
    if inspect.isclass(obj):
        names.update(f"{n}.{m}" for m in dir(obj) if not m.startswith("_") or m in sys.argv[2].split(","))
print(trt.__version__)
print("\\n".join(sorted(names)))
"""


def download(spec: str, into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(into), spec], check=True)
    return next(into.glob("*.whl"))


def tensorrt_names(version: str, work: Path) -> tuple[str, list[str]]:
    wheel = download(f"tensorrt-cu12-bindings=={version}", work / "wheel")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(work / "x")
    major = version.split(".")[0]
    stubs = work / "stubs"
    stubs.mkdir()
    for lib, body in STUBS.items():
        src = stubs / f"{lib}.c"
        src.write_text("\n".join(body) + "\n")
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(stubs / f"{lib}.so.{major}"), str(src)], check=True)
    env = {**os.environ, "LD_LIBRARY_PATH": str(stubs)}
    out = subprocess.run([sys.executable, "-c", DUMP, str(work / "x"), ",".join(DUNDERS)], env=env, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    return out[0], out[1:]


def ort_cuda_options(version: str, work: Path) -> list[str]:
    wheel = download(f"onnxruntime-gpu=={version}", work / "wheel")
    with zipfile.ZipFile(wheel) as z:
        data = z.read("onnxruntime/capi/libonnxruntime_providers_cuda.so")
    strings = [s.decode() for s in re.findall(rb"[\x20-\x7e]{4,}", data)]
    # the option names sit together in the provider's string table, from the first option string to the
    # parser's own error message
    start = strings.index("do_copy_in_default_stream")
    end = strings.index('Unknown provider option: "', start)
    names = {s for s in strings[start:end] if re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)+", s)}
    values = {f"cudnn_conv_algo_search={v}" for v in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT") if v in strings}
    return sorted(names | values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensorrt", nargs="*", default=["10.16.1.11", "11.4.0.106"])
    ap.add_argument("--onnxruntime-gpu", default="1.31.1")
    args = ap.parse_args()
    for version in args.tensorrt:
        with tempfile.TemporaryDirectory() as tmp:
            found, names = tensorrt_names(version, Path(tmp))
            assert found == version, (found, version)
            (HERE / f"tensorrt-{version}.txt").write_text("\n".join(names) + "\n")
            print(f"tensorrt {version}: {len(names)} names")
    with tempfile.TemporaryDirectory() as tmp:
        names = ort_cuda_options(args.onnxruntime_gpu, Path(tmp))
        (HERE / f"onnxruntime-gpu-{args.onnxruntime_gpu}-cuda-options.txt").write_text("\n".join(names) + "\n")
        print(f"onnxruntime-gpu {args.onnxruntime_gpu}: {len(names)} CUDA provider option names")


if __name__ == "__main__":
    main()
