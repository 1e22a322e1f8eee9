"""The rules of a ``common.v1.Hedging`` setting, wherever one is written: a completion request's
``provider.hedge`` (the router) and a model's default ``Model.hedge`` (the catalog). One table
of bounds, so that the catalog cannot store a setting the router would refuse in a request.

- ``mode`` is one of the enum's values. ``MODE_UNSPECIFIED`` inherits (the request's setting,
  else the model's, else the router's) and ``MODE_OFF`` never hedges: neither takes
  ``delay_ms`` or ``ttft_percentile``, so a client that sets a delay but forgets the mode is
  told rather than silently not hedged.
- ``delay_ms``: from :data:`MIN_DELAY_MS` (below it a hedge would double nearly every request:
  no upstream answers that fast) to :data:`MAX_DELAY_MS` (a minute; later, hedging no longer
  saves anything a client waits for). ``MODE_FIXED_DELAY`` requires it; with
  ``MODE_LIVE_TTFT`` it is the delay used while the endpoint has too few measurements, and 0
  means the router's default.
- ``ttft_percentile``: only with ``MODE_LIVE_TTFT``, from 50 to 99 (0 means
  :data:`DEFAULT_PERCENTILE`).
"""

from __future__ import annotations

from switchboard.common.v1 import common_pb2

MIN_DELAY_MS = 10
MAX_DELAY_MS = 60_000
MIN_PERCENTILE = 50
MAX_PERCENTILE = 99
DEFAULT_PERCENTILE = 90

Hedging = common_pb2.Hedging
_TIMED = (Hedging.MODE_FIXED_DELAY, Hedging.MODE_LIVE_TTFT)


def hedging_violations(hedging: common_pb2.Hedging, prefix: str) -> list[tuple[str, str]]:
    """``(field path, why)`` for each rule above that ``hedging`` breaks, under ``prefix``
    (``"provider.hedge"``, ``"model.hedge"``)."""
    out: list[tuple[str, str]] = []
    mode = hedging.mode
    if mode not in Hedging.Mode.values():
        return [(f"{prefix}.mode", "unknown mode")]
    if hedging.delay_ms:
        if mode not in _TIMED:
            out.append((f"{prefix}.delay_ms", "only with MODE_FIXED_DELAY or MODE_LIVE_TTFT"))
        elif not MIN_DELAY_MS <= hedging.delay_ms <= MAX_DELAY_MS:
            out.append(
                (
                    f"{prefix}.delay_ms",
                    f"from {MIN_DELAY_MS} to {MAX_DELAY_MS} milliseconds"
                    + (" (0: the router's default)" if mode == Hedging.MODE_LIVE_TTFT else ""),
                )
            )
    elif mode == Hedging.MODE_FIXED_DELAY:
        out.append(
            (
                f"{prefix}.delay_ms",
                f"required with MODE_FIXED_DELAY: from {MIN_DELAY_MS} to {MAX_DELAY_MS}"
                " milliseconds",
            )
        )
    if hedging.ttft_percentile:
        if mode != Hedging.MODE_LIVE_TTFT:
            out.append((f"{prefix}.ttft_percentile", "only with MODE_LIVE_TTFT"))
        elif not MIN_PERCENTILE <= hedging.ttft_percentile <= MAX_PERCENTILE:
            out.append(
                (
                    f"{prefix}.ttft_percentile",
                    f"from {MIN_PERCENTILE} to {MAX_PERCENTILE} (0 means {DEFAULT_PERCENTILE})",
                )
            )
    return out
