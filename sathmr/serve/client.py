"""A small standard-library client of ``sathmr serve`` (for scripts, the load benchmark and the tests).

One :class:`Client` holds one keep-alive connection: use one per thread.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit


@dataclass
class Reply:
    status: int
    headers: dict[str, str]     # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)


def multipart(field: str, filename: str, data: bytes, content_type: str = "application/octet-stream"
              ) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its content type."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 120.0):
        u = urlsplit(url)
        self.host, self.port, self.timeout = u.hostname or "127.0.0.1", u.port or 80, timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Reply:
        for attempt in (0, 1):      # a keep-alive connection the server closed meanwhile is reopened once
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                r = self._conn.getresponse()
                reply = Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
                continue
            except BaseException:      # refused, timed out, ...: the next call starts afresh
                self.close()
                raise
            if reply.headers.get("connection", "").lower() == "close":
                self.close()
            return reply
        raise AssertionError("unreachable")

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def infer(self, data: bytes, content_type: str = "image/jpeg", filename: str | None = None, **query) -> Reply:
        """POST /v1/infer: the image as the body, or as multipart field ``image`` when ``filename`` is given."""
        path = "/v1/infer" + (f"?{urlencode(query)}" if query else "")
        if filename is not None:
            body, ctype = multipart("image", filename, data, content_type)
        else:
            body, ctype = data, content_type
        return self.request("POST", path, body, {"Content-Type": ctype})

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def wait_ready(url: str, timeout: float = 120.0, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll ``GET /healthz`` until it answers 200; raise when ``timeout`` passes or ``alive()`` turns false
    (the server process died)."""
    c, deadline = Client(url, timeout=30), time.monotonic() + timeout
    try:
        while True:
            try:
                if c.get("/healthz").status == 200:
                    return
            except OSError:
                pass
            if not alive():
                raise RuntimeError(f"the server at {url} exited before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server at {url} was not ready within {timeout:.0f} s")
            time.sleep(0.25)
    finally:
        c.close()


def stop_server(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM a ``sathmr serve`` process (it drains what is in flight), kill it if it outlasts ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
