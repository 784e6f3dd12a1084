"""What one ``sathmr serve`` process lets clients cost it: pixels, decodes, connections and time.

* Pixels: ``SERVE_MAX_PIXELS`` (40 MP, ``--max-pixels``) instead of the 250 MP ``sathmr infer`` takes
  from local files. Every image is resized to the model's canvas (1288 px for sat_644, 1.7 MP), so a
  larger upload only costs decode memory; 40 MP passes every phone photo.
* Decodes: a :class:`DecodeGate` admits at most ``max_decodes`` at a time and only while their estimated
  memory (``DECODE_BYTES_PER_PIXEL`` × pixels, from the header) fits ``decode_memory_bytes``; a few more
  wait, the rest get 503 at once. So N huge uploads cost one budget of decode memory, not N.
* Connections and time (:func:`uvicorn_config`): uvicorn's ``limit_concurrency`` (503 beyond it) and
  keep-alive timeout, plus what uvicorn lacks — a deadline for a request's headers (a half-open or
  trickling connection is closed) — while the app bounds the body's idle and total read time
  (``sathmr.serve.app.Guard``).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from sathmr.common.errors import SathmrError
from sathmr.common.optional import require
from sathmr.serve.batcher import Busy

SERVE_MAX_PIXELS = 40_000_000
#: decoded BGR is 3 bytes a pixel; OpenCV's decoders and an EXIF rotation hold about as much again
DECODE_BYTES_PER_PIXEL = 6


@dataclass(frozen=True)
class ServeLimits:
    max_decodes: int = 2                   # decodes at once (CPU-bound: more than the cores buys nothing)
    decode_memory_bytes: int = 1 << 30     # what the decodes running at once may hold together
    decode_queue: int = 64                 # decodes waiting beyond this: 503 (a waiting one holds only its body)
    decode_wait_s: float = 30.0            # a decode that waited this long: 503
    max_connections: int = 64              # uvicorn's limit_concurrency: requests beyond it get 503
    keep_alive_s: float = 5.0              # an idle keep-alive connection is closed after this
    header_timeout_s: float = 10.0         # a connection whose request headers are not complete by then: closed
    body_idle_s: float = 10.0              # no body bytes for this long: 408
    body_total_s: float = 60.0             # the whole body not received by then: 408

    def __post_init__(self) -> None:
        for name in ("max_decodes", "decode_memory_bytes", "decode_queue", "max_connections"):
            if getattr(self, name) < 1:
                raise SathmrError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("decode_wait_s", "keep_alive_s", "header_timeout_s", "body_idle_s", "body_total_s"):
            if not getattr(self, name) > 0:
                raise SathmrError(f"{name} must be > 0 seconds, got {getattr(self, name)}")


class DecodeGate:
    """Admission for decodes by count and estimated memory (thread-safe; callers are worker threads)."""

    def __init__(self, limits: ServeLimits):
        self.limits = limits
        self._cond = threading.Condition()
        self.running = self.waiting = 0
        self.reserved = 0                  # bytes held by the decodes running now
        self.peak_reserved = 0

    @contextmanager
    def admit(self, pixels: int):
        lim = self.limits
        cost = min(DECODE_BYTES_PER_PIXEL * pixels, lim.decode_memory_bytes)   # one alone always fits
        deadline = time.monotonic() + lim.decode_wait_s
        with self._cond:
            if not self._fits(cost):
                if self.waiting >= lim.decode_queue:
                    raise Busy(f"too many images are being decoded ({self.running} running, {self.waiting} "
                               "waiting); retry later")
                self.waiting += 1
                try:
                    while not self._fits(cost):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise Busy(f"no decode slot within {lim.decode_wait_s:g} s; retry later")
                        self._cond.wait(left)
                finally:
                    self.waiting -= 1
            self.running += 1
            self.reserved += cost
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        try:
            yield
        finally:
            with self._cond:
                self.running -= 1
                self.reserved -= cost
                self._cond.notify_all()

    def _fits(self, cost: int) -> bool:
        return self.running < self.limits.max_decodes and self.reserved + cost <= self.limits.decode_memory_bytes


def request_deadline_protocol(base: type, header_timeout_s: float) -> type:
    """``base`` (uvicorn's HTTP protocol class) with a deadline for each request's headers: armed when
    the connection opens and after every response, it closes a connection that has not started a
    request by then — a half-open socket, or headers trickled a byte at a time. A request whose headers
    are complete is the app's to time (the body timeouts)."""

    class RequestDeadline(base):
        def connection_made(self, transport, *args, **kwargs):
            super().connection_made(transport, *args, **kwargs)
            self._sathmr_arm()

        def on_response_complete(self, *args, **kwargs):
            self._sathmr_arm()                      # first: a pipelined request the base starts counts as started
            super().on_response_complete(*args, **kwargs)

        def connection_lost(self, exc):
            timer = getattr(self, "_sathmr_timer", None)
            if timer is not None:
                timer.cancel()
            super().connection_lost(exc)

        def _sathmr_arm(self) -> None:
            timer = getattr(self, "_sathmr_timer", None)
            if timer is not None:
                timer.cancel()
            self._sathmr_cycle = self.cycle        # the request (if any) that was already there
            self._sathmr_timer = self.loop.call_later(header_timeout_s, self._sathmr_expire)

        def _sathmr_expire(self) -> None:
            cycle = self.cycle
            started = cycle is not None and cycle is not self._sathmr_cycle and not cycle.response_complete
            if not started and not self.transport.is_closing():
                self.transport.close()

    RequestDeadline.__name__ = f"RequestDeadline{base.__name__}"
    return RequestDeadline


def uvicorn_config(app, limits: ServeLimits, host: str, port: int, **kwargs):
    """uvicorn's Config for ``app`` under ``limits`` (the command line and the tests start servers alike)."""
    uvicorn = require("uvicorn")
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    return uvicorn.Config(app, host=host, port=port, http=request_deadline_protocol(AutoHTTPProtocol, limits.header_timeout_s),
                          limit_concurrency=limits.max_connections, timeout_keep_alive=limits.keep_alive_s, **kwargs)
