"""Test-only helpers for `sathmr serve`: a live uvicorn server in a thread and test images."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

uvicorn = pytest.importorskip("uvicorn", reason="sathmr serve needs the serve extra (pip install 'sathmr[serve]')")
pytest.importorskip("fastapi", reason="sathmr serve needs the serve extra (pip install 'sathmr[serve]')")
pytest.importorskip("multipart", reason="sathmr serve needs the serve extra (pip install 'sathmr[serve]')")

from sathmr.serve.app import create_app  # noqa: E402
from sathmr.serve.client import Client, wait_ready  # noqa: E402
from sathmr.serve.limits import uvicorn_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``create_app(service)`` on uvicorn in a background thread on a free loopback port."""

    def __init__(self, service):
        self.service, self.port = service, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(create_app(service), service.config.limits, "127.0.0.1", self.port,
                                                    log_level="warning", timeout_graceful_shutdown=30))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
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


def assert_same_people(got: dict, want: dict, atol_px: float = 1e-2, atol_m: float = 1e-5):
    assert got["num_people"] == want["num_people"] and got["tokens"] == want["tokens"]
    assert got["image_hw"] == want["image_hw"]
    for a, b in zip(got["people"], want["people"]):
        assert a["query"] == b["query"]
        np.testing.assert_allclose(a["box_xyxy"], b["box_xyxy"], atol=atol_px)
        np.testing.assert_allclose(a["joints3d"], b["joints3d"], atol=atol_m)
        np.testing.assert_allclose(a["score"], b["score"], atol=1e-5)


class ServerProcess:
    """``python -m sathmr serve ARGS`` in a child process on a free port, ready once /healthz says 200."""

    def __init__(self, *args: str, startup_s: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args, self.startup_s = ["--port", str(self.port), *args], startup_s

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.log = tempfile.TemporaryFile("w+")      # a file, not a pipe: a chatty server never blocks on it
        self.proc = subprocess.Popen([sys.executable, "-m", "sathmr", "serve", *self.args], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, text=True)
        try:
            wait_ready(self.url, self.startup_s, alive=lambda: self.proc.poll() is None)
        except RuntimeError:
            raise AssertionError(f"sathmr serve exited with {self.proc.returncode}:\n{self.output()}") from None
        return self

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout: float = 90) -> str:
        """SIGTERM, then wait: the process's output."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        return self.output()

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
