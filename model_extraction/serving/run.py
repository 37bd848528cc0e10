"""Run a serving app with uvicorn: in the foreground, or in a background thread (tests)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import uvicorn

__all__ = ["ServerThread", "serve"]


SWITCH_INTERVAL = 0.0005
"""Seconds a worker thread may hold the interpreter while the event loop waits for it (Python's
default is 0.005): a served process switches ten times as often, so that a thread evaluating or
serialising a large request delays the loop's other requests by at most about this much."""


def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Serve ``app`` until interrupted (Ctrl-C), in this process, which it takes over (the
    interpreter's thread switch interval becomes :data:`SWITCH_INTERVAL`)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


class ServerThread:
    """Serve an app from a background thread, on a free port chosen by the OS.

    Use as a context manager::

        with ServerThread(create_app(victim)) as server:
            oracle = RemoteOracle(server.url, model="victim")

    ``url`` is ``http://host:port`` once started; leaving the block stops the server.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", **uvicorn_options: Any) -> None:
        self.app, self.host, self.port = app, host, port
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                     access_log=False, **uvicorn_options)
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerThread:
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.host}:{self.port} did not start")
            time.sleep(0.005)
        # With port 0 the OS chose a free port: read it back from the listening socket.
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self.server.should_exit = True
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
