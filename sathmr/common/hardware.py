"""What the machine can run fast: the CPU's model name and instruction-set flags, and which reduced
precisions a device has native kernels for.

Shared by the benchmarks (which print the flags next to every figure, because speeds are only
comparable on one machine) and the precision switch (which refuses or flags a precision the hardware
would only emulate).
"""

from __future__ import annotations

import platform

import torch

# CPU features that change which kernels PyTorch / ONNX Runtime use (fp32 FMA, int8 VNNI, bf16, AMX)
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
#: either gives oneDNN real bf16 matrix kernels; without them bf16 is converted to fp32 and back (slower than fp32)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: integer dot-product instructions that make int8 GEMMs (ONNX Runtime's dynamic quantisation) fast
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_info() -> dict:
    """Model name and the relevant instruction-set flags of the CPU (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if flags and model:
                    break
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def cpu_description() -> str:
    info = cpu_info()
    return f"{info['cpu']}, flags {' '.join(info['cpu_flags']) or '-'}"


def not_native(precision: str, device: torch.device) -> str | None:
    """Why ``precision`` ("fp32", "bf16", "fp16") would not run on native kernels of ``device``; None when it would."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
            return f"{torch.cuda.get_device_name(device)} has no bf16 tensor cores (compute capability < 8.0)"
        return None
    if precision == "fp16":
        return "PyTorch has no fast fp16 kernels on CPU (fp16 is for CUDA; use bf16 on a CPU with AVX512-BF16/AMX)"
    flags = cpu_info()["cpu_flags"]
    if not any(f in flags for f in BF16_CPU_FLAGS):
        return (f"this CPU ({cpu_description()}) has neither AVX512-BF16 nor AMX-BF16, so PyTorch emulates bf16 "
                "and runs it several times slower than fp32")
    return None
