"""``serve``: a model over HTTP with the KServe v2 / Triton inference protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import AcmixDeployError
from ._common import _fail, _imgsz, _safe, console


def serve(
    model: Path = typer.Argument(..., help="Model: .onnx, .pt2, .engine/.plan, or a checkpoint."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the URLs (default: the file's stem)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port (0: a free one)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="onnxruntime, openvino, aoti, tensorrt, torch (default: by suffix)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    max_batch: int = typer.Option(8, "--max-batch", help="Most rows merged into one batch (1: no batching)."),
    batch_timeout_ms: float = typer.Option(2.0, "--batch-timeout-ms", help="Longest wait to fill a batch."),
    workers: int = typer.Option(1, "--workers", help="Batches run at once (inference threads)."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="Largest request body; larger ones get 413."),
    max_inflight_mb: float = typer.Option(512.0, "--max-inflight-mb", help="Bytes of request bodies received and held at once; an upload over it waits --read-timeout-s, then gets 503."),
    max_decodes: int = typer.Option(2, "--max-decodes", help="Requests decompressed / parsed at once (threads; worker processes for large JSON bodies)."),
    max_connections: int = typer.Option(256, "--max-connections", help="Open connections; further ones get 503."),
    read_timeout_s: float = typer.Option(10.0, "--read-timeout-s", help="Deadline for headers and each body chunk."),
    body_timeout_s: float = typer.Option(60.0, "--body-timeout-s", help="Deadline for a whole request body (408)."),
    keep_alive_s: float = typer.Option(5.0, "--keep-alive-s", help="Idle keep-alive connections closed after this."),
    graceful_timeout_s: float = typer.Option(30.0, "--graceful-timeout-s", help="SIGTERM: longest wait for requests in flight."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime intra-op threads per batch."),
    max_imgsz: Optional[list[int]] = typer.Option(None, "--max-imgsz", help="A --dynamic-hw graph: the largest image a request may carry, N or H W (default 640), and the pixels of one batch (one such image, or several smaller); larger get 400. Memory and time grow with the pixels."),
    max_url_bytes: int = typer.Option(8192, "--max-url-bytes", help="Longest request target (path and query); longer ones get 414."),
    specialize: int = typer.Option(4, "--specialize", min=0, help="A --dynamic-hw ONNX graph (onnxruntime, openvino): up to this many sessions fixed to one size each, built in the background once a size has 3 requests; they run at the speed of a graph exported at that size (each holds the weights and an activation arena for its size; 0: off)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture (bare state dicts, .pt2)."),
    imgsz: Optional[list[int]] = typer.Option(None, "--imgsz", help="Input size of checkpoints and .pt2 packages: N or H W."),
    model_def: Optional[str] = typer.Option(None, "--model-def", help="Your own model: FILE.py:FACTORY or package.module:FACTORY (a moved definition, or a bare state dict)."),
    model_args: Optional[str] = typer.Option(None, "--model-args", help="Keyword arguments of the factory, as a JSON object."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve a model over HTTP with the KServe v2 / Triton inference protocol (dynamic batching, /metrics)."""
    from ..serving.app import ServeSettings, serve as run_server

    try:
        top = _imgsz(max_imgsz, "--max-imgsz")
    except AcmixDeployError as exc:
        _fail(exc)
    settings = ServeSettings(name=name or model.name.split(".")[0], host=host, port=port, max_batch=max_batch,
                             batch_timeout_ms=batch_timeout_ms, workers=workers, max_body_mb=max_body_mb,
                             max_inflight_mb=max_inflight_mb, max_decodes=max_decodes, max_connections=max_connections,
                             read_timeout_s=read_timeout_s, body_timeout_s=body_timeout_s, keep_alive_s=keep_alive_s,
                             graceful_timeout_s=graceful_timeout_s, max_url_bytes=max_url_bytes,
                             **({} if top is None else {"max_imgsz": (top, top) if isinstance(top, int) else tuple(top)}))

    def announce(runner, address) -> None:
        inp = runner.input_spec
        console.print(f"serving {_safe(model.name)} as {_safe(repr(settings.name))} ({runner.name}; input "
                      f"{inp.name} -1x{'x'.join(map(str, inp.item_shape))}) on "
                      f"http://{address[0]}:{address[1]}/v2/models/{settings.name}", highlight=False, soft_wrap=True)

    try:
        if not model.exists():
            raise AcmixDeployError(f"model {model} does not exist")
        run_server(model, settings, backend=backend, device=device, arch=arch, imgsz=_imgsz(imgsz), threads=threads,
                   log_level=log_level, on_ready=announce, model_def=model_def, model_args=model_args,
                   specialize=specialize)
    except AcmixDeployError as exc:
        _fail(exc)
