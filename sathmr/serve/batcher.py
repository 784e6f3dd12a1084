"""Dynamic batching: requests that arrive close together run through the network as one batch.

One worker thread owns the model. :meth:`DynamicBatcher.submit` (from any thread or event loop)
queues an item and returns a :class:`concurrent.futures.Future`. The worker takes the oldest item and
waits at most ``max_queue_delay_ms`` *from that item's arrival* for more, up to ``max_batch_size``
(Triton's ``max_queue_delay_microseconds`` semantics: a lone request waits no longer than the delay,
and items already queued while the previous batch ran join the next one at once). A batch that
raises fails its own items only; the worker goes on. :meth:`close` runs everything already queued,
then stops: graceful shutdown loses no accepted request.

Neither FastAPI nor uvicorn batch, and Ray Serve's ``serve.batch`` needs a running Ray; this is the
small piece that is ours, kept free of web code so that it is tested on its own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from sathmr.common.errors import SathmrError

T = TypeVar("T")
R = TypeVar("R")
DEFAULT_MAX_BODY_BYTES = 32 * 2 ** 20     # larger request bodies are refused (413) before they are queued
log = logging.getLogger("sathmr.serve")


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 8
    max_queue_delay_ms: float = 5.0
    max_queue: int = 256             # items waiting beyond this are refused (503): bounded memory under overload

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise SathmrError(f"max batch size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_ms < 0:
            raise SathmrError(f"max queue delay must be >= 0 ms, got {self.max_queue_delay_ms}")
        if self.max_queue < 1:
            raise SathmrError(f"max queue must be >= 1, got {self.max_queue}")


class Busy(SathmrError):
    """The queue is full or the batcher is shutting down: come back later (HTTP 503)."""


@dataclass
class _Job(Generic[T]):
    item: T
    future: Future
    arrived: float


_STOP = object()


class DynamicBatcher(Generic[T, R]):
    """Batches submitted items for ``run`` (a list of items → one result per item, in order).

    ``observe(batch_size, seconds)`` is called after every batch (metrics).
    """

    def __init__(self, run: Callable[[list[T]], Sequence[R]], policy: BatchPolicy = BatchPolicy(),
                 observe: Callable[[int, float], None] | None = None, name: str = "sathmr-batcher"):
        self.run, self.policy, self.observe = run, policy, observe
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def depth(self) -> int:
        """Items waiting (not counting the batch that is running)."""
        return self._queue.qsize()

    def submit(self, item: T) -> Future:
        """Queue ``item``; the future resolves to ``(result, batch_size)``."""
        with self._lock:     # no item may slip in behind the stop marker
            if self._closed:
                raise Busy("the server is shutting down")
            if self._queue.qsize() >= self.policy.max_queue:
                raise Busy(f"the queue is full ({self.policy.max_queue} requests waiting); retry later")
            job = _Job(item, Future(), time.monotonic())
            self._queue.put(job)
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = first.arrived + self.policy.max_queue_delay_ms / 1000
            while len(batch) < self.policy.max_batch_size:
                wait = deadline - time.monotonic()
                try:
                    job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                batch.append(job)
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]   # the client may have gone
        if not live:
            return
        t0 = time.perf_counter()
        try:
            results = self.run([j.item for j in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        except Exception as exc:          # every waiting request gets the error (with its traceback)
            log.exception("batch of %d failed", len(live))
            for j in live:
                j.future.set_exception(exc)
            return
        seconds = time.perf_counter() - t0
        for j, r in zip(live, results):
            j.future.set_result((r, len(live)))
        if self.observe is not None:
            self.observe(len(live), seconds)
