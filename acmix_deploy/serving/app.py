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
requests (404 unknown model or version, 408 body not received in time, 413
body over the limit, 400 the rest), 503 when the server is busy or shutting
down, and 500 when the model itself fails; the server keeps serving.

What one client can cost is bounded (see :class:`ServeSettings`): rows per
request (the model's batch limit), body bytes (``--max-body-mb``, also after
decompression), JSON bytes (room for the largest batch as text), bytes held
by all requests at once (``--max-inflight-mb``), concurrent decodes
(``--max-decodes``; decoding and parsing run in threads, never on the event
loop), connections (``--max-connections``), and time (``--read-timeout-s``
for headers and between body chunks, ``--body-timeout-s`` for a whole body,
``--graceful-timeout-s`` for shutdown).  Work queued for a client that has
disconnected is dropped before it runs.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations
# (``request: Request``) at runtime, and ``Request`` is imported inside create_app.
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import socket
import sys
import time
import warnings
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from .._version import __version__
from ..errors import AcmixDeployError, ConfigError, InputShapeError
from ..runtime.loader import open_runner
from ..util import require
from .batching import DynamicBatcher
from .metrics import ServerMetrics
from .protocol import (HEADER_LENGTH, ProtocolError, decode_and_parse, encode_outputs, exit_with_parent,
                       header_length_value, json_limit, v2_datatype)

__all__ = ["MODEL_VERSION", "ServeSettings", "bind_socket", "build_server", "create_app", "serve"]

MODEL_VERSION = "1"

# JSON bodies above this many bytes (or compressed) are parsed in a worker process: json.loads holds the
# interpreter lock for the whole parse (3.5 s for 57 MB), which a thread would take from the event loop.
JSON_IN_PROCESS_BYTES = 256 << 10
PARSER_TASKS_PER_PROCESS = 64  # a worker is replaced after this many bodies (Python keeps the lists' memory)

# Triton's ``platform`` names (model metadata) for each runner backend; another backend is named as it is.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "aoti": "torch_aoti", "torch": "pytorch"}


@dataclass
class ServeSettings:
    """What ``acmix-deploy serve`` takes; every bound on what a client may cost is here, with its default."""

    name: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8  # rows merged into one batch, and the most rows one request may carry
    batch_timeout_ms: float = 2.0
    workers: int = 1
    max_body_mb: float = 64.0  # one request body, after decompression
    max_inflight_mb: float = 512.0  # request bodies held by all requests together; above it new requests get 503
    max_decodes: int = 2  # requests decompressed / parsed at once (threads off the event loop)
    max_connections: int = 256  # open connections; further ones are answered 503 and closed
    read_timeout_s: float = 10.0  # headers must be complete, and each body chunk arrive, within this
    body_timeout_s: float = 60.0  # a whole request body must arrive within this
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    graceful_timeout_s: float = 30.0  # SIGTERM: longest wait for requests in flight before the process exits
    # A graph with dynamic height and width (--dynamic-hw): the largest (height, width) a request may carry.  Memory
    # and time grow with the pixels (acmix_resnet_tiny's general session at 1280x1280: 4.4 GB, 20 s), so the
    # default is Ultralytics' default image size; raise it for larger letterboxes.
    max_imgsz: tuple[int, int] = (640, 640)
    max_url_bytes: int = 8192  # request target (path and query string); longer ones get 414

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"{{name}} must be a non-empty name without '/', got {self.name!r}", params=["name"])
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{{port}} must lie in 0..65535, got {self.port}", params=["port"])
        if self.max_batch < 1:
            raise ConfigError(f"{{max_batch}} must be positive, got {self.max_batch}", params=["max_batch"])
        if not 0 <= self.batch_timeout_ms <= 10_000:
            raise ConfigError(f"{{batch_timeout_ms}} must lie in 0..10000, got {self.batch_timeout_ms}",
                              params=["batch_timeout_ms"])
        if self.workers < 1:
            raise ConfigError(f"{{workers}} must be positive, got {self.workers}", params=["workers"])
        if not self.max_body_mb > 0:
            raise ConfigError(f"{{max_body_mb}} must be positive, got {self.max_body_mb}", params=["max_body_mb"])
        if not self.max_inflight_mb >= self.max_body_mb:
            raise ConfigError(f"{{max_inflight_mb}} ({self.max_inflight_mb}) must be at least {{max_body_mb}} "
                              f"({self.max_body_mb}), or no request of the largest size could be taken",
                              params=["max_inflight_mb", "max_body_mb"])
        if self.max_decodes < 1:
            raise ConfigError(f"{{max_decodes}} must be positive, got {self.max_decodes}", params=["max_decodes"])
        if self.max_connections < 2:
            raise ConfigError(f"{{max_connections}} must be at least 2 (one for probes), got {self.max_connections}",
                              params=["max_connections"])
        if (not isinstance(self.max_imgsz, (tuple, list)) or len(self.max_imgsz) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in self.max_imgsz)):
            raise ConfigError(f"{{max_imgsz}} must be two positive integers (height, width), got {self.max_imgsz!r}",
                              params=["max_imgsz"])
        if self.max_url_bytes < 256:
            raise ConfigError(f"{{max_url_bytes}} must be at least 256, got {self.max_url_bytes}",
                              params=["max_url_bytes"])
        for param in ("read_timeout_s", "body_timeout_s", "keep_alive_s", "graceful_timeout_s"):
            value = getattr(self, param)
            if not 0 < value <= 3600:
                raise ConfigError(f"{{{param}}} must lie in (0, 3600] seconds, got {value}", params=[param])

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * (1 << 20))


