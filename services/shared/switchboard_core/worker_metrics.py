"""One Prometheus endpoint for a supervised service: the supervisor's ``/metrics`` is every
worker's, merged, each sample labelled ``worker="<index>"``.

Why: Prometheus (deploy/prometheus.yml) scrapes one port per service, and with
``SWITCHBOARD_WORKERS`` above 1 every worker keeps its own registry on its own port
(:mod:`switchboard_core.workers` says why: no multiprocess mode). So the service's usual port,
``SWITCHBOARD_METRICS_PORT``, is served by the supervisor (this module), and worker *i* serves
on ``SWITCHBOARD_METRICS_PORT`` + 100 (*i* + 1) (:meth:`switchboard_core.workers.Worker.
metrics_port`), still reachable there for debugging one process.

The contract of a scrape of the supervisor:

- Every worker's ``/metrics`` is fetched concurrently, each bounded by
  :data:`SCRAPE_TIMEOUT_SECONDS` and :data:`MAX_SCRAPE_BYTES`. A worker that does not answer in
  time, answers with an error, too much or something that is not the text format is left out of
  that scrape (logged, and counted in ``switchboard_worker_scrape_failures_total{worker}``): a
  scrape never waits longer than the bound, whatever a worker does.
- Families are merged by name: one ``# HELP``/``# TYPE`` (the first worker's), the samples of
  every worker together (the text format wants a family's samples contiguous), each with
  ``worker="<index>"``, types as the workers declare them. Summing by the other labels gives
  the service's figure; a gauge that describes something the workers share (the router's spool
  directory) is read with ``max by (instance)`` instead.
- Requests that arrive during a scrape share its answer, so the workers are asked once at a
  time however often the port is (any workload may reach it).
- The supervisor's own families: ``switchboard_workers`` (how many it runs),
  ``switchboard_workers_alive`` (how many run now) and the failures above. A worker family of
  the same name would be dropped (none exists).

It runs an aiohttp server on an event loop of its own in one daemon thread, so the supervisor's
main thread stays a plain poll loop; nothing here imports gRPC (a test holds it to that).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterable, Sequence

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

WORKER_LABEL = "worker"
# Each worker's answer, within a scrape (Prometheus' own scrape timeout defaults to 10 s).
SCRAPE_TIMEOUT_SECONDS = 2.0
# A worker's exposition is a few hundred kB; anything far past that is not one.
MAX_SCRAPE_BYTES = 32 * 1024 * 1024
_CHUNK_BYTES = 64 * 1024
# Starting the server (the port is bound already), and closing it and the client at stop.
START_TIMEOUT_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = 5.0


class ScrapeError(Exception):
    """A worker's ``/metrics`` answered, but not with an exposition this module takes."""


def parse(text: str) -> list[Metric]:
    """The families of one exposition in the text format; ValueError when it is not one."""
    return list(text_string_to_metric_families(text))


def merge(
    scraped: Iterable[tuple[int, Sequence[Metric]]], skip: Iterable[str] = ()
) -> list[Metric]:
    """The families of every worker ``(index, families)`` merged by name, in the order first
    seen, each sample labelled with its worker. A family whose type differs from the one
    already merged under its name is left out (logged): one family has one type."""
    skipped = frozenset(skip)
    merged: dict[str, Metric] = {}
    for index, families in scraped:
        label = str(index)
        for family in families:
            if family.name in skipped:
                continue
            into = merged.get(family.name)
            if into is None:
                into = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = into
            elif into.type != family.type:
                log.warning(
                    "worker metric family of another type left out",
                    extra={"worker": index, "family": family.name, "type": family.type},
                )
                continue
            into.samples.extend(
                sample._replace(labels={**sample.labels, WORKER_LABEL: label})
                for sample in family.samples
            )
    return list(merged.values())


