"""`sathmr serve`: the dynamic batcher, the HTTP API against `sathmr infer`'s JSON, bad input, load,
metrics and graceful shutdown on SIGTERM (all on the loopback)."""

from __future__ import annotations

import base64
import io
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh

from sathmr.common.errors import SathmrError
from sathmr.infer import OutputPlan, run_infer
from sathmr.serve.batcher import BatchPolicy, Busy, DynamicBatcher
from sathmr.serve.client import Client
from sathmr.serve.service import InferenceService, ModelSpec, ServeConfig

from serve_helpers import LiveServer, ServerProcess, assert_same_people, sample_images


# ------------------------------------------------------------------------------------------ batcher
def test_batcher_groups_waiting_items_up_to_the_max_and_keeps_order():
    gate, sizes = threading.Event(), []

    def run(items):
        gate.wait(10)            # the first batch blocks until everything else is queued
        sizes.append(len(items))
        return [x * 10 for x in items]

    b = DynamicBatcher(run, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0))
    b.start()
    futs = [b.submit(0)]
    while b.depth:               # the worker has taken item 0 into the blocked batch
        time.sleep(0.01)
    futs += [b.submit(i) for i in range(1, 11)]
    gate.set()
    assert [f.result(10) for f in futs] == [(i * 10, n) for i, n in zip(range(11), [1] + [4] * 8 + [2] * 2)]
    assert sizes == [1, 4, 4, 2]
    b.close()


def test_batcher_waits_for_company_within_the_delay():
    sizes = []
    b = DynamicBatcher(lambda items: sizes.append(len(items)) or items, BatchPolicy(8, max_queue_delay_ms=60_000))
    b.start()
    futs = [b.submit(i) for i in range(8)]          # a full batch runs without waiting out the delay
    assert [f.result(10)[0] for f in futs] == list(range(8)) and sizes == [8]
    b.close()


def test_batcher_fails_only_the_failing_batch_drains_on_close_and_refuses_after():
    def run(items):
        if -1 in items:
            raise ValueError("boom")
        return items

    b = DynamicBatcher(run, BatchPolicy(max_batch_size=1, max_queue_delay_ms=0, max_queue=100))
    bad = b.submit(-1)
    queued = [b.submit(i) for i in range(5)]        # queued before the worker starts
    b.start()
    with pytest.raises(ValueError, match="boom"):
        bad.result(10)
    b.close()                                       # everything queued before close is answered
    assert [f.result(0)[0] for f in queued] == list(range(5))
    with pytest.raises(Busy, match="shutting down"):
        b.submit(7)


def test_batcher_refuses_beyond_the_queue_bound():
    b = DynamicBatcher(lambda items: items, BatchPolicy(max_queue=2))
    b.submit(1), b.submit(2)
    with pytest.raises(Busy, match="queue is full"):
        b.submit(3)
    with pytest.raises(SathmrError, match="max batch size"):
        BatchPolicy(max_batch_size=0)


# ------------------------------------------------------------------------------------------ HTTP
@pytest.fixture(scope="module")
def service(embedded):
    return InferenceService.load(ModelSpec(), ServeConfig(threshold=0.1, max_body_bytes=2 * 2 ** 20,
                                                          batch=BatchPolicy(max_batch_size=8, max_queue_delay_ms=20)))


@pytest.fixture(scope="module")
def live(service):
    with LiveServer(service) as srv:
        yield srv


@pytest.fixture(scope="module")
def images(real_images) -> dict[str, bytes]:
    return sample_images(real_images)


@pytest.fixture(scope="module")
def reference(service, images) -> dict[str, dict]:
    """Each image alone through the predictor, as the JSON infer would write (threshold 0.1)."""
    out = {}
    for name, data in images.items():
        res = service.predictor.run_batch([service.prepare(data, name)], [name]).results[0]
        out[name] = service.answer(res, 0.1, name)
    return out


def test_infer_answers_what_sathmr_infer_writes(live, service, images, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in images.items():
        (folder / name).write_bytes(data)
    plan = OutputPlan(tmp_path / "out", (0.1,), overlay=False)
    run_infer(service.predictor, folder, plan, progress=False, threaded=False)
    c = live.client()
    for name, data in images.items():
        written = json.loads((plan.tdir(0.1) / f"{Path(name).stem}.json").read_text())
        raw = c.infer(data, "image/jpeg")                                   # the server's default, 0.1
        form = c.infer(data, "image/jpeg", filename=name, threshold=0.1)
        assert raw.status == form.status == 200
        assert raw.headers["content-type"] == "application/json"
        assert raw.json()["image"] == "upload" and form.json()["image"] == name
        for reply in (raw, form):
            body = reply.json()
            assert body.keys() == written.keys()
            assert_same_people(body, written)
    assert sum(json.loads((plan.tdir(0.1) / f"{Path(n).stem}.json").read_text())["num_people"] for n in images) > 0


def test_threshold_glb_and_overlay_on_request(live, images, reference):
    name, data = next(iter(images.items()))
    c = live.client()
    low = c.infer(data, threshold=0.05, mesh="glb", overlay="png").json()
    assert low["threshold"] == 0.05 and low["num_people"] > 0 and low["num_people"] >= reference[name]["num_people"]
    assert all(p["score"] > 0.05 for p in low["people"])
    glb = base64.b64decode(low["mesh"]["data"])
    assert glb[:4] == b"glTF" and len(glb) == low["mesh"]["bytes"]
    scene = trimesh.load(io.BytesIO(glb), file_type="glb")
    assert len(scene.geometry) == low["num_people"]
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(low["overlay"]["data"]), np.uint8), cv2.IMREAD_COLOR)
    h, w = low["resized_hw"]
    assert overlay.shape == (2 * h, 2 * w, 3)
    obj = c.infer(data, mesh="obj").json()
    assert base64.b64decode(obj["mesh"]["data"]).startswith(b"# sathmr people")