def _error(status: int, message: str, close: bool = False):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"} if close else None)


class _ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class _Drain:
    """Shutdown state shared by the app and the server: set on SIGTERM, before uvicorn stops listening.

    While draining, readiness answers 503 (load balancers stop sending), new
    inference requests get 503, bodies still being uploaded are abandoned,
    and the listener stays open until the requests in flight are answered
    (at most ``graceful_timeout_s``), so that the 503 can be seen.
    """

    def __init__(self):
        self.draining = False
        self.since: float | None = None
        self.event: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def begin(self) -> None:
        if self.draining:
            return
        self.draining = True
        self.since = time.monotonic()
        if self.loop is not None and self.event is not None:
            self.loop.call_soon_threadsafe(self.event.set)


class _Budget:
    """Bytes of request bodies held at once, across requests (event-loop only, so no lock)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._freed: asyncio.Event | None = None

    def _busy(self, n: int) -> ProtocolError:
        return ProtocolError(f"server is busy: {self.used} bytes of request bodies are held, taking {n} more "
                             f"would pass --max-inflight-mb ({self.limit} bytes); retry later", 503)

    async def take_within(self, n: int, wait_s: float) -> None:
        """Hold ``n`` more bytes, waiting up to ``wait_s`` for other requests to give room back (back-pressure on an
        upload); 503 when there is still none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while self.used + n > self.limit:
            left = deadline - loop.time()
            if left <= 0:
                raise self._busy(n)
            if self._freed is None:
                self._freed = asyncio.Event()
            freed = self._freed
            try:
                await asyncio.wait_for(freed.wait(), left)
            except asyncio.TimeoutError:
                raise self._busy(n) from None
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        if n and self._freed is not None:
            self._freed.set()
            self._freed = None


