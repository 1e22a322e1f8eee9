"""A TCP fault proxy for tests: put it on a link between two processes and break the link.

Toxiproxy cannot be installed here, so this is the small part of it the fault tests need. A
:class:`FaultProxy` listens on 127.0.0.1 and forwards every connection to ``target``. Its
:attr:`~FaultProxy.mode` can change at any time, from any thread:

- ``pass``: forward as is;
- ``latency``: hold every piece of data ``latency`` seconds before forwarding it;
- ``bandwidth``: forward at most ``bytes_per_second`` in each direction of each connection;
- ``reset``: reset every open connection (TCP RST), and every new one as it arrives;
- ``blackhole``: a silent partition: open connections stop forwarding (nothing is read, so
  the sender's window fills), new connections are accepted and never answered; nothing is
  closed, so only a timeout or a keepalive can notice;
- ``refuse``: stop listening (new connections are refused) and reset the open ones.

Back to ``pass``, it listens again (on the same port) and forwards new connections; the
connections a blackhole held stay stalled, as half-open connections do after a partition.

The proxy runs its own event loop in a thread, so a test's blocking calls or its own loop do
not slow the link, and a test can use it from sync or async code alike::

    with FaultProxy(("127.0.0.1", redis_port)) as proxy:
        ...  # point the service at proxy.address
        proxy.set("blackhole")
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["pass", "latency", "bandwidth", "reset", "blackhole", "refuse"]
MODES: tuple[Mode, ...] = ("pass", "latency", "bandwidth", "reset", "blackhole", "refuse")
_READ = 64 * 1024


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's side and the target's side."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    stalled: bool = False  # a blackhole caught it: it never forwards again
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        _reset(self.client)
        _reset(self.upstream)
        self.closed.set()


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, not a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Forwards 127.0.0.1:``port`` (free by default) to ``target``; see the module doc."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.mode: Mode = "pass"
        self.latency = 0.0
        self.bytes_per_second = 0
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self.connections = 0  # accepted so far

    # -- control (any thread) -------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def set(self, mode: Mode, *, latency: float = 0.0, bytes_per_second: int = 0) -> None:
        """Switch to ``mode`` (with its ``latency`` or ``bytes_per_second``)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self._call(self._switch(mode, latency, bytes_per_second))

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    # -- the proxy's loop ------------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _shutdown(self) -> None:
        await self._unlisten()
        for link in list(self._links):
            link.reset()
        self._links.clear()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _switch(self, mode: Mode, latency: float, bytes_per_second: int) -> None:
        self.mode, self.latency, self.bytes_per_second = mode, latency, bytes_per_second
        if mode in ("reset", "refuse"):
            for link in list(self._links):
                link.reset()
            self._links.clear()
        if mode == "blackhole":
            for link in self._links:
                link.stalled = True
        if mode == "refuse":
            await self._unlisten()
        else:
            await self._listen()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio's server reports a handler task that ends cancelled as an error: the proxy
        # stopping cancels them, so they end quietly instead.
        with contextlib.suppress(asyncio.CancelledError):
            await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        link = _Link(writer)
        if self.mode in ("reset", "refuse"):
            _reset(writer)
            return
        self._links.add(link)
        if self.mode == "blackhole":
            link.stalled = True
            await self._hold(link)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._links.discard(link)
            writer.transport.abort()
            return
        link.upstream = up_writer
        try:
            await asyncio.gather(
                self._pipe(link, reader, up_writer), self._pipe(link, up_reader, writer)
            )
        finally:
            self._links.discard(link)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _hold(self, link: _Link) -> None:
        """A connection a blackhole accepted: nothing is ever read or written."""
        await link.closed.wait()

    async def _pipe(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                while link.stalled:  # a blackhole: stop reading, let the window fill
                    if link not in self._links:
                        return
                    await asyncio.sleep(0.1)
                data = await reader.read(_READ)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                await self._shape(link, len(data))
                if link.stalled or link not in self._links:
                    continue  # caught by a blackhole or a reset while it waited: dropped
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            link.reset()

    async def _shape(self, link: _Link, size: int) -> None:
        if self.mode == "latency" and self.latency > 0:
            await asyncio.sleep(self.latency)
        elif self.mode == "bandwidth" and self.bytes_per_second > 0:
            await asyncio.sleep(size / self.bytes_per_second)


def wait_port_closed(port: int, timeout: float = 5.0) -> None:
    """Wait until nothing accepts on ``port`` (a proxy switched to ``refuse``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} still accepts")
