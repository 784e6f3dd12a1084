"""Scale-out: `sathmr serve --ray-replicas 2` runs two replicas under Ray Serve on the loopback; both
answer, every answer is right for its image, and SIGTERM takes the whole Ray cluster down."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from sathmr.serve.client import Client
from sathmr.serve.service import InferenceService, ModelSpec, ServeConfig

from serve_helpers import ServerProcess, assert_same_people, sample_images

pytest.importorskip("ray.serve", reason="the scale-out test needs Ray Serve (pip install 'sathmr[ray]')")


@pytest.mark.slow        # a Ray cluster and two replicas: ~17 s
def test_two_ray_serve_replicas_share_the_load(embedded, real_images):
    images = sample_images(real_images)
    service = InferenceService.load(ModelSpec(), ServeConfig())
    reference = {n: service.answer(service.predictor.run_batch([service.prepare(d, n)], [n]).results[0], 0.3, n)
                 for n, d in images.items()}
    names = list(images)
    with ServerProcess("--ray-replicas", "2", startup_s=300) as srv:
        def client_run(k: int):
            c = Client(srv.url)
            return [(n, c.infer(images[n], filename=n)) for n in (names[(k + r) % len(names)] for r in range(6))]

        with ThreadPoolExecutor(6) as pool:
            replies = [x for part in pool.map(client_run, range(6)) for x in part]
        assert all(r.status == 200 for _, r in replies), [r.body[:200] for _, r in replies if r.status != 200]
        for name, r in replies:
            assert r.json()["image"] == name
            assert_same_people(r.json(), reference[name])
        workers = {r.headers["x-sathmr-worker"] for _, r in replies}
        assert len(workers) == 2, workers           # both replicas answered
        out = srv.stop(timeout=120)
        assert srv.proc.returncode == 0, out
