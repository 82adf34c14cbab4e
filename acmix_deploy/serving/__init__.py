"""Serving: an HTTP server speaking the KServe v2 / Triton inference protocol, with dynamic batching.

FastAPI and uvicorn come with the ``serve`` extra and are imported only when a
server is built; the protocol, batching and metrics code needs NumPy only.
"""

from __future__ import annotations

from .app import MODEL_VERSION, ServeSettings, bind_socket, build_server, create_app, serve
from .batching import DynamicBatcher
from .client import ServingClient
from .metrics import ServerMetrics
from .protocol import ProtocolError, encode_response, parse_infer_request

__all__ = ["DynamicBatcher", "MODEL_VERSION", "ProtocolError", "ServeSettings", "ServerMetrics", "ServingClient",
           "bind_socket", "build_server", "create_app", "encode_response", "parse_infer_request", "serve"]
