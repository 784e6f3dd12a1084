"""Measuring: latency statistics, memory of the current process, and a description of the machine.

Every benchmark prints the CPU it ran on (model name and the instruction-set flags that decide which
kernels run), because speeds are only comparable as ratios measured side by side on one machine.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence

import numpy as np
import torch

from sathmr.common.hardware import CPU_FLAGS, cpu_info  # noqa: F401 - the flags every benchmark prints

PERCENTILES = (50, 90, 99)


def latency_stats(seconds: Sequence[float], images_per_sample: int) -> dict[str, float]:
    """p50/p90/p99/mean in ms and images/s (images per sample over the mean latency)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    stats = {f"p{p}_ms": float(np.percentile(ms, p)) for p in PERCENTILES}
    stats.update(mean_ms=float(ms.mean()), min_ms=float(ms.min()), n=int(ms.size),
                 images_per_s=float(images_per_sample * 1000.0 / ms.mean()) if ms.mean() > 0 else float("inf"))
    return stats


def proc_status_mb(key: str, path: str = "/proc/self/status") -> float | None:
    """A memory figure (kB entry) of /proc in MB; None where /proc is absent."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def current_rss_mb() -> float | None:
    return proc_status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """The process's resident high-water mark (VmHWM) in MB: in a process of its own, one backend's peak."""
    return proc_status_mb("VmHWM")


def machine_info(threads: int, device: str) -> dict:
    info = {**cpu_info(), "cores_logical": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gb": round((proc_status_mb("MemTotal", "/proc/meminfo") or 0) / 1024, 1) or None,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "threads": threads, "device": device}
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if hasattr(os, "getloadavg"):
        info["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)   # other work on the machine skews figures
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info
