"""Metering's watch of the catalog's prices and the cost check on it, as the server runs them.

The watch calls the catalog (``SWITCHBOARD_CATALOG_ADDR``) as the metering service: its
certificate under mutual TLS, else its service key (``switchboard_core.channels``). Without a
catalog address nothing is watched and costs go unverified (counted).
"""

from __future__ import annotations

from switchboard_core.channels import service_channel
from switchboard_metering.config import MeteringConfig
from switchboard_metering.cost_check import PriceCheck
from switchboard_metering.prices import PriceBook, PriceWatch


class CatalogPrices:
    """The watch (a background task from :meth:`start` to :meth:`stop`) and its check."""

    def __init__(self, config: MeteringConfig) -> None:
        self._channel = service_channel(config.catalog_addr, config.server.tls)
        self._wait_seconds = config.catalog_wait_seconds
        self.watch = PriceWatch(self._channel)
        self.check = PriceCheck(
            self.watch,
            lag=config.price_lag,
            skew=config.max_clock_skew_seconds,
            settle=config.price_settle_seconds,
        )

    @classmethod
    def open(cls, config: MeteringConfig) -> CatalogPrices | None:
        """Started, or None when no catalog is configured."""
        if not config.catalog_addr:
            return None
        prices = cls(config)
        prices.watch.start()
        return prices

    async def ready(self) -> None:
        """Wait for the first prices, at most ``SWITCHBOARD_CATALOG_WAIT_SECONDS``: the outbox
        starts after it, so that the backlog a restart finds is checked, not waved through."""
        await self.watch.wait_loaded(self._wait_seconds)

    async def stop(self) -> None:
        await self.watch.stop()
        await self._channel.close(None)


async def fetch_book(config: MeteringConfig) -> PriceBook | None:
    """The catalog's current price history, once (for a command such as reconcile): None
    when no catalog is configured, or none answered with one within
    ``SWITCHBOARD_CATALOG_WAIT_SECONDS``."""
    prices = CatalogPrices.open(config)
    if prices is None:
        return None
    try:
        await prices.ready()
        return prices.watch.book
    finally:
        await prices.stop()
