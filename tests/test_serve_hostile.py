"""`sathmr serve` against hostile clients (issue #25): huge images, many decodes at once, clients that
hang up mid-upload, half-open connections, trickled headers and bodies. Loopback only, bounded waits."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from sathmr.serve.batcher import BatchPolicy, Busy
from sathmr.serve.client import Client
from sathmr.serve.limits import SERVE_MAX_PIXELS, DecodeGate, ServeLimits
from sathmr.serve.service import InferenceService, ModelSpec, ServeConfig

from serve_helpers import LiveServer

LIMITS = ServeLimits(max_decodes=1, decode_queue=1, decode_wait_s=20, max_connections=12, keep_alive_s=1,
                     header_timeout_s=1.0, body_idle_s=1.0, body_total_s=2.0)


def small_png() -> bytes:
    return cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))[1].tobytes()


def png_of(w: int, h: int) -> bytes:
    """A bilevel PNG of w x h: a few KB on the wire, w*h*3 bytes once decoded."""
    buf = io.BytesIO()
    Image.new("1", (w, h)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def service(embedded):
    return InferenceService.load(ModelSpec(), ServeConfig(batch=BatchPolicy(max_queue_delay_ms=0), limits=LIMITS))


@pytest.fixture(scope="module")
def live(service):
    with LiveServer(service) as srv:
        yield srv


def wait_for(cond, seconds: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def errors_counted(live, reason: str) -> float:
    for line in live.client().get("/metrics").body.decode().splitlines():
        if line.startswith(f'sathmr_errors_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


# ------------------------------------------------------------------------------------------ pixels, decodes
def test_serve_has_its_own_pixel_limit(live):
    assert ServeConfig().max_pixels == SERVE_MAX_PIXELS == 40_000_000
    c = live.client()
    reply = c.infer(png_of(8000, 6000), "image/png")          # 48 MP: fine for `sathmr infer`, not for serve
    assert reply.status == 400 and "48,000,000 pixels is over the limit of 40,000,000" in reply.json()["error"]
    assert c.infer(small_png(), "image/png").status == 200


def test_decode_gate_bounds_count_and_memory_and_queue():
    gate = DecodeGate(ServeLimits(max_decodes=3, decode_memory_bytes=100 * 6, decode_queue=2, decode_wait_s=10))
    inside, release, peak = [0], threading.Event(), [0]
    lock = threading.Lock()

    def decode(pixels):
        with gate.admit(pixels):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            release.wait(10)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=decode, args=(60,)) for _ in range(2)]   # 360 bytes each: one at a time
    for t in threads:
        t.start()
    wait_for(lambda: gate.running == 1 and gate.waiting == 1, what="one running, one waiting")
    third = threading.Thread(target=decode, args=(60,))
    third.start()
    wait_for(lambda: gate.waiting == 2, what="the queue full")
    with pytest.raises(Busy, match="too many images are being decoded"):
        with gate.admit(60):
            pass
    with gate.admit(1):                                      # a small one that fits the budget goes ahead
        assert gate.running == 2
    assert inside[0] == 1 and gate.reserved == 360
    release.set()
    for t in [*threads, third]:
        t.join(10)
    assert peak[0] == 1 and gate.peak_reserved <= 600 and gate.running == gate.waiting == gate.reserved == 0
    big = DecodeGate(ServeLimits(max_decodes=2, decode_memory_bytes=10))
    with big.admit(10 ** 9):                                  # larger than the budget: runs, alone
        assert big.reserved == 10


def test_decode_gate_times_out_a_waiting_decode():
    gate = DecodeGate(ServeLimits(max_decodes=1, decode_wait_s=0.2))
    with gate.admit(1):
        t0 = time.monotonic()
        with pytest.raises(Busy, match="no decode slot within 0.2 s"):
            with gate.admit(1):
                pass
        assert 0.15 < time.monotonic() - t0 < 5
    with gate.admit(1):
        pass


def test_decodes_beyond_the_queue_get_503(live, service):
    held, release = threading.Event(), threading.Event()

    def hold():
        with service.decodes.admit(1):
            held.set()
            release.wait(20)
    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    waiting = {}
    first = threading.Thread(target=lambda: waiting.setdefault("reply", Client(live.url).infer(small_png(), "image/png")))
    first.start()
    try:
        wait_for(lambda: service.decodes.waiting == 1, what="a request waiting for a decode slot")
        busy = live.client().infer(small_png(), "image/png")
        assert busy.status == 503 and "too many images are being decoded" in busy.json()["error"]
        assert live.client().get("/healthz").status == 200
        time.sleep(1.5 * LIMITS.header_timeout_s)       # a request in progress outlives the header deadline
    finally:
        release.set()
        holder.join(10)
        first.join(30)
    assert waiting["reply"].status == 200
    assert errors_counted(live, "busy") >= 1


def test_pipelined_requests_on_one_connection_are_answered(live):
    s = raw(live)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    got = closed_by_server(s, 5)
    s.close()
    assert got is not None and got.count(b"HTTP/1.1 200") == 3, got


# ------------------------------------------------------------------------------------------ connections
def raw(live) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    return s


def closed_by_server(s: socket.socket, seconds: float = 8.0) -> bytes | None:
    """What the server sent before closing ``s`` (None: still open after ``seconds``)."""
    s.settimeout(0.2)
    got, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    return None


def test_a_client_that_hangs_up_mid_upload_is_counted_without_a_traceback(live):
    rec = Recorder()
    for name in ("uvicorn.error", "sathmr.serve"):
        logging.getLogger(name).addHandler(rec)
    try:
        before = errors_counted(live, "client_disconnect")
        internal = errors_counted(live, "internal")
        for _ in range(2):
            s = raw(live)
            s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
                      + small_png()[:500])
            time.sleep(0.2)
            s.close()
        wait_for(lambda: errors_counted(live, "client_disconnect") == before + 2, what="two disconnects counted")
        assert errors_counted(live, "internal") == internal
    finally:
        for name in ("uvicorn.error", "sathmr.serve"):
            logging.getLogger(name).removeHandler(rec)
    assert not [r for r in rec.records if r.exc_info], [r.getMessage() for r in rec.records]
    assert live.client().infer(small_png(), "image/png").status == 200


def test_half_open_and_trickling_connections_time_out_and_connections_are_capped(live):
    idle = [raw(live) for _ in range(6)]                               # connect, send nothing
    trickle_headers = [raw(live) for _ in range(3)]
    for s in trickle_headers:
        s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\n")          # headers that never end
    body = raw(live)
    body.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
    t0 = time.monotonic()
    stop = threading.Event()

    def trickle():                                                     # one byte every 0.3 s: never idle 1 s
        while not stop.is_set():
            try:
                body.sendall(b"\x00")
            except OSError:
                return
            stop.wait(0.3)
    threading.Thread(target=trickle, daemon=True).start()
    # 10 connections held open: the cap of 12 leaves room for one request; more connections get 503
    extra = [raw(live) for _ in range(3)]
    replies = []
    for s in extra:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        replies.append(closed_by_server(s, 5) or b"")
    assert any(r.startswith(b"HTTP/1.1 503") for r in replies), replies
    try:
        for s in idle + trickle_headers:
            assert closed_by_server(s) is not None, "a half-open connection outlived the header timeout"
        answer = closed_by_server(body)
        assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
        assert b"request body not received in time" in answer
        assert time.monotonic() - t0 < 8
    finally:
        stop.set()
        for s in idle + trickle_headers + extra + [body]:
            s.close()
    assert errors_counted(live, "timeout") >= 1
    wait_for(lambda: live.client().get("/healthz").status == 200, what="the server to answer again")
