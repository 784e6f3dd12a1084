"""Test-only helpers for `sathmr serve`: a live uvicorn server in a thread and test images."""

from __future__ import annotations

import socket
import threading

import cv2
import numpy as np
import pytest

uvicorn = pytest.importorskip("uvicorn", reason="sathmr serve needs the serve extra (pip install 'sathmr[serve]')")
pytest.importorskip("fastapi", reason="sathmr serve needs the serve extra (pip install 'sathmr[serve]')")
pytest.importorskip("multipart", reason="sathmr serve needs the serve extra (pip install 'sathmr[serve]')")

from sathmr.serve.app import create_app  # noqa: E402
from sathmr.serve.client import Client  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``create_app(service)`` on uvicorn in a background thread on a free loopback port."""

    def __init__(self, service):
        self.service, self.port = service, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=self.port,
                                                    log_level="warning", timeout_graceful_shutdown=30))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        for _ in range(600):
            if self.server.started or not self.thread.is_alive():
                break
            threading.Event().wait(0.05)
        assert self.server.started, "the test server did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)

    def client(self) -> Client:
        return Client(self.url)


def sample_images(paths) -> dict[str, bytes]:
    """Three distinct JPEGs of moderate size from the real photos: both, and the first mirrored."""
    out = {}
    for i, p in enumerate(paths[:2]):
        img = cv2.imread(str(p))
        img = cv2.resize(img, (img.shape[1] * 640 // max(img.shape[:2]), img.shape[0] * 640 // max(img.shape[:2])))
        out[f"photo{i}.jpg"] = cv2.imencode(".jpg", img)[1].tobytes()
        if i == 0:
            out["photo0_mirrored.jpg"] = cv2.imencode(".jpg", np.ascontiguousarray(img[:, ::-1]))[1].tobytes()
    return out