class _Families:
    """A collector of fixed families (one scrape's merge), for ``generate_latest``."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(own: CollectorRegistry, families: Sequence[Metric]) -> bytes:
    """The text format of ``own`` (the supervisor's families) followed by ``families``."""
    merged = CollectorRegistry(auto_describe=False)
    merged.register(_Families(families))
    return generate_latest(own) + generate_latest(merged)


def own_family_names(own: CollectorRegistry) -> set[str]:
    """The names ``own`` renders as families (a counter's ``_created`` family included)."""
    return {family.name for family in parse(generate_latest(own).decode())}


def _client_host(bound: str) -> str:
    """Where a listener bound to ``bound`` is reached from this machine (URL form): the workers
    bind the same host as the supervisor."""
    if bound in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bound == "::":
        return "[::1]"
    return f"[{bound}]" if ":" in bound else bound


class MetricsGateway:
    """The supervisor's ``/metrics`` on ``sock`` (bound and listening: the supervisor binds it
    before it starts any worker or thread), merging the workers' on ``targets`` (worker *i*'s
    metrics port at *i*)."""

    def __init__(
        self,
        sock: socket.socket,
        targets: Sequence[int],
        *,
        timeout: float = SCRAPE_TIMEOUT_SECONDS,
        max_bytes: int = MAX_SCRAPE_BYTES,
    ) -> None:
        self._sock = sock
        self._host = _client_host(str(sock.getsockname()[0]))
        self.targets = list(targets)
        self._timeout = timeout
        self._max_bytes = max_bytes
        self.registry = CollectorRegistry()
        Gauge(
            "switchboard_workers",
            "Worker processes this supervisor runs (SWITCHBOARD_WORKERS).",
            registry=self.registry,
        ).set(len(self.targets))
        self._alive = Gauge(
            "switchboard_workers_alive",
            "Worker processes running, as the supervisor last saw them.",
            registry=self.registry,
        )
        self._failures = Counter(
            "switchboard_worker_scrape_failures_total",
            "Scrapes of the supervisor's /metrics that left a worker out: its /metrics did not"
            " answer within the bound (2 s), failed, or was not the text format; by worker.",
            [WORKER_LABEL],
            registry=self.registry,
        )
        for index in range(len(self.targets)):
            self._failures.labels(str(index))
        self._own_names = own_family_names(self.registry)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._pending: asyncio.Future[bytes] | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def set_alive(self, count: int) -> None:
        self._alive.set(count)

    def start(self) -> None:
        """Serve in a thread of its own (bounded wait for the server to be up)."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="metrics-gateway", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(START_TIMEOUT_SECONDS)
        except BaseException:
            self.stop()
            raise

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout), auto_decompress=False
        )
        await web.SockSite(runner, self._sock).start()

    def stop(self) -> None:
        """Stop serving, close the socket and end the thread (bounded); safe to call twice."""
        loop, self._loop = self._loop, None
        if loop is not None:
            try:
                closing = asyncio.run_coroutine_threadsafe(self._close(), loop)
                closing.result(STOP_TIMEOUT_SECONDS)
            except Exception as error:  # stopping goes on: the process is exiting
                log.warning("metrics gateway did not close cleanly", extra={"error": repr(error)})
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(STOP_TIMEOUT_SECONDS)
                if not self._thread.is_alive():
                    loop.close()
        self._sock.close()

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def scrape(self) -> bytes:
        """One merged exposition: every worker fetched concurrently, each within the bound."""
        scraped = await asyncio.gather(
            *(self._scrape(index, port) for index, port in enumerate(self.targets))
        )
        answered = [(index, fams) for index, fams in enumerate(scraped) if fams is not None]
        return render(self.registry, merge(answered, skip=self._own_names))

    async def _handle(self, _request: web.Request) -> web.Response:
        """Requests that arrive while a scrape is under way share its answer: however often
        the port is asked (any workload may reach it), each worker is asked once at a time."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self.scrape())
        body = await asyncio.shield(self._pending)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def _scrape(self, index: int, port: int) -> list[Metric] | None:
        try:
            async with asyncio.timeout(self._timeout):
                text = await self._fetch(port)
            return parse(text)
        except (TimeoutError, aiohttp.ClientError, ScrapeError, ValueError) as error:
            self._failures.labels(str(index)).inc()
            log.warning(
                "worker metrics left out of the scrape",
                extra={"worker": index, "port": port, "error": repr(error)},
            )
            return None

    async def _fetch(self, port: int) -> str:
        assert self._session is not None, "fetch before start"
        url = f"http://{self._host}:{port}/metrics"
        async with self._session.get(url, headers={"Accept-Encoding": "identity"}) as response:
            if response.status != 200:
                raise ScrapeError(f"status {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                body += chunk
                if len(body) > self._max_bytes:
                    raise ScrapeError(f"more than {self._max_bytes} bytes")
        try:
            return body.decode()
        except UnicodeDecodeError:
            raise ScrapeError("not UTF-8") from None
