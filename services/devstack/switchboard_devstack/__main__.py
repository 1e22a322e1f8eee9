"""``make run``: embedded Postgres and Redis (unless given), then every service.

Prints an API key for the demo account and how to make a first request, then runs until
Ctrl-C or SIGTERM, when it stops the services gracefully and the embedded servers last.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.config import ConfigError, EnvReader
from switchboard_devstack.stack import Ports, Stack
from switchboard_devstack.storage import postgres_url, redis_url

STATE_DIR = Path(".devstack")


async def demo_key(metering_port: int) -> tuple[str, str]:
    """A fresh key for the demo account: (secret, key id)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{metering_port}") as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        reply = await stub.CreateApiKey(
            metering_pb2.CreateApiKeyRequest(account_id="demo", name="make run")
        )
        return reply.secret, reply.api_key.id


def banner(ports: Ports, key: tuple[str, str], database: str, redis: str) -> str:
    return f"""
Switchboard is running.
  router    127.0.0.1:{ports.router}  (metrics http://127.0.0.1:{ports.router_metrics}/metrics)
  catalog   127.0.0.1:{ports.catalog}  metering 127.0.0.1:{ports.metering}
  demo      http://127.0.0.1:{ports.demo}/v1 (OpenAI-compatible, answers offline)
  postgres  {database}
  redis     {redis}
  logs      {STATE_DIR}/logs/

A first request, in another shell:
  export SWITCHBOARD_API_KEY={key[0]}
  .venv/bin/switchboard chat switchboard/demo "Hello, Switchboard"
  .venv/bin/switchboard models list
  .venv/bin/switchboard usage --key {key[1]}

Ctrl-C stops everything.
"""


async def run() -> int:
    reader = EnvReader()
    database = reader.str("DATABASE_URL", "")
    redis = reader.str("REDIS_URL", "")
    try:
        reader.finish()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    print("starting storage ...", file=sys.stderr, flush=True)
    database, embedded_pg = postgres_url(database or None, STATE_DIR / "postgres")
    redis, embedded_redis = redis_url(redis or None, STATE_DIR / "redis")
    stack = Stack(database, redis, log_dir=STATE_DIR / "logs")
    try:
        print("starting services ...", file=sys.stderr, flush=True)
        await stack.start()
        key = await demo_key(stack.ports.metering)
        print(banner(stack.ports, key, database, redis), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            dead = [name for name, p in stack.processes.items() if p.poll() is not None]
            if dead:
                print(f"{', '.join(dead)} exited; see {STATE_DIR}/logs/", file=sys.stderr)
                return 1
            await asyncio.wait([asyncio.create_task(stop.wait())], timeout=1.0)
        return 0
    finally:
        print("stopping ...", file=sys.stderr, flush=True)
        stack.stop()
        if embedded_redis is not None:
            embedded_redis.stop()
        if embedded_pg is not None:
            embedded_pg.stop()


def main() -> int:
    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