def one_line_error(reply, status: int, match: str):
    assert reply.status == status, (reply.status, reply.body[:200])
    body = reply.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and match in body["error"], body


def test_bad_input_gets_a_4xx_with_one_line_and_the_server_stays_up(live, images):
    c = live.client()
    jpeg = next(iter(images.values()))
    one_line_error(c.infer(b"this is not an image", "image/png"), 400, "cannot decode image")
    one_line_error(c.infer(jpeg[: len(jpeg) // 2], "image/jpeg"), 400, "truncated JPEG")
    one_line_error(c.infer(b"", "image/jpeg"), 400, "empty file")
    one_line_error(c.infer(jpeg, "text/plain"), 415, "unsupported content type 'text/plain'")
    one_line_error(c.request("POST", "/v1/infer", jpeg), 415, "unsupported content type")
    one_line_error(c.infer(jpeg, filename="x.jpg", threshold=1.5), 400, "threshold must be in [0, 1)")
    one_line_error(c.infer(jpeg, threshold="high"), 400, "threshold")
    one_line_error(c.infer(jpeg, mesh="fbx"), 400, "mesh must be one of glb, obj")
    body, ctype = b"--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--b--\r\n", \
        "multipart/form-data; boundary=b"
    one_line_error(c.request("POST", "/v1/infer", body, {"Content-Type": ctype}), 400, "no file field 'image'")
    big = b"\xff\xd8" + bytes(3 * 2 ** 20)          # over the fixture's 2 MiB limit
    one_line_error(c.infer(big, "image/jpeg"), 413, "over the limit of 2,097,152 bytes")
    one_line_error(c.infer(big, filename="big.jpg"), 413, "over the limit")

    def chunked():                                  # no Content-Length: counted while it streams in
        for i in range(0, len(big), 2 ** 16):
            yield big[i:i + 2 ** 16]
    conn = Client(live.url)
    conn._conn = __import__("http.client").client.HTTPConnection("127.0.0.1", live.port, timeout=60)
    conn._conn.request("POST", "/v1/infer", body=chunked(), headers={"Content-Type": "image/jpeg"},
                       encode_chunked=True)
    r = conn._conn.getresponse()
    assert r.status == 413 and "over the limit" in json.loads(r.read())["error"]
    one_line_error(c.get("/nowhere"), 404, "Not Found")
    assert live.client().get("/healthz").json()["status"] == "ok"
    assert live.client().infer(jpeg).status == 200
    metrics = live.client().get("/metrics").body.decode()
    for reason in ("bad_input", "unsupported_type", "too_large"):
        assert f'sathmr_errors_total{{reason="{reason}"}}' in metrics


def test_models_and_metrics(live, service):
    c = live.client()
    m = c.get("/v1/models").json()
    assert m["backend"] == "torch" and m["embedded"] is True and m["precision"] == "fp32"
    assert m["config"] == service.predictor.cfg.name and m["max_batch_size"] == 8 and m["version"]
    text = c.get("/metrics").body.decode()
    for name in ("sathmr_requests_total", "sathmr_batch_size_bucket", "sathmr_request_latency_seconds_bucket",
                 "sathmr_queue_depth", "sathmr_requests_in_flight"):
        assert name in text
    page = c.get("/")
    assert page.status == 200 and b"<title>sathmr" in page.body
    assert c.get("/static/app.js").status == 200


def test_32_concurrent_clients_get_their_own_correct_answers_in_batches(live, images, reference):
    names = list(images)

    def client_run(k: int):
        c, out = live.client(), []
        for r in range(10):
            name = names[(k + r) % len(names)]
            reply = c.infer(images[name], "image/jpeg", filename=name)
            out.append((name, reply.status, reply.json(), int(reply.headers.get("x-sathmr-batch-size", 0))))
        c.close()
        return out

    with ThreadPoolExecutor(32) as pool:
        replies = [x for part in pool.map(client_run, range(32)) for x in part]
    assert len(replies) == 320 and all(status == 200 for _, status, _, _ in replies)
    for name, _, body, _ in replies:
        assert body["image"] == name
        assert_same_people(body, reference[name])
    sizes = [n for *_, n in replies]
    assert max(sizes) > 1 and max(sizes) <= 8        # requests were batched, never beyond the max


# ------------------------------------------------------------------------------------------ SIGTERM
@pytest.mark.slow        # a server process and a drain: ~7 s
def test_sigterm_finishes_the_requests_in_flight(embedded, images):
    data = next(iter(images.values()))
    with ServerProcess("--max-batch-size", "4", "--max-queue-delay-ms", "4000") as srv:
        c = Client(srv.url)
        with ThreadPoolExecutor(2) as pool:
            pending = [pool.submit(lambda: Client(srv.url).infer(data)) for _ in range(2)]
            while "sathmr_requests_in_flight 2.0" not in c.get("/metrics").body.decode():
                time.sleep(0.05)         # both wait in the queue (4 s delay, batch of 4 not full)
            c.close()
            srv.proc.send_signal(signal.SIGTERM)
            replies = [f.result(60) for f in pending]
        out = srv.stop()
        assert [r.status for r in replies] == [200, 200], out
        assert replies[0].json()["tokens"] == replies[1].json()["tokens"]
        assert int(replies[0].headers["x-sathmr-batch-size"]) == 2
        assert srv.proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in out, out
        with pytest.raises(OSError):
            Client(srv.url, timeout=5).get("/healthz")
