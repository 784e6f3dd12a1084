"""The HTTP API of ``sathmr serve``: FastAPI routes over an :class:`~sathmr.serve.service.InferenceService`.

    POST /v1/infer   an image (body with an image/* content type, or multipart field ``image``);
                     query ``threshold``, ``mesh=glb|obj``, ``overlay=png`` → the JSON of ``sathmr infer``
    GET  /v1/models  what is loaded      GET /healthz      GET /metrics (Prometheus)      GET / (the page)

Every refusal is a 4xx with a one-line JSON body ``{"error": "..."}``; a bug is a 500 in the same form,
with its traceback in the server log. Bodies over the limit are refused from ``Content-Length`` before
they are read, and counted while they stream in otherwise; a body that stalls or trickles gets 408, a
client that hangs up mid-upload is counted as ``client_disconnect`` (limits: ``sathmr.serve.limits``).
The network work happens on the batcher's thread, decoding and answer building in worker threads: the
event loop only moves bytes.

This module imports FastAPI at call time (``create_app``), so its annotations are real objects and
it has no ``from __future__ import annotations``: FastAPI reads route signatures at run time.
"""

import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

from sathmr import __version__
from sathmr.common.errors import SathmrError
from sathmr.common.optional import require
from sathmr.serve.batcher import Busy
from sathmr.serve.service import InferenceService, check_threshold, upload_name
from sathmr.serve.viewer import find_viewer

STATIC = Path(__file__).with_name("static")
ROUTES = ("/", "/healthz", "/metrics", "/v1/infer", "/v1/models", "/viewer/model-viewer.min.js")
MESH_FORMATS, OVERLAY_FORMATS = ("glb", "obj"), ("png",)
log = logging.getLogger("sathmr.serve")


class HTTPError(Exception):
    """A refusal with its status code and the reason it is counted under in ``sathmr_errors_total``."""

    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class Guard:
    """ASGI middleware: the body-size limit, the ``X-Sathmr-Worker`` header, requests counted by route."""

    def __init__(self, app, service: InferenceService):
        self.app, self.service = app, service
        self.worker = str(os.getpid()).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        metrics, limit = self.service.metrics, self.service.config.max_body_bytes
        code = [500]

        async def send_tagged(message):
            if message["type"] == "http.response.start":
                code[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-sathmr-worker", self.worker)]}
            await send(message)

        received, body = [0], {"done": False, "since": None}
        limits = self.service.config.limits

        async def receive_limited():
            if body["done"]:                  # after the body: only the disconnect a response may listen for
                return await receive()
            now = time.monotonic()
            body["since"] = body["since"] or now
            left = min(limits.body_idle_s, body["since"] + limits.body_total_s - now)
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except asyncio.TimeoutError:      # a trickling or stalled client holds a connection: let it go
                raise HTTPError(408, f"request body not received in time (idle over {limits.body_idle_s:g} s or "
                                f"over {limits.body_total_s:g} s in all)", "timeout") from None
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise too_large(limit)
                body["done"] = not message.get("more_body", False)
            return message

        route = scope["path"] if scope["path"] in ROUTES or scope["path"].startswith("/static/") else "other"
        try:
            declared = dict(scope.get("headers", [])).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                metrics.errors.labels("too_large").inc()
                await error_response(413, too_large(limit).message)(scope, receive, send_tagged)
                return
            await self.app(scope, receive_limited, send_tagged)
        finally:
            metrics.requests.labels(route if not route.startswith("/static/") else "/static", str(code[0])).inc()


def too_large(limit: int) -> HTTPError:
    return HTTPError(413, f"request body over the limit of {limit:,} bytes (--max-body-mb)", "too_large")


def error_response(status: int, message: str):
    from starlette.responses import JSONResponse
    close = {"Connection": "close"} if status in (408, 499) else None    # the body was not read to its end
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=close)


