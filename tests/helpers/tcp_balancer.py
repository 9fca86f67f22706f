"""A loopback TCP load balancer that behaves like kube-proxy for tests.

Why it exists: the scale-out tests must reproduce what a Kubernetes Service does to the classic
two-connection protocol — every *new TCP connection* goes to a backend picked at random, so a
client's PUSH and SUB connections usually land on different replicas. kube-proxy is not
available here, so this is the smallest faithful stand-in: one listening port per service port,
random backend per connection, byte-for-byte piping in which half-closes and resets pass through
(as through kube-proxy's NAT), and backends that can be removed (a pod dying) or added
(scale-up) while traffic flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Sequence


class TcpBalancer:
    """Balance ``127.0.0.1:<listen port>`` over backend ports, per service port name.

    ``services`` maps a name (``"zmq"``) to the list of backend ports on 127.0.0.1. The balancer
    listens on a free port per name (see :attr:`ports`). Runs its own event loop in a daemon
    thread; :meth:`close` stops it and every piped connection.
    """

    def __init__(self, services: dict[str, Sequence[int]], *, seed: int | None = None) -> None:
        self._backends: dict[str, list[int]] = {name: list(ports) for name, ports in services.items()}
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.ports: dict[str, int] = {}
        self.connections: dict[str, list[int]] = {name: [] for name in services}
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-balancer", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    async def _start(self) -> None:
        for name in self._backends:
            server = await asyncio.start_server(
                lambda r, w, n=name: self._handle(n, r, w), host="127.0.0.1", port=0
            )
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]

    def set_backends(self, name: str, ports: Sequence[int]) -> None:
        """Replace the backends of one service port (future connections only, like kube-proxy)."""
        self._loop.call_soon_threadsafe(self._backends.__setitem__, name, list(ports))

    def remove_backend(self, port: int) -> None:
        """Forget a backend port everywhere (its pod is gone)."""

        def _remove() -> None:
            for ports in self._backends.values():
                if port in ports:
                    ports.remove(port)

        self._loop.call_soon_threadsafe(_remove)

    async def _handle(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        upstream_writer = None
        clean = True
        try:
            backends = self._backends.get(name) or []
            if not backends:
                return
            port = self._rng.choice(backends)
            self.connections[name].append(port)
            try:
                up_reader, upstream_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), timeout=5
                )
            except (OSError, TimeoutError):
                return  # like a dead endpoint: the client sees the connection close and retries
            clean = await _splice(reader, writer, up_reader, upstream_writer)
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    with contextlib.suppress(Exception):
                        if clean:
                            w.close()
                        else:
                            w.transport.abort()  # a reset passes through, as it does through NAT
            self._tasks.discard(task)  # type: ignore[arg-type]

    def close(self) -> None:
        async def _stop() -> None:
            for server in self._servers:
                server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> TcpBalancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _splice(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> bool:
    """Pipe both directions until both ended; False if either side was reset.

    Half-closes pass through (end-of-stream on one side becomes ``write_eof`` on the other), as
    they do through kube-proxy's NAT: a server that half-closes a connection still receives what
    the client sends until the client closes too.
    """
    pending = {
        asyncio.ensure_future(_pipe(client_reader, up_writer)),
        asyncio.ensure_future(_pipe(up_reader, client_writer)),
    }
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if not all(t.result() for t in done):
                return False
        return True
    finally:
        for t in pending:
            t.cancel()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Copy until end-of-stream (then half-close ``writer``: True) or a reset (False)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        return False
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
    return True
