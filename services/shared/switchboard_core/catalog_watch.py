"""A service's copy of the catalog, kept fresh by ``WatchCatalog``: the loop that the router's
catalog cache and metering's price view share.

:class:`CatalogWatch` is a background task holding one ``WatchCatalog`` stream open. Each
snapshot the catalog sends goes to :meth:`CatalogWatch.apply`, which a subclass defines (and
which must not block: it runs on the event loop, between two reads of the stream). When the
stream breaks (the catalog restarting, the network) the task resubscribes after a capped,
jittered backoff (0.2 s, doubling to 2 s, back to 0.2 s after a snapshot) and the last
snapshot keeps serving meanwhile. The call waits for the channel to be ready
(``wait_for_ready``) rather than failing while it reconnects, so the channel's own reconnect
backoff (``switchboard_core.channels``, at most 1 s) decides how soon a link that came back
is used. Nothing here is on a request path.

The catalog sends a snapshot at once when the caller's :meth:`~CatalogWatch.known_version`
differs from its own (0 always does), then one after each change. :attr:`streaming` is True
from the first snapshot of a stream until that stream breaks, and :attr:`broken_at` says
since when it has been broken (wall clock). A watcher that needs to know how current its copy
is (metering) keeps ``known_version`` at 0: each connection then starts with the current
snapshot, so while it is streaming it has every change up to the catalog's propagation delay.
A stream that dies silently (a half-open connection: a partition) looks alive until the
channel's keepalive notices, within ``KEEPALIVE_SECONDS + KEEPALIVE_TIMEOUT_SECONDS`` (7 s;
``switchboard_core.channels``).

``switchboard_catalog_snapshot_age_seconds{watch}`` says how old the copy may be: 0 while the
stream is up (the copy then lags the catalog by its propagation delay only), else the
seconds since the stream broke (or since :meth:`~CatalogWatch.start` when no stream has yet
delivered a snapshot). ``watch`` is the task's name: ``catalog-watch`` in the router,
``catalog-price-watch`` in metering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

import grpc
from prometheus_client import Gauge

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard_core.periodic import BackgroundTask

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.2
MAX_RETRY_SECONDS = 2.0

SNAPSHOT_AGE = Gauge(
    "switchboard_catalog_snapshot_age_seconds",
    "How old this service's copy of the catalog may be: 0 while its WatchCatalog stream is up,"
    " else seconds since the stream broke (or since the watch started, before a first"
    " snapshot).",
    ["watch"],
)


class CatalogWatch(BackgroundTask):
    """Follows ``WatchCatalog`` on ``channel`` from :meth:`start` to :meth:`stop`.

    Subclasses define :meth:`apply` (and call :meth:`_mark_loaded` once they hold a usable
    snapshot), and may override :meth:`known_version` and :attr:`include_price_history`.
    """

    name = "catalog-watch"
    # Ask for every endpoint's price history too (WatchCatalogRequest.include_price_history).
    include_price_history = False

    def __init__(
        self, channel: grpc.aio.Channel, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._loaded = asyncio.Event()
        self._clock = clock
        self.streaming = False
        # When the last stream broke (``clock`` seconds); None until one has.
        self.broken_at: float | None = None
        self._started_at = clock()

    def start(self) -> None:
        self._started_at = self._clock()
        SNAPSHOT_AGE.labels(self.name).set_function(self.snapshot_age)
        super().start()

    def snapshot_age(self) -> float:
        """0 while streaming, else seconds since the stream broke (see the module doc)."""
        if self.streaming:
            return 0.0
        since = self.broken_at if self.broken_at is not None else self._started_at
        return max(0.0, self._clock() - since)

    @property
    def loaded(self) -> bool:
        """Whether a snapshot has been applied (it may have been superseded since)."""
        return self._loaded.is_set()

    async def wait_loaded(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first snapshot; whether there is one."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loaded.wait(), timeout)
        return self.loaded

    def known_version(self) -> int:
        """The version to send on (re)connecting: 0 asks for a snapshot at once."""
        return 0

    def apply(self, message: catalog_pb2.WatchCatalogResponse) -> None:
        """Take a snapshot the catalog sent (a bad one is logged and ignored)."""
        raise NotImplementedError

    def _mark_loaded(self) -> None:
        self._loaded.set()

    def _set_streaming(self, streaming: bool) -> None:
        if self.streaming and not streaming:
            self.broken_at = self._clock()
        self.streaming = streaming

    async def _run(self) -> None:
        delay = FIRST_RETRY_SECONDS
        while True:
            request = catalog_pb2.WatchCatalogRequest(
                known_version=self.known_version(),
                include_price_history=self.include_price_history,
            )
            try:
                async for message in self._stub.WatchCatalog(request, wait_for_ready=True):
                    self.apply(message)
                    self._set_streaming(True)
                    delay = FIRST_RETRY_SECONDS
            except grpc.aio.AioRpcError as error:
                log.warning("catalog watch broke", extra={"grpc_code": error.code().name})
            except Exception:  # keep watching whatever happened; the traceback is in the log
                log.exception("catalog watch failed unexpectedly")
            self._set_streaming(False)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, MAX_RETRY_SECONDS)