async def _read_body(request, settings: ServeSettings, budget: _Budget, drain: _Drain) -> tuple[bytes, int]:
    """The raw body and the budget bytes it holds; refused as soon as it is known to be too big or too slow.

    Reads the ASGI messages itself (not ``request.stream()``) so that each
    wait has a deadline: ``read_timeout_s`` per chunk, ``body_timeout_s`` for
    the whole body (a slow upload gets 408 and its connection is closed),
    and so that a disconnect or a shutdown ends the wait at once.
    """
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    held = 0
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ProtocolError("Content-Length is not an integer") from None
        if n > limit:
            raise ProtocolError(f"request body of {n} bytes exceeds the limit of {limit} bytes (--max-body-mb)", 413)
    # The budget is charged with the bytes that have arrived, never with a declared length: a client that
    # declares 64 MiB and sends nothing (and reconnects after each 408) holds nothing.  When a chunk does not
    # fit, the upload waits up to --read-timeout-s for others to give room back (it stops being read: TCP
    # back-pressure), and only then gets 503; so concurrent large uploads over the budget mostly finish in turn
    # instead of all failing halfway.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.body_timeout_s
    chunks, size = [], 0
    try:
        while True:
            wait = min(settings.read_timeout_s, deadline - loop.time())
            receive = asyncio.ensure_future(request.receive())
            stop = asyncio.ensure_future(drain.event.wait())
            done, _ = await asyncio.wait({receive, stop}, timeout=max(wait, 0), return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if receive not in done:
                receive.cancel()
                if drain.draining:
                    raise ProtocolError("server is shutting down; the request body was not read", 503)
                what = ("the whole body" if deadline - loop.time() <= 0 else "the next part of the body")
                limit_s = settings.body_timeout_s if what == "the whole body" else settings.read_timeout_s
                raise ProtocolError(f"{what} did not arrive within {limit_s:g} s "
                                    f"({'--body-timeout-s' if what == 'the whole body' else '--read-timeout-s'})", 408)
            message = receive.result()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ProtocolError(f"request body exceeds the limit of {limit} bytes (--max-body-mb)", 413)
            if size > held:
                await budget.take_within(size - held, settings.read_timeout_s)
                held = size
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), held
    except BaseException:
        budget.give(held)
        raise


class _HttpGuard:
    """ASGI middleware: a request target longer than ``max_url_bytes`` gets 414; a response that leaves its
    request's body unread (an early 404, a body on a GET) closes the connection.

    Without the second rule a client could keep a connection (and a ``--max-connections`` slot) forever by
    streaming a never-ending body to a route that answers without reading it: uvicorn keeps the connection
    to read past the body, and the body deadlines apply only where the body is read.
    """

    def __init__(self, app, max_url_bytes: int):
        self.app, self.max_url_bytes = app, max_url_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        query = scope.get("query_string") or b""
        target = len(scope.get("raw_path") or scope.get("path", "").encode()) + (len(query) + 1 if query else 0)
        if target > self.max_url_bytes:
            body = json.dumps({"error": f"request target of {target} bytes exceeds {self.max_url_bytes} bytes "
                                        "(--max-url-bytes)"}).encode()
            await send({"type": "http.response.start", "status": 414,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"0").strip()
        read = {"done": b"transfer-encoding" not in headers and (not length.isdigit() or int(length) == 0)}

        async def tracked_receive():
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                read["done"] = True
            return message

        async def closing_send(message):
            if message["type"] == "http.response.start" and not read["done"]:
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*kept, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, tracked_receive, closing_send)


