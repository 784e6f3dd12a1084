"""Reading ahead of the network and writing behind it: one reader thread, the network, one writer thread.

    events (reader thread: list, decode, preprocess)  ─queue─►  network (caller's thread, batches)
        ─queue─►  consume (writer thread: post-network work in input order: tracking, rendering, files)

``events`` yields :class:`Work` (an image for the network) and any other object (a marker, e.g. "video
starts", or an input that failed), which passes to ``consume`` in its place in the order. Both queues
are bounded, so memory stays flat and a slow writer slows the reader down. With ``threaded=False`` the
same stages run in turn in the caller's thread (today's serial loop, the benchmark's baseline).

The network runs in the caller's thread (CUDA contexts and signal handling stay there). The threads
share the GIL: a network of a few large ops (SAT-HMR at full size) hardly notices, while one of many
tiny ops (the embedded 448-px default) is slowed down by whatever Python code the other threads run
(see README, Performance of the pipeline). Exceptions from
either thread stop the others and are re-raised in the caller with their traceback; a stop of the
input is the event source's business (it ends its iterator), so whatever was read is still written.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sathmr.runtime.postprocess import ImageResult
from sathmr.runtime.predictor import Predictor
from sathmr.runtime.preprocess import Prepared

_END = object()
# The network thread gives up the GIL around every tensor op and must win it back from the reader and
# writer; Python's default 5 ms switch interval makes an op-heavy small network wait up to that long
# each time. 1 ms halves the slowdown of the tiny model next to a busy Python thread (measured).
SWITCH_INTERVAL_S = 0.001


@dataclass
class Work:
    """One image for the network; ``payload`` comes back to ``consume`` with its result."""
    payload: Any
    prepared: Prepared
    name: str


@dataclass
class Failed:
    """An input that could not be read: reported by ``consume`` in its place."""
    source: str
    message: str


@dataclass
class Skipped:
    """An input whose outputs are already complete."""
    source: str


@dataclass
class PipelineStats:
    wall_s: float = 0.0
    network_s: float = 0.0        # backend.run
    batch_s: float = 0.0          # run_batch: network + decoding (SMPL, projection, thresholds)
    images: int = 0
    threaded: bool = True
    cpu_s: float = 0.0            # CPU time of the whole process meanwhile (all threads)

    @property
    def busy(self) -> float:
        """Fraction of the wall time the network was running."""
        return self.network_s / self.wall_s if self.wall_s > 0 else 0.0

    def report(self, unit: str = "image(s)") -> str:
        mode = "pipelined" if self.threaded else "serial"
        return (f"{self.images} {unit} in {self.wall_s:.1f} s ({mode}, {self.images / max(self.wall_s, 1e-9):.2f}/s): "
                f"network busy {100 * self.busy:.0f} % of the wall time "
                f"({100 * self.batch_s / max(self.wall_s, 1e-9):.0f} % with decoding), "
                f"{self.cpu_s / max(self.wall_s, 1e-9):.1f} cores used")


@dataclass
class _Failure:
    exc: BaseException


@dataclass
class _Shared:
    abort: threading.Event = field(default_factory=threading.Event)
    error: list = field(default_factory=list)


def _put(q: queue.Queue, item, shared: _Shared) -> bool:
    """Blocking put that gives up when the run is aborted (so no thread waits on a dead partner)."""
    while not shared.abort.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, shared: _Shared):
    while not shared.abort.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _END


def run_pipeline(events: Iterable, predictor: Predictor, consume: Callable[[Any, ImageResult | None], None],
                 batch_size: int = 1, threaded: bool = True, depth: int | None = None) -> PipelineStats:
    """Run ``events`` through the network in batches of ``batch_size`` and hand every event to
    ``consume(payload, result)`` in order (``result`` is None for events that are not :class:`Work`).

    ``depth`` bounds each queue (default: two batches plus two).
    """
    stats = PipelineStats(threaded=threaded)
    depth = depth or 2 * batch_size + 2
    t0, c0 = time.perf_counter(), time.process_time()
    if not threaded:
        _network_loop(iter(events), predictor, consume, batch_size, stats)
        stats.wall_s, stats.cpu_s = time.perf_counter() - t0, time.process_time() - c0
        return stats
    shared = _Shared()
    q_in: queue.Queue = queue.Queue(maxsize=depth)
    q_out: queue.Queue = queue.Queue(maxsize=depth)

    def reader() -> None:
        it = iter(events)
        try:
            for ev in it:
                if not _put(q_in, ev, shared):
                    return
        except BaseException as exc:       # noqa: BLE001 — re-raised in the caller with its traceback
            _put(q_in, _Failure(exc), shared)
            return
        finally:                           # an early end still releases what the events hold open
            close = getattr(it, "close", None)
            if close is not None:
                close()
        _put(q_in, _END, shared)

    def writer() -> None:
        try:
            while True:
                item = _get(q_out, shared)
                if item is _END:
                    return
                payload, result = item
                consume(payload, result)
        except BaseException as exc:       # noqa: BLE001
            shared.error.append(exc)
            shared.abort.set()

    threads = [threading.Thread(target=reader, name="sathmr-reader", daemon=True),
               threading.Thread(target=writer, name="sathmr-writer", daemon=True)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, SWITCH_INTERVAL_S))
    for t in threads:
        t.start()

    def source() -> Iterator:
        while True:
            item = _get(q_in, shared)
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def emit(payload, result) -> None:
        if not _put(q_out, (payload, result), shared):
            _raise_writer(shared)
            raise RuntimeError("pipeline aborted")

    try:
        _network_loop(source(), predictor, emit, batch_size, stats)
        _put(q_out, _END, shared)
        threads[1].join()
        _raise_writer(shared)
    finally:
        shared.abort.set()          # on any way out, no thread keeps waiting on the others
        for t in threads:
            t.join(timeout=10)
        sys.setswitchinterval(switch)
    stats.wall_s, stats.cpu_s = time.perf_counter() - t0, time.process_time() - c0
    return stats


def _raise_writer(shared: _Shared) -> None:
    if shared.error:
        raise shared.error[0]


def _network_loop(events: Iterator, predictor: Predictor, emit: Callable[[Any, ImageResult | None], None],
                  batch_size: int, stats: PipelineStats) -> None:
    """Batch consecutive :class:`Work`; a marker flushes the pending batch first, so order is kept."""
    pending: list[Work] = []

    def flush() -> None:
        if not pending:
            return
        t = time.perf_counter()
        out = predictor.run_batch([w.prepared for w in pending], [w.name for w in pending])
        stats.batch_s += time.perf_counter() - t
        stats.network_s += out.times["network"]
        stats.images += len(pending)
        for w, res in zip(pending, out.results):
            emit(w.payload, res)
        pending.clear()

    for ev in events:
        if isinstance(ev, Work):
            pending.append(ev)
            if len(pending) >= batch_size:
                flush()
        else:
            flush()
            emit(ev, None)
    flush()


@contextlib.contextmanager
def stop_on_sigint(stop: threading.Event, say: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
    """While inside, the first Ctrl-C sets ``stop`` (inputs end, what was read is written, videos are
    finished playable); a second one interrupts at once. Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        say("stopping: finishing the frames already read (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