def create_app(service: InferenceService):
    """The FastAPI app; its lifespan starts and drains the service's batcher."""
    fastapi = require("fastapi")
    require("multipart")        # python-multipart, which Starlette parses forms with
    from fastapi.exceptions import RequestValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.staticfiles import StaticFiles

    metrics, config = service.metrics, service.config

    @asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.close)     # runs every request already queued

    app = fastapi.FastAPI(title="sathmr", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                          description="SAT-HMR multi-person 3D human mesh estimation")
    app.state.service = service
    app.add_middleware(Guard, service=service)

    def refuse(status: int, message: str, reason: str):
        metrics.errors.labels(reason).inc()
        return error_response(status, message)

    @app.exception_handler(HTTPError)
    async def _http_error(request, exc: HTTPError):
        return refuse(exc.status, exc.message, exc.reason)

    @app.exception_handler(Busy)
    async def _busy(request, exc: Busy):
        return refuse(503, str(exc), "busy")

    @app.exception_handler(SathmrError)
    async def _bad_input(request, exc: SathmrError):
        return refuse(400, str(exc), "bad_input")

    @app.exception_handler(RequestValidationError)
    async def _bad_query(request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return refuse(400, f"{'.'.join(str(x) for x in err.get('loc', ()))}: {err.get('msg')}", "bad_input")

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(request, exc: StarletteHTTPException):
        return refuse(exc.status_code, str(exc.detail), "bad_input" if exc.status_code == 400 else "http")

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):      # the traceback is logged by the server as well
        log.error("internal error on %s", request.url.path, exc_info=exc)
        return refuse(500, f"internal error: {type(exc).__name__}: {exc}", "internal")

    async def read_upload(request) -> tuple[bytes, str]:
        try:
            return await read_body(request)
        except ClientDisconnect:      # the client hung up mid-upload: counted, no traceback, nobody to answer
            raise HTTPError(499, "the client disconnected before its upload was complete", "client_disconnect") from None

    async def read_body(request) -> tuple[bytes, str]:
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype.startswith("image/"):
            return await request.body(), "upload"
        if ctype == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=16, max_part_size=config.max_body_bytes)
            try:
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise HTTPError(400, "the multipart body has no file field 'image'", "bad_input")
                return await upload.read(), upload_name(upload.filename)
            finally:
                await form.close()
        raise HTTPError(415, f"unsupported content type {ctype or '(none)'!r}: send the image as the body with an "
                        "image/* content type, or as the multipart/form-data file field 'image'", "unsupported_type")

    @app.post("/v1/infer", summary="People in one image (the JSON of `sathmr infer`)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "image/*": {"schema": {"type": "string", "format": "binary"}},
                  "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                      "image": {"type": "string", "format": "binary"}}}}}}})
    async def infer(request: fastapi.Request, threshold: float | None = None, mesh: str | None = None,
                    overlay: str | None = None):
        t = check_threshold(threshold) if threshold is not None else config.threshold
        if mesh is not None and mesh not in MESH_FORMATS:
            raise HTTPError(400, f"mesh must be one of {', '.join(MESH_FORMATS)}, got {mesh!r}", "bad_input")
        if overlay is not None and overlay not in OVERLAY_FORMATS:
            raise HTTPError(400, f"overlay must be png, got {overlay!r}", "bad_input")
        metrics.in_flight.inc()
        try:
            data, source = await read_upload(request)
            t0 = time.perf_counter()
            prepared = await run_in_threadpool(service.prepare, data, source)
            result, batch_size = await asyncio.wrap_future(service.submit(prepared, t, source))
            body = await run_in_threadpool(service.answer, result, t, source, mesh, overlay)
            metrics.latency.observe(time.perf_counter() - t0)
        finally:
            metrics.in_flight.dec()
        return JSONResponse(body, headers={"X-Sathmr-Batch-Size": str(batch_size)})

    @app.get("/v1/models", summary="What is loaded")
    async def models():
        return {**service.models(), "viewer": find_viewer(config.viewer_dir) is not None}

    @app.get("/healthz", summary="Liveness and readiness")
    async def healthz():
        if service.batcher.closed:
            return error_response(503, "shutting down")
        return {"status": "ok", "queue_depth": service.batcher.depth}

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus():
        data, ctype = metrics.render()
        return Response(data, media_type=ctype)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/viewer/model-viewer.min.js", include_in_schema=False)
    async def viewer():
        script = find_viewer(config.viewer_dir)
        if script is None:
            raise HTTPError(404, "the 3D viewer is not installed: sathmr serve --install-viewer", "http")
        return FileResponse(script, media_type="text/javascript")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