async def _wait_disconnect(request) -> None:
    """Returns when the client has gone (the body was read in full; uvicorn then only reports a disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(runner, settings: ServeSettings):
    """A FastAPI app serving ``model``, a runner (:class:`acmix_deploy.runtime.Runner`) whose input has a
    fixed sample shape: its specs give the metadata, its batch range bounds requests and merged batches."""
    fastapi = require("fastapi", "serve")
    from fastapi import Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings.validate()
    metrics = ServerMetrics(settings.name, settings.max_batch)
    inp = runner.input_spec
    rule = runner.spatial_rule
    if not inp.is_static and not (rule is not None and len(inp.shape) == 4 and isinstance(inp.shape[1], int)):
        raise ConfigError(f"{runner.name}: input {inp.name} has a dynamic sample shape {list(inp.shape)}; serving "
                          "needs a fixed input size, or a graph exported with {dynamic_hw} (which records the sizes "
                          "it takes)", params=["dynamic_hw"])
    # -1: an axis any size may take (the height and width of a --dynamic-hw graph, checked against its rule).
    input_shape = tuple(d if isinstance(d, int) else -1 for d in inp.item_shape)
    specs = list(runner.output_specs)
    out_names = [spec.name for spec in specs]
    out_dtypes = [spec.dtype for spec in specs]
    out_datatypes = [v2_datatype(spec.dtype) for spec in specs]  # a dtype the protocol cannot carry fails here
    min_batch, max_batch = runner.batch_range
    platform = PLATFORMS.get(runner.backend, runner.backend)

    def infer(x: np.ndarray) -> list[np.ndarray]:
        """Every output of the model, each as its declared datatype (split by rows in the batcher)."""
        ys = runner.infer_outputs(x)
        if len(ys) != len(specs):
            raise RuntimeError(f"the model returned {len(ys)} outputs, its metadata lists {len(specs)}")
        return [np.asarray(y, dtype=dt) for y, dt in zip(ys, out_dtypes)]

    # Merged batches must stay inside what the model accepts: a fixed batch (static ONNX, a one-size
    # engine) takes no merging, a bounded range (a TensorRT profile) caps it.
    merge_limit = settings.max_batch
    if max_batch is not None:
        merge_limit = 1 if min_batch == max_batch else min(merge_limit, max_batch)
    # Rows one request may carry: the model's own limit where it has one (as Triton's max_batch_size),
    # otherwise --max-batch, so that no request costs more than the largest batch.
    max_rows = max_batch if max_batch is not None else settings.max_batch
    rows_source = "--max-batch" if max_batch is None else (
        f"the model takes exactly {max_batch}" if min_batch == max_batch
        else f"the model accepts {min_batch}..{max_batch}")
    dynamic_hw = any(d < 0 for d in input_shape)
    max_hw = tuple(settings.max_imgsz) if dynamic_hw else None
    if max_hw is not None and rule is not None and not all(top >= lo for top, lo in zip(max_hw, rule.minimum)):
        raise ConfigError(f"{{max_imgsz}} {max_hw[0]}x{max_hw[1]} is below the smallest size the model takes "
                          f"({rule.describe()})", params=["max_imgsz"])
    max_json = json_limit(max_rows, input_shape, settings.max_body_bytes, max_hw)
    # a graph with dynamic height and width: one batch (a request: checked by the parser; or requests merged by
    # the batcher) holds at most one --max-imgsz image's worth of pixels, several smaller images or one of the largest
    max_elements = input_shape[0] * max_hw[0] * max_hw[1] if max_hw is not None else None
    parse_options = dict(input_name=inp.name, input_shape=input_shape, output_name=out_names, max_rows=max_rows,
                         max_json_bytes=max_json, rows_limit_source=rows_source, max_hw=max_hw)
    batcher = DynamicBatcher(infer, max_batch=merge_limit, timeout_s=settings.batch_timeout_ms / 1000,
                             workers=settings.workers, metrics=metrics, max_elements=max_elements)
    decoder = concurrent.futures.ThreadPoolExecutor(max_workers=settings.max_decodes, thread_name_prefix="acmix-decode")
    parsers: dict = {"pool": None}  # worker processes for large JSON bodies, started with the app

    def start_parsers() -> concurrent.futures.ProcessPoolExecutor:
        # spawn: a fresh interpreter that imports the protocol module and NumPy only (no fork of a process
        # whose runtime threads are running).  Like every spawn user, a script that calls serve() must keep
        # its top-level code under if __name__ == "__main__": (the workers import the main module).
        recycle = {"max_tasks_per_child": PARSER_TASKS_PER_PROCESS} if sys.version_info >= (3, 11) else {}
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=settings.max_decodes, mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with_parent, initargs=(os.getpid(),), **recycle)
        parsers["pool"] = pool
        return pool
    budget = _Budget(settings.max_inflight_bytes)
    drain = _Drain()
    state = {"ready": False, "decode_slots": None}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        drain.loop = asyncio.get_running_loop()
        drain.event = asyncio.Event()
        if drain.draining:
            drain.event.set()
        state["decode_slots"] = asyncio.Semaphore(settings.max_decodes)
        await batcher.start()
        # ready only once a parsing worker has started (a spawned interpreter: a fraction of a second); where
        # worker processes cannot start (no semaphores in a sandbox), large JSON bodies are parsed in threads
        try:
            pool = start_parsers()
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(pool, json_limit, 1, (1,), 1), 60)
        except Exception as exc:  # OSError, PermissionError, BrokenProcessPool, a timeout: the threads stay
            if parsers["pool"] is not None:
                parsers["pool"].shutdown(wait=False, cancel_futures=True)
            parsers.update(pool=None, disabled=True)
            warnings.warn(f"JSON parsing worker processes could not start ({type(exc).__name__}: {exc}); large JSON "
                          "bodies are parsed in threads, which holds the event loop while they are parsed",
                          RuntimeWarning, stacklevel=1)
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.stop()
            decoder.shutdown(wait=True)
            if parsers["pool"] is not None:
                parsers["pool"].shutdown(wait=False, cancel_futures=True)

    app = fastapi.FastAPI(title="acmix-deploy", version=__version__, lifespan=lifespan, docs_url=None,
                          redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.add_middleware(_HttpGuard, max_url_bytes=settings.max_url_bytes)
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.model = runner
    app.state.settings = settings
    app.state.drain = drain
    app.state.max_rows = max_rows

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

    def tensor_meta(name: str, datatype: str, item_shape) -> dict:
        return {"name": name, "datatype": datatype,
                "shape": [-1, *(d if isinstance(d, int) else -1 for d in item_shape)]}

    def is_ready() -> bool:
        return state["ready"] and not drain.draining

    @app.api_route("/v2/health/live", methods=["GET", "HEAD"])
    async def live():
        return Response(status_code=200)

    @app.api_route("/v2/health/ready", methods=["GET", "HEAD"])
    async def ready():
        return Response(status_code=200 if is_ready() else 503)

    @app.get("/v2")
    async def server_metadata():
        return {"name": "acmix-deploy", "version": __version__, "extensions": ["binary_tensor_data"]}

    async def model_metadata(name: str, version: str | None = None):
        try:
            check_model(name, version)
        except ProtocolError as exc:
            return _error(exc.status, str(exc))
        return {"name": settings.name, "versions": [MODEL_VERSION], "platform": platform,
                "inputs": [tensor_meta(inp.name, v2_datatype(inp.dtype), input_shape)],
                "outputs": [tensor_meta(s.name, d, s.item_shape) for s, d in zip(specs, out_datatypes)]}

    async def model_ready(name: str, version: str | None = None):
        try:
            check_model(name, version)
        except ProtocolError as exc:
            return _error(exc.status, str(exc))
        return Response(status_code=200 if is_ready() else 503)

    async def parse(raw: bytes, encoding: str | None, header_length: str | None):
        """Inflating and parsing, off the event loop: binary tensors (a small JSON header, then the bytes) in a
        thread; a large or compressed JSON body in a worker process, whose parse does not hold this process's
        interpreter lock (a thread's would, and the loop would stop answering meanwhile)."""
        loop = asyncio.get_running_loop()
        # the JSON part's size decides (a body of JSON only may also name its whole length in the header)
        declared = None if header_length is None else header_length_value(header_length)  # None: refused later
        json_bytes = len(raw) if declared is None else declared
        in_process = (min(json_bytes, len(raw)) > JSON_IN_PROCESS_BYTES or bool(encoding)) and not parsers.get("disabled")
        args = (raw, encoding, header_length, settings.max_body_bytes, parse_options)
        if in_process:
            try:
                pool = parsers["pool"] or start_parsers()
            except Exception:  # processes cannot start any more (limits reached): a thread parses this body
                in_process = False
        if not in_process:
            return await loop.run_in_executor(decoder, decode_and_parse, *args)
        try:
            return await asyncio.wait_for(loop.run_in_executor(pool, decode_and_parse, *args),
                                          settings.body_timeout_s)
        except (BrokenProcessPool, asyncio.TimeoutError) as exc:
            # a worker died (killed for memory) or the pool stopped answering: a fresh pool for the next requests
            if parsers["pool"] is pool:
                parsers["pool"] = None
            pool.shutdown(wait=False, cancel_futures=True)
            what = "stopped" if isinstance(exc, BrokenProcessPool) else f"took more than {settings.body_timeout_s:g} s"
            raise ProtocolError(f"the request parser {what} while parsing this body; retry", 503) from None

    async def model_infer(request: Request, name: str, version: str | None = None):
        t0 = time.perf_counter()
        metrics.inflight += 1
        status = 500
        held = 0
        try:
            check_model(name, version)
            if not is_ready():
                raise ProtocolError("server is shutting down", 503)
            raw, held = await _read_body(request, settings, budget, drain)
            async with state["decode_slots"]:
                req = await parse(raw, request.headers.get("content-encoding"), request.headers.get(HEADER_LENGTH))
            del raw
            rows = req.tensor.shape[0]
            if rule is not None and not rule.valid(*req.tensor.shape[2:]):
                try:
                    rule.check(*req.tensor.shape[2:], what=f"model {settings.name}")
                except InputShapeError as exc:
                    raise ProtocolError(str(exc)) from None
            if max_batch is not None and not min_batch <= rows <= max_batch:
                span = f"exactly {max_batch}" if min_batch == max_batch else f"{min_batch}..{max_batch}"
                raise ProtocolError(f"batch of {rows} is outside what the model accepts ({span})")
            if not is_ready():
                raise ProtocolError("server is shutting down", 503)
            work = asyncio.ensure_future(batcher.submit(req.tensor))
            gone = asyncio.ensure_future(_wait_disconnect(request))
            try:
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not work.done():  # the client left: its rows are dropped from the queue, not computed
                work.cancel()
                raise _ClientGone()
            try:
                out = work.result()
            except Exception as exc:  # the model failed on this batch: 500 for these requests only
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                return _error(500, f"inference failed: {first}")
            by_name = dict(zip(out_names, out))
            body, headers = encode_outputs(settings.name, MODEL_VERSION, req.id,
                                           [(name, by_name[name], binary) for name, binary in req.outputs])
            status = 200
            return Response(content=body, status_code=200, headers=headers)
        except ProtocolError as exc:
            status = exc.status
            # a body left unread (too big, too slow, shutting down) cannot be followed on the same connection
            return _error(exc.status, str(exc), close=exc.status in (408, 413, 503))
        except _ClientGone:
            status = None
            metrics.client_disconnected()
            return Response(status_code=499)  # nobody reads it; uvicorn drops it
        finally:
            budget.give(held)
            metrics.inflight -= 1
            if status is not None:
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
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"{{host}} {host!r} does not resolve: {exc.strerror}", params=["host"]) from None
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


