"""Stage timing that is honest on both CPU and GPU (used by the batch runner and the benchmarks)."""

from __future__ import annotations

import time

import torch


class StageTimer:
    """Marks points in time; ``intervals()`` returns the seconds between consecutive marks.

    On CUDA the marks are events on the current stream and ``intervals`` synchronises first, so GPU
    work is attributed to the stage that queued it; on CPU they are ``perf_counter`` readings.
    """

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]
