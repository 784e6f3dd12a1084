"""Load on `sathmr serve` over the loopback: N concurrent clients x M requests, every answer checked.

    python benchmarks/serve_load.py [--clients 32] [--requests 10] [--batch 1,8] [--delay-ms 5]
                                    [--images DIR] [--json benchmarks/results/serve_load.json] [-- serve options]

For each max batch size it starts ``python -m sathmr serve`` (embedded default unless serve options after
``--`` say otherwise), sends each test image once alone (the reference answers), then runs the clients
(one keep-alive connection each, images in rotation, JPEGs of 640 px long side made from --images) and
checks every answer against its image's reference (people, boxes within 0.01 px, joints within 1e-5 m).
It prints client-side latency (p50, p90, p99), throughput, errors, wrong answers and the batch sizes the
server achieved (from each answer's X-Sathmr-Batch-Size and from /metrics), and stops the server with
SIGTERM. Figures, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from sathmr.bench.measure import cpu_info
from sathmr.serve.client import Client, stop_server, wait_ready

REPO = Path(__file__).resolve().parents[1]


def load_images(folder: Path, side: int = 640) -> dict[str, bytes]:
    out = {}
    for p in sorted(folder.glob("*")):
        img = cv2.imread(str(p))
        if img is None:
            continue
        r = side / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * r), round(img.shape[0] * r)))
        out[f"{p.stem}.jpg"] = cv2.imencode(".jpg", img)[1].tobytes()
        out[f"{p.stem}_mirrored.jpg"] = cv2.imencode(".jpg", np.ascontiguousarray(img[:, ::-1]))[1].tobytes()
    if not out:
        raise SystemExit(f"no images in {folder}")
    return out


def same_people(a: dict, b: dict) -> bool:
    if a["num_people"] != b["num_people"] or a["tokens"] != b["tokens"]:
        return False
    return all(np.allclose(p["box_xyxy"], q["box_xyxy"], atol=1e-2) and np.allclose(p["joints3d"], q["joints3d"], atol=1e-5)
               for p, q in zip(a["people"], b["people"]))


def metric_batches(text: str) -> dict[str, float]:
    """Cumulative ``sathmr_batch_size`` buckets from /metrics → batches per size bucket."""
    cum = {line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
           for line in text.splitlines() if line.startswith("sathmr_batch_size_bucket")}
    out, prev = {}, 0.0
    for le, n in cum.items():
        if n - prev:
            out[le] = n - prev
        prev = n
    return out


def run_one(images: dict[str, bytes], clients: int, requests: int, batch: int, delay_ms: float, serve_args: list[str]) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "sathmr", "serve", "--port", str(port), "--max-batch-size", str(batch),
                             "--max-queue-delay-ms", str(delay_ms), *serve_args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(url, 300, alive=lambda: proc.poll() is None)
        c = Client(url)
        model = c.get("/v1/models").json()
        reference = {n: c.infer(d, filename=n).json() for n, d in images.items()}
        names = list(images)

        def client_run(k: int):
            cl, out = Client(url), []
            for r in range(requests):
                name = names[(k + r) % len(names)]
                t0 = time.perf_counter()
                try:
                    reply = cl.infer(images[name], filename=name)
                except OSError as exc:
                    out.append((name, None, str(exc), time.perf_counter() - t0, 0))
                    continue
                dt = time.perf_counter() - t0
                out.append((name, reply.status, reply.json(), dt, int(reply.headers.get("x-sathmr-batch-size", 0))))
            cl.close()
            return out

        before = metric_batches(c.get("/metrics").body.decode())
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            replies = [x for part in pool.map(client_run, range(clients)) for x in part]
        wall = time.perf_counter() - t0
        after = metric_batches(c.get("/metrics").body.decode())
        c.close()
    finally:
        stop_server(proc, 120)
        log.close()
    ok = [r for r in replies if r[1] == 200]
    wrong = sum(not same_people(body, reference[name]) or body["image"] != name for name, _, body, _, _ in ok)
    lat = np.array([r[3] for r in ok]) * 1000
    sizes = Counter(r[4] for r in ok)
    return {"max_batch_size": batch, "max_queue_delay_ms": delay_ms, "clients": clients, "requests": len(replies),
            "errors": len(replies) - len(ok), "wrong_answers": int(wrong), "wall_s": round(wall, 2),
            "requests_per_s": round(len(ok) / wall, 2),
            "latency_ms": {k: round(float(np.percentile(lat, q)), 1) for k, q in (("p50", 50), ("p90", 90), ("p99", 99))}
            | {"mean": round(float(lat.mean()), 1), "max": round(float(lat.max()), 1)},
            "batch_size_per_request": {str(k): v for k, v in sorted(sizes.items())},
            "mean_batch_size_per_request": round(float(np.mean([r[4] for r in ok])), 2),
            "batches_by_size_bucket": {k: after.get(k, 0) - before.get(k, 0) for k in after
                                       if after.get(k, 0) - before.get(k, 0)},
            "model": model["model"], "backend": model["backend"], "config": model["config"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=10, help="per client")
    ap.add_argument("--batch", default="1,8", help="max batch sizes to compare, comma-separated")
    ap.add_argument("--delay-ms", type=float, default=5.0)
    ap.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "images")
    ap.add_argument("--json", type=Path, default=None)
    args, serve_args = ap.parse_known_args()
    serve_args = [a for a in serve_args if a != "--"]
    images = load_images(args.images)
    runs = [run_one(images, args.clients, args.requests, int(b), args.delay_ms, serve_args) for b in args.batch.split(",")]
    info = {**cpu_info(), "cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
            "images": list(images), "serve_args": serve_args}
    print(f"{info['cpu']}, {info['cores']} logical cores; {args.clients} clients x {args.requests} requests, "
          f"{len(images)} images of 640 px; {runs[0]['model']} ({runs[0]['backend']}, {runs[0]['config']})")
    print("| max batch | delay ms | requests | errors | wrong | req/s | p50 ms | p90 ms | p99 ms | mean batch | batch sizes seen |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        lat = r["latency_ms"]
        seen = ", ".join(f"{k}: {v}" for k, v in r["batch_size_per_request"].items())
        print(f"| {r['max_batch_size']} | {r['max_queue_delay_ms']:g} | {r['requests']} | {r['errors']} | {r['wrong_answers']} "
              f"| {r['requests_per_s']} | {lat['p50']} | {lat['p90']} | {lat['p99']} | {r['mean_batch_size_per_request']} "
              f"| {seen} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
