"""The dashboard served by uvicorn on a thread of its own, bound to 127.0.0.1 unless told otherwise.

The experiment keeps the main thread (it reads the user node and fires faults); the server only reads the
feed.  Port 0 picks a free port (tests); ``url`` says which one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn

from dashboard.app import make_app
from dashboard.feed import Feed
from payload.errors import JarvisError

DEFAULT_PORT = 8050


class DashboardError(JarvisError):
    """The dashboard could not start (the port is taken, say)."""


class Dashboard:
    """A feed and the server showing it; ``run_dir`` is set once the run directory exists (for its report)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self.feed = Feed()
        self.run_dir: Path | None = None
        config = uvicorn.Config(make_app(self.feed, lambda: self.run_dir), host=host, port=port,
                                log_level="warning", timeout_graceful_shutdown=1, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="dashboard")
        self.host = host
        self.port = port

    def _serve(self) -> None:
        try:
            self._server.run()
        except SystemExit:  # uvicorn's way of saying it could not bind; start() reports it
            pass

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self, timeout_s: float = 10.0) -> "Dashboard":
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DashboardError(f"the dashboard could not listen on {self.host}:{self.port} "
                                     "(is the port taken? choose another with --port)")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        print(f"[dashboard] live at {self.url}", flush=True)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