def _guarded_protocol(settings: ServeSettings, metrics: ServerMetrics | None):
    """uvicorn's h11 protocol with a connection cap and a deadline for request headers.

    uvicorn bounds idle keep-alive time but not how long a client may take to
    send its headers (slowloris), and it accepts any number of connections.
    Here a connection past ``max_connections`` is answered 503 and closed at
    once, and one whose headers are not complete ``read_timeout_s`` after
    their first byte (or after it was opened) is closed.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    busy = (b'{"error":"too many connections (--max-connections %d); retry later"}' % settings.max_connections)
    busy_response = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n" % len(busy)) + busy

    class GuardedH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > settings.max_connections:
                if metrics is not None:
                    metrics.connection_refused()
                transport.write(busy_response)
                transport.close()
                return
            self._arm_header_timer()

        def _arm_header_timer(self):
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(settings.read_timeout_s, self._header_timeout)

        def _disarm_header_timer(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self):
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if metrics is not None:
                    metrics.header_timeout()
                self.transport.close()

        def data_received(self, data):
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # still reading a request line and headers
                self._arm_header_timer()
            else:
                self._disarm_header_timer()

        def send_400_response(self, msg: str) -> None:
            """A request h11 cannot parse (bad request line, header, Content-Length): a JSON error like every other."""
            body = json.dumps({"error": f"{msg} (malformed HTTP)"}).encode()
            try:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                                     b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
            finally:
                self.transport.close()

        def connection_lost(self, exc):
            self._disarm_header_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


class _DrainingServer:
    """Factory for a ``uvicorn.Server`` whose SIGTERM / SIGINT first drains (see :class:`_Drain`)."""

    @staticmethod
    def create(config, drain: _Drain | None, graceful_timeout_s: float, metrics: ServerMetrics | None):
        import uvicorn

        class DrainingServer(uvicorn.Server):
            def handle_exit(self, sig, frame):
                if drain is None or drain.draining:  # no app state, or a second signal: exit now
                    return super().handle_exit(sig, frame)
                self._captured_signals.append(sig)
                drain.begin()

            async def on_tick(self, counter: int) -> bool:
                if drain is not None and drain.draining and not self.should_exit:
                    inflight = metrics.inflight if metrics is not None else 0
                    if inflight <= 0 or time.monotonic() - drain.since >= graceful_timeout_s:
                        self.should_exit = True
                return await super().on_tick(counter)

        return DrainingServer(config)


def build_server(app, sock: socket.socket, log_level: str = "info", graceful_timeout_s: float | None = None):
    """A ``uvicorn.Server`` for ``app``; run it with ``server.run(sockets=[sock])``.

    On SIGTERM / SIGINT the server first drains: readiness answers 503, new
    inference requests get 503, uploads still in progress are abandoned, and
    it keeps listening until the requests in flight are answered (at most
    ``graceful_timeout_s``, default the app's ``--graceful-timeout-s``); then
    uvicorn closes the connections and the batcher finishes its running
    batches.  A second signal exits at once.
    """
    uvicorn = require("uvicorn", "serve")
    settings = getattr(getattr(app, "state", None), "settings", None) or ServeSettings(name="model")
    metrics = getattr(app.state, "metrics", None) if hasattr(app, "state") else None
    drain = getattr(app.state, "drain", None) if hasattr(app, "state") else None
    grace = settings.graceful_timeout_s if graceful_timeout_s is None else graceful_timeout_s
    host, port = sock.getsockname()[:2]
    # After draining only responses being written remain; a few seconds bound uvicorn's own wait.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                            http=_guarded_protocol(settings, metrics), timeout_keep_alive=settings.keep_alive_s,
                            timeout_graceful_shutdown=max(1.0, min(5.0, grace)),
                            limit_concurrency=None)
    return _DrainingServer.create(config, drain, grace, metrics)


def serve(model_path, settings: ServeSettings, backend: str | None = None, device: str = "cpu",
          arch: str | None = None, imgsz: int | tuple[int, int] | None = None, threads: int | None = None,
          log_level: str = "info", on_ready=None, model_def: str | None = None,
          model_args: str | dict | None = None, specialize: int = 0) -> None:
    """Load ``model_path``, bind ``settings.host:settings.port``, serve until SIGTERM / SIGINT.

    ``specialize``: ONNX Runtime sessions fixed to one input size, built in the background for sizes
    requested repeatedly (a graph exported with dynamic height and width; see :class:`OrtRunner`).
    """
    require("fastapi", "serve")
    require("uvicorn", "serve")
    require("prometheus_client", "serve")
    settings.validate()
    sock = bind_socket(settings.host, settings.port)  # fail on a taken port before loading the model
    try:
        runner = open_runner(model_path, backend=backend, device=device, arch=arch, imgsz=imgsz, threads=threads,
                             model_def=model_def, model_args=model_args, specialize=specialize, background=True)
        app = create_app(runner, settings)
        if on_ready is not None:
            on_ready(runner, sock.getsockname()[:2])
        build_server(app, sock, log_level=log_level).run(sockets=[sock])
    finally:
        sock.close()
