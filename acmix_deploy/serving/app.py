"""The HTTP server: KServe v2 / Triton endpoints over one loaded model, with dynamic batching and metrics.

Routes (``{name}`` is the served model's name; every model route also exists
as ``/v2/models/{name}/versions/{version}/...``, where only version ``1``
exists)::

    GET  /v2/health/live           200 while the process serves HTTP
    GET  /v2/health/ready          200 once the model is loaded and warmed up, 503 while shutting down
    GET  /v2                       server metadata
    GET  /v2/models/{name}         model metadata (inputs, outputs, datatypes, shapes; -1 = batch axis)
    GET  /v2/models/{name}/ready   200 / 503
    POST /v2/models/{name}/infer   inference, JSON or binary tensors
    GET  /metrics                  Prometheus text format

Errors are answered as ``{"error": "..."}`` with a 4xx status for bad
requests (404 unknown model or version, 413 body over the limit, 400 the
rest) and 500 when the model itself fails; the server keeps serving.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations
# (``request: Request``) at runtime, and ``Request`` is imported inside create_app.
import contextlib
import socket
import time
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..errors import ConfigError
from ..exporters.util import require
from .batching import DynamicBatcher
from .metrics import ServerMetrics
from .protocol import HEADER_LENGTH, ProtocolError, decode_body, encode_response, parse_infer_request

__all__ = ["MODEL_VERSION", "ServeSettings", "bind_socket", "build_server", "create_app", "serve"]

MODEL_VERSION = "1"


@dataclass
class ServeSettings:
    name: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    batch_timeout_ms: float = 2.0
    workers: int = 1
    max_body_mb: float = 64.0

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"--name must be a non-empty name without '/', got {self.name!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must lie in 0..65535, got {self.port}")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be positive, got {self.max_batch}")
        if not 0 <= self.batch_timeout_ms <= 10_000:
            raise ConfigError(f"--batch-timeout-ms must lie in 0..10000, got {self.batch_timeout_ms}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be positive, got {self.workers}")
        if not self.max_body_mb > 0:
            raise ConfigError(f"--max-body-mb must be positive, got {self.max_body_mb}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))


def _error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ProtocolError(f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes "
                                    "(--max-body-mb)", 413)
        except ValueError:
            raise ProtocolError("Content-Length is not an integer") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"request body exceeds the limit of {limit} bytes (--max-body-mb)", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(model, settings: ServeSettings):
    """A FastAPI app serving ``model`` (a :class:`acmix_deploy.runtime.loader.LoadedModel`)."""
    fastapi = require("fastapi", "serve")
    from fastapi import Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings.validate()
    metrics = ServerMetrics(settings.name, settings.max_batch)
    runner = model.runner

    def infer(x: np.ndarray) -> np.ndarray:
        return np.asarray(runner.infer(x), dtype=np.float32)

    # Merged batches must stay inside what the model accepts: a fixed batch (static ONNX, a one-size
    # engine) takes no merging, a bounded range (a TensorRT profile) caps it.
    merge_limit = settings.max_batch
    if model.max_batch is not None:
        merge_limit = 1 if model.min_batch == model.max_batch else min(merge_limit, model.max_batch)
    batcher = DynamicBatcher(infer, max_batch=merge_limit, timeout_s=settings.batch_timeout_ms / 1000,
                             workers=settings.workers, metrics=metrics)
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.stop()

    app = fastapi.FastAPI(title="acmix-deploy", version=__version__, lifespan=lifespan, docs_url=None,
                          redoc_url=None, openapi_url=None)
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.model = model
    app.state.settings = settings

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return _error(400, str(exc))

    def check_model(name: str, version: str | None) -> None:
        if name != settings.name:
            raise ProtocolError(f"unknown model {name!r}; this server serves {settings.name!r}", 404)
        if version not in (None, "", MODEL_VERSION):
            raise ProtocolError(f"model {name!r} has no version {version!r}; available: {MODEL_VERSION}", 404)

    def tensor_meta(spec) -> dict:
        return {"name": spec.name, "datatype": spec.datatype, "shape": [-1, *spec.shape]}

    @app.get("/v2/health/live")
    async def live():
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready():
        return Response(status_code=200 if state["ready"] else 503)

    @app.get("/v2")
    async def server_metadata():
        return {"name": "acmix-deploy", "version": __version__, "extensions": ["binary_tensor_data"]}

    async def model_metadata(name: str, version: str | None = None):
        try:
            check_model(name, version)
        except ProtocolError as exc:
            return _error(exc.status, str(exc))
        return {"name": settings.name, "versions": [MODEL_VERSION], "platform": model.platform,
                "inputs": [tensor_meta(model.input)], "outputs": [tensor_meta(model.output)]}

    async def model_ready(name: str, version: str | None = None):
        try:
            check_model(name, version)
        except ProtocolError as exc:
            return _error(exc.status, str(exc))
        return Response(status_code=200 if state["ready"] else 503)

    async def model_infer(request: Request, name: str, version: str | None = None):
        t0 = time.perf_counter()
        metrics.inflight += 1
        status = 500
        try:
            check_model(name, version)
            limit = settings.max_body_bytes
            body = decode_body(await _read_body(request, limit), request.headers.get("content-encoding"), limit)
            req = parse_infer_request(body, request.headers.get(HEADER_LENGTH), model.input.name,
                                      model.input.shape, model.output.name)
            rows = req.tensor.shape[0]
            if model.max_batch is not None and not model.min_batch <= rows <= model.max_batch:
                span = (f"exactly {model.max_batch}" if model.min_batch == model.max_batch
                        else f"{model.min_batch}..{model.max_batch}")
                raise ProtocolError(f"batch of {rows} is outside what the model accepts ({span})")
            if not state["ready"]:
                raise ProtocolError("server is shutting down", 503)
            try:
                out = await batcher.submit(req.tensor)
            except Exception as exc:  # the model failed on this batch: 500 for these requests only
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                return _error(500, f"inference failed: {first}")
            body, headers = encode_response(settings.name, MODEL_VERSION, req.id, model.output.name, out,
                                            req.output_binary)
            status = 200
            return Response(content=body, status_code=200, headers=headers)
        except ProtocolError as exc:
            status = exc.status
            return _error(exc.status, str(exc))
        finally:
            metrics.inflight -= 1
            metrics.request_done(status, time.perf_counter() - t0)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(prefix, model_metadata, methods=["GET"])
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        app.add_api_route(prefix + "/infer", model_infer, methods=["POST"])

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), or a clear error."""
    from ..errors import AcmixDeployError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} does not resolve: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise AcmixDeployError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def build_server(app, sock: socket.socket, log_level: str = "info", graceful_timeout_s: float | None = 30.0):
    """A ``uvicorn.Server`` for ``app``; run it with ``server.run(sockets=[sock])``.

    On SIGTERM / SIGINT uvicorn stops accepting connections, waits for the
    requests in flight (up to ``graceful_timeout_s``), then runs the app's
    shutdown (the batcher finishes its running batches).
    """
    uvicorn = require("uvicorn", "serve")
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s)
    return uvicorn.Server(config)



def serve(model_path, settings: ServeSettings, backend: str | None = None, device: str = "cpu",
          arch: str | None = None, imgsz: int | None = None, threads: int | None = None,
          log_level: str = "info", on_ready=None) -> None:
    """Load ``model_path``, bind ``settings.host:settings.port``, serve until SIGTERM / SIGINT."""
    require("fastapi", "serve")
    require("uvicorn", "serve")
    from ..runtime.loader import open_runner

    settings.validate()
    sock = bind_socket(settings.host, settings.port)  # fail on a taken port before loading the model
    try:
        model = open_runner(model_path, backend=backend, device=device, arch=arch, imgsz=imgsz, threads=threads)
        app = create_app(model, settings)
        if on_ready is not None:
            on_ready(model, sock.getsockname()[:2])
        build_server(app, sock, log_level=log_level).run(sockets=[sock])
    finally:
        sock.close()
