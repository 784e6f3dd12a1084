"""``--stream udp://HOST:PORT``: one JSON datagram per frame, for game engines and robots.

Message (UTF-8 JSON, one per frame and threshold)::

    {"source": "clip", "frame": 12, "time": 0.4, "fps": 30.0, "threshold": 0.3, "part": 0, "parts": 1,
     "people": [{"id": 3, "score": 0.91, "box_xyxy": [x0, y0, x1, y1],
                 "smpl": {"global_orient": [3], "body_pose": [69], "betas": [10], "transl": [3]},
                 "joints3d": [[x, y, z] * 45]}]}

Axis-angle rotations, metres, the model's OpenCV camera frame (x right, y down, z forward); boxes in
source pixels. A frame whose message would not fit in one datagram (``MAX_DATAGRAM`` bytes) is split
by people into ``parts`` messages sharing ``frame``. UDP drops and reorders: receivers key on ``frame``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from urllib.parse import urlparse

import numpy as np

from sathmr.common.errors import SathmrError
from sathmr.runtime.postprocess import Person

MAX_DATAGRAM = 60_000      # below the 65,507-byte UDP payload limit, with room for the header
DIGITS = 5                 # decimals kept (1/100 mm, 1e-5 rad)


def parse_udp_url(url: str) -> tuple[str, int]:
    u = urlparse(url)
    if u.scheme != "udp" or not u.hostname or u.port is None:
        raise SathmrError(f"--stream must look like udp://HOST:PORT, got {url!r}")
    return u.hostname, u.port


def person_message(track_id: int | None, p: Person) -> dict:
    r = lambda a: np.round(np.asarray(a, dtype=np.float64), DIGITS).tolist()   # noqa: E731
    return {"id": track_id, "score": round(float(p.score), DIGITS), "box_xyxy": r(p.box),
            "smpl": {"global_orient": r(p.pose[0]), "body_pose": r(p.pose[1:].reshape(-1)), "betas": r(p.betas),
                     "transl": r(p.transl)},
            "joints3d": r(p.joints3d)}


class UdpPublisher:
    def __init__(self, url: str):
        self.address = parse_udp_url(url)
        try:
            info = socket.getaddrinfo(*self.address, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as exc:
            raise SathmrError(f"--stream: cannot resolve {self.address[0]}: {exc}") from None
        self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
        self.target = info[4]
        self.sent = 0

    def publish(self, header: dict, ids: Sequence[int | None], people: Sequence[Person]) -> None:
        """Send one frame: ``header`` (source, frame, time, ...) plus its people, split if too large."""
        msgs = [person_message(i, p) for i, p in zip(ids, people)]
        parts, current, size = [], [], 0
        for m in msgs:
            n = len(json.dumps(m, separators=(",", ":"))) + 1
            if current and size + n > MAX_DATAGRAM:
                parts.append(current)
                current, size = [], 0
            current.append(m)
            size += n
        parts.append(current)
        for k, chunk in enumerate(parts):
            data = json.dumps({**header, "part": k, "parts": len(parts), "people": chunk},
                              separators=(",", ":")).encode()
            try:
                self.sock.sendto(data, self.target)
            except OSError:      # nobody listening (ICMP refused) or a full buffer: UDP is best effort
                continue
            self.sent += 1

    def close(self) -> None:
        self.sock.close()
