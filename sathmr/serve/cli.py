"""``sathmr serve``: the HTTP service (uvicorn, one process) or replicas under Ray Serve."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from sathmr.backends.formats import model_options as shared_model_options
from sathmr.common.options import Command, config_options, device_option, threads_option, threshold_option
from sathmr.serve.batcher import DEFAULT_MAX_BODY_BYTES, BatchPolicy
from sathmr.serve.limits import SERVE_MAX_PIXELS, ServeLimits

if TYPE_CHECKING:
    from sathmr.serve.service import ModelSpec


def model_options(f):
    """The options that pick the model, in one place (``model_spec`` turns them into a ModelSpec); --model,
    --backend and --checkpoint mean what they mean for every command (:func:`sathmr.common.options.model_options`)."""
    for option in reversed([config_options, device_option(),
                            threads_option(help="PyTorch intra-op threads per process (default: PyTorch's; with Ray: "
                                                "cores / replicas).")]):
        f = option(f)
    return shared_model_options(f)


def model_spec(backend, checkpoint, model_path, config, smpl_dir, device, threads) -> ModelSpec:
    from sathmr.serve.service import ModelSpec

    return ModelSpec(backend, checkpoint, model_path, config, smpl_dir, device, threads)


@click.command("serve", cls=Command)
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@threshold_option(help="Detection threshold of requests that name none (?threshold=).")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=BatchPolicy.max_batch_size, show_default=True,
              help="Most images per network batch.")
@click.option("--max-queue-delay-ms", type=click.FloatRange(min=0), default=BatchPolicy.max_queue_delay_ms,
              show_default=True, help="Longest a request waits for others to batch with (0: batch only what is queued).")
@click.option("--max-queue", type=click.IntRange(min=1), default=BatchPolicy.max_queue, show_default=True,
              help="Requests waiting beyond this are refused with 503.")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_MAX_BODY_BYTES / 2 ** 20,
              show_default=True, help="Largest request body (MiB); larger ones get 413.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=SERVE_MAX_PIXELS, show_default=True,
              help="Refuse images with more pixels than this (read from the header, before decoding).")
@click.option("--max-decodes", type=click.IntRange(min=1), default=ServeLimits.max_decodes, show_default=True,
              help="Images decoded at once; a few more wait, the rest get 503.")
@click.option("--decode-memory-mb", type=click.IntRange(min=1), default=ServeLimits.decode_memory_bytes // 2 ** 20,
              show_default=True, help="Memory the decodes running at once may take together (estimated from the headers).")
@click.option("--max-connections", type=click.IntRange(min=1), default=ServeLimits.max_connections, show_default=True,
              help="Connections and requests at once (uvicorn's limit_concurrency); more get 503.")
@click.option("--viewer-dir", type=click.Path(file_okay=False), default=None,
              help="node_modules holding @google/model-viewer (default: SATHMR_VIEWER_DIR or the sathmr cache).")
@click.option("--install-viewer", "install_viewer_", is_flag=True, help="npm-install the page's 3D viewer first if it is missing.")
@click.option("--ray-replicas", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run N replicas under Ray Serve (pip install 'sathmr[ray]'); 0: one uvicorn process.")
@click.option("--ray-address", default=None, help="Join this Ray cluster (default: start one on the loopback).")
@click.option("--graceful-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds SIGTERM waits for requests in flight before cancelling them.")
@click.option("--access-log", is_flag=True, help="Log every request (uvicorn's access log).")
def serve_command(backend, checkpoint, model_path, config, smpl_dir, device, threads, host, port, threshold,
                  max_batch_size, max_queue_delay_ms, max_queue, max_body_mb, max_pixels, max_decodes, decode_memory_mb,
                  max_connections, viewer_dir, install_viewer_, ray_replicas, ray_address, graceful_timeout, access_log):
    """Serve the model over HTTP: POST /v1/infer, GET /v1/models, /healthz, /metrics, and a page at /."""
    from sathmr.common.optional import require
    from sathmr.serve.app import create_app
    from sathmr.serve.limits import uvicorn_config
    from sathmr.serve.ray_app import serve_with_ray
    from sathmr.serve.service import InferenceService, ServeConfig
    from sathmr.serve.viewer import find_viewer, install_viewer

    spec = model_spec(backend, checkpoint, model_path, config, smpl_dir, device, threads)
    limits = ServeLimits(max_decodes=max_decodes, decode_memory_bytes=decode_memory_mb * 2 ** 20,
                         max_connections=max_connections)
    cfg = ServeConfig(threshold, int(max_body_mb * 2 ** 20), max_pixels,
                      BatchPolicy(max_batch_size, max_queue_delay_ms, max_queue), viewer_dir, limits)
    if install_viewer_ and find_viewer(viewer_dir) is None:
        click.echo(f"viewer installed: {install_viewer(viewer_dir)}", err=True)
    if ray_replicas:
        check_viewer(viewer_dir)
        serve_with_ray(spec, cfg, ray_replicas, host, port, ray_address,
                       ready=lambda: click.echo(f"serving {ray_replicas} replica(s) on http://{host}:{port}/", err=True))
        return
    uvicorn = require("uvicorn")
    service = InferenceService.load(spec, cfg)
    click.echo(service.info.get("note") or f"model: {service.info.get('path')}", err=True)
    check_viewer(viewer_dir)
    server = uvicorn.Server(uvicorn_config(create_app(service), limits, host, port, access_log=access_log,
                                           timeout_graceful_shutdown=graceful_timeout, log_level="info"))
    server.run()


def check_viewer(viewer_dir) -> None:
    from sathmr.serve.viewer import default_viewer_dir, find_viewer

    if find_viewer(viewer_dir) is None:
        click.echo(f"3D viewer not found in {viewer_dir or default_viewer_dir()}: the page shows no 3D view "
                   "(--install-viewer)", err=True)
