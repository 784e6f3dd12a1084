"""`sathmr serve`: the model behind an HTTP API (FastAPI on uvicorn), with dynamic batching on the one
batch runner (:meth:`sathmr.runtime.predictor.Predictor.run_batch`), Prometheus metrics, a web page to try it, and
replicas under Ray Serve for scale-out.

Modules: :mod:`.batcher` (the dynamic batcher, no web code), :mod:`.service` (what one request needs:
decode, batch, answer), :mod:`.metrics`, :mod:`.app` (the HTTP routes), :mod:`.viewer` (the 3D viewer
from npm), :mod:`.ray_app` (Ray Serve replicas), :mod:`.cli` (the command). FastAPI, uvicorn and Ray
are imported lazily: ``pip install 'sathmr[serve]'`` (and ``'sathmr[ray]'``).
"""
