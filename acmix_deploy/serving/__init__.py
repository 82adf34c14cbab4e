"""Serving: an HTTP server speaking the KServe v2 / Triton inference protocol, with dynamic batching.

FastAPI and uvicorn come with the ``serve`` extra and are imported only when a
server is built; the protocol, batching and metrics code needs NumPy only.
The names below are imported on first use, so that a process that parses
requests only (the server's JSON parsing workers) imports ``protocol`` and
NumPy, not torch and the runtimes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "MODEL_VERSION": "app", "ServeSettings": "app", "bind_socket": "app", "build_server": "app",
    "create_app": "app", "serve": "app", "DynamicBatcher": "batching", "ServingClient": "client",
    "ServerMetrics": "metrics", "ProtocolError": "protocol", "encode_response": "protocol",
    "parse_infer_request": "protocol",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from .app import MODEL_VERSION, ServeSettings, bind_socket, build_server, create_app, serve
    from .batching import DynamicBatcher
    from .client import ServingClient
    from .metrics import ServerMetrics
    from .protocol import ProtocolError, encode_response, parse_infer_request


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
