"""A stand-in for the Hugging Face Hub on 127.0.0.1: files in the Hub's URL layout
(``/{repo}/resolve/{revision}/{path}``) with the headers huggingface_hub reads (ETag, X-Repo-Commit,
Content-Length), HEAD and GET, and Range requests for resuming.

Faults for the tests: ``faults``, one per GET in turn ("cut": send ``cut_after`` bytes of the body and
drop the connection; "fail": answer 500), and ``corrupt`` (bytes that do not match the ETag).
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Seen:
    method: str
    path: str
    range: str | None


@dataclass
class FakeHub:
    files: dict[str, bytes]                       # "owner/repo/path/in/repo" → content
    commit: str = COMMIT
    faults: list[str] = field(default_factory=list)   # what the next GETs do: "cut" | "fail"
    cut_after: int = 0                            # bytes a "cut" GET sends
    corrupt: bool = False
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:   # quiet
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

            def do_GET(self) -> None:
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def gets(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET"]

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        rng = h.headers.get("Range")
        self.seen.append(Seen(h.command, h.path, rng))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", h.path)
        key = f"{m.group(1)}/{m.group(3)}" if m else None
        if key not in self.files:
            h.send_response(404)
            h.send_header("X-Error-Code", "EntryNotFound")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        data = self.files[key]
        etag = hashlib.sha256(data).hexdigest()
        if self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        fault = self.faults.pop(0) if body and self.faults else None
        if fault == "fail":
            h.send_response(500)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if body and rng else 0
        h.send_response(206 if start else 200)
        h.send_header("ETag", f'"{etag}"')
        h.send_header("X-Repo-Commit", self.commit)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(data) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return
        chunk = data[start:]
        if fault == "cut":
            h.wfile.write(chunk[: self.cut_after])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)               # the peer sees the body end early
            return
        h.wfile.write(chunk)
