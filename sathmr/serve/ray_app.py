"""Scale-out: ``sathmr serve --ray-replicas N`` runs N replicas of the same app under Ray Serve.

Each replica is a Ray actor that loads the model from the :class:`~sathmr.serve.service.ModelSpec` and
builds the very app :func:`~sathmr.serve.app.create_app` returns (routes, limits, metrics, its own
dynamic batcher); Ray Serve's HTTP proxy on ``--host``/``--port`` spreads the requests over them. On one
machine the replicas split the cores (each gets ``cores / N`` of Ray's CPUs and as many torch threads);
``--ray-address`` joins an existing Ray cluster instead, where replicas land on its nodes (GPUs: give
each replica one with ``--device cuda``; Ray then needs ``num_gpus`` in the actor options, not set here).
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import replace

from sathmr.common.optional import require
from sathmr.serve.app import create_app
from sathmr.serve.service import InferenceService, ModelSpec, ServeConfig


def replica_deployment(serve, replicas: int, cpus_per_replica: float):
    """The Ray Serve deployment: a replica class whose ASGI app is built after the model is loaded."""

    @serve.ingress()
    class SathmrReplica:
        def __init__(self, spec: ModelSpec, config: ServeConfig):
            self.service = InferenceService.load(spec, config)

        def __serve_build_asgi_app__(self):
            return create_app(self.service)

    return serve.deployment(SathmrReplica, name="sathmr", num_replicas=replicas,
                            ray_actor_options={"num_cpus": cpus_per_replica})


def serve_with_ray(spec: ModelSpec, config: ServeConfig, replicas: int, host: str, port: int,
                   address: str | None = None, ready=None, stop: threading.Event | None = None) -> None:
    """Start Ray (or join ``address``), deploy ``replicas`` replicas, serve until SIGINT/SIGTERM or ``stop``."""
    ray = require("ray")
    serve = require("ray.serve")
    cores = os.cpu_count() or 1
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:   # a private single-node cluster on the loopback
            ray.init(num_cpus=max(cores, replicas), include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
    spec = replace(spec, threads=spec.threads or max(1, cores // replicas))
    stop = stop or threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        serve.start(http_options={"host": host, "port": port})
        app = replica_deployment(serve, replicas, max(cores, replicas) / replicas).bind(spec, config)
        serve.run(app, name="sathmr", route_prefix="/", blocking=False)
        if ready is not None:
            ready()
        stop.wait()
    finally:
        serve.shutdown()         # drains the replicas: requests in flight are answered
        ray.shutdown()
        for s, h in previous.items():
            signal.signal(s, h)
