"""An in-process server for the tests: uvicorn in a background thread (skips without the serve extra)."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("fastapi", reason="serving needs fastapi (pip install 'acmix-deploy[serve]')")
pytest.importorskip("uvicorn", reason="serving needs uvicorn (pip install 'acmix-deploy[serve]')")

from acmix_deploy.serving import ServeSettings, ServingClient, bind_socket, build_server, create_app  # noqa: E402


class ServerThread:
    """uvicorn in a background thread (no signal handlers there), on a free port."""

    def __init__(self, model, settings: ServeSettings):
        self.model = model
        self.app = create_app(model, settings)
        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = build_server(self.app, self.sock, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        ServingClient(self.url).wait_ready(timeout_s=20, poll_s=0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
