"""``python -m switchboard_demo``: serve the demo upstream until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

from switchboard_core import event_loop
from switchboard_core.config import ConfigError, EnvReader, read_event_loop
from switchboard_core.logs import configure
from switchboard_demo.upstream import DemoSettings, start


async def serve(host: str, port: int, settings: DemoSettings) -> None:
    runner, bound = await start(host, port, settings)
    print(f"demo upstream listening on http://{host}:{bound}/v1", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    reader = EnvReader()
    host = reader.str("SWITCHBOARD_HOST", "127.0.0.1")
    port = reader.int("SWITCHBOARD_DEMO_PORT", 8088, max_value=65535)
    settings = DemoSettings(
        reply_tokens=reader.int("SWITCHBOARD_DEMO_REPLY_TOKENS", 20, min_value=1),
        token_delay_seconds=reader.float("SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS", 0.0),
    )
    loop = read_event_loop(reader)
    try:
        reader.finish()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    configure("demo", "INFO")
    event_loop.run(serve(host, port, settings), loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
