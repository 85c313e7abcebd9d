"""An in-process server on a background event-loop thread, for tests, notebooks and benchmarks.

    with ServerThread(ServeConfig(model=path, port=0)) as server:
        client = PolicyClient(f"127.0.0.1:{server.port}")

Production runs one server per process (`omad serve`); this is the same server object.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from omad.serve.config import ServeConfig
from omad.serve.lifecycle import PolicyServer


class ServerThread:
    def __init__(
        self,
        config: ServeConfig,
        token: str | None = None,
        tls: tuple[bytes, bytes, bytes | None] | None = None,
        load: bool = True,
    ):
        """load=False only listens (health NOT_SERVING); call `load()` to finish starting."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="omad-server-loop", daemon=True)
        self._thread.start()
        self.server = PolicyServer(config, token=token, tls=tls)
        try:
            self.run(self.server.listen())
            if load:
                self.load()
        except BaseException:
            self.close()
            raise
        self.port: int = self.server.port
        self.addr = f"{config.host}:{self.port}"

    def load(self) -> None:
        self.run(self.server.load_model())

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout_s: float = 60.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def close(self, grace_s: float = 0.0) -> None:
        if self._thread.is_alive():
            self.run(self.server.stop(grace_s))
            self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
