"""`sathmr serve` under 10 concurrent 15000x15000 uploads: the server's peak RSS, and /healthz throughout.

    python benchmarks/serve_hostile.py [--uploads 10] [--side 15000] [--unbounded]

A 15000x15000 PNG is a few hundred KB on the wire and 675 MB once decoded (BGR). Each scenario starts
``python -m sathmr serve`` (embedded default) on the loopback, sends the uploads at once from as many
threads, polls ``/healthz`` every 0.2 s and samples the server's RSS every 0.05 s from /proc until every
upload has its answer, then prints the baseline and peak RSS (and VmHWM), the answers' status codes and
the slowest /healthz answer. Scenarios:

  * ``default``: serve's own 40 MP limit refuses every upload from its header (nothing is decoded);
  * ``250MP``: ``--max-pixels 250000000`` (sathmr infer's limit) — the uploads are decoded, but the decode
    gate admits them one budget (``--decode-memory-mb``, 1 GiB) at a time; those that wait over 30 s get 503;
  * ``unbounded`` (only with ``--unbounded``, needs ~10 GB): the same with ``--max-decodes`` and the decode
    memory set beyond the uploads, i.e. what the gate prevents.

Figures, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from sathmr.common.hardware import cpu_description
from sathmr.serve.client import Client, stop_server, wait_ready

REPO = Path(__file__).resolve().parents[1]


def huge_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")        # bilevel: small here, full size once decoded as BGR
    return buf.getvalue()


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def scenario(name: str, png: bytes, uploads: int, serve_args: list[str]) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "sathmr", "serve", "--port", str(port), *serve_args], env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(url, 180, alive=lambda: proc.poll() is None)
        Client(url).get("/healthz")
        time.sleep(1.0)
        base = status_kb(proc.pid, "VmRSS")
        done, peak, health = threading.Event(), [base], []

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], status_kb(proc.pid, "VmRSS"))
                time.sleep(0.05)

        def poll():
            c = Client(url, timeout=30)
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    status = c.get("/healthz").status
                except OSError:
                    status = 0
                health.append((status, time.perf_counter() - t0))
                time.sleep(0.2)

        threads = [threading.Thread(target=f, daemon=True) for f in (sample, poll)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(uploads) as pool:
            replies = list(pool.map(lambda _: Client(url, timeout=600).infer(png, "image/png"), range(uploads)))
        wall = time.perf_counter() - t0
        done.set()
        for t in threads:
            t.join(5)
        hwm = status_kb(proc.pid, "VmHWM")
        return {"scenario": name, "serve_args": " ".join(serve_args), "baseline_rss_mb": base / 1024,
                "peak_rss_mb": peak[0] / 1024, "vmhwm_mb": hwm / 1024, "wall_s": wall,
                "statuses": dict(Counter(r.status for r in replies)),
                "healthz": {"polls": len(health), "not_200": sum(s != 200 for s, _ in health),
                            "max_s": max((d for _, d in health), default=float("nan"))},
                "first_error": next((r.json().get("error") for r in replies if r.status != 200), None)}
    finally:
        stop_server(proc, 60)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uploads", type=int, default=10)
    ap.add_argument("--side", type=int, default=15000)
    ap.add_argument("--unbounded", action="store_true", help="also run without the decode gate (needs ~10 GB)")
    args = ap.parse_args()
    png = huge_png(args.side)
    print(f"cpu: {cpu_description()}")
    print(f"{args.uploads} concurrent uploads of a {args.side}x{args.side} PNG ({len(png) / 1024:.0f} KB, "
          f"{args.side ** 2 * 3 / 2 ** 20:.0f} MB decoded)")
    runs = [("default", []), ("250MP", ["--max-pixels", "250000000"])]
    if args.unbounded:
        runs.append(("unbounded", ["--max-pixels", "250000000", "--max-decodes", str(args.uploads),
                                   "--decode-memory-mb", "1000000"]))
    for name, serve_args in runs:
        r = scenario(name, png, args.uploads, serve_args)
        h = r["healthz"]
        print(f"{name:>9}: RSS {r['baseline_rss_mb']:.0f} MB -> peak {r['peak_rss_mb']:.0f} MB (VmHWM "
              f"{r['vmhwm_mb']:.0f} MB); answers {r['statuses']} in {r['wall_s']:.1f} s; /healthz "
              f"{h['polls'] - h['not_200']}/{h['polls']} OK, slowest {h['max_s'] * 1000:.0f} ms"
              + (f"; e.g. {r['first_error']!r}" if r["first_error"] else ""))


if __name__ == "__main__":
    main()
