"""``make run``: embedded Postgres and Redis (unless given), then every service.

The services talk mutual TLS with certificates from a development CA under ``.devstack/pki``.
Prints an API key for the ``devstack`` account (the same at every start while it is valid,
kept in ``.devstack/api-key``), an operator key, and how to make a first request
(``.devstack/env`` holds the variables the CLI needs), then runs until Ctrl-C or SIGTERM,
when it stops the services gracefully and the embedded servers last.

The router and metering run one process per core (``SWITCHBOARD_WORKERS=auto``, unless the
developer sets ``SWITCHBOARD_WORKERS``; :mod:`switchboard_core.workers`): the router's workers
share its ports, metering's are consumers of the usage outbox's group. The catalog is one
process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import grpc

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2_grpc
from switchboard_core.config import ConfigError, EnvReader
from switchboard_core.workers import WORKERS_VAR, Worker, read_workers
from switchboard_devstack.pki import OPERATOR, DevPki
from switchboard_devstack.stack import Ports, Stack
from switchboard_devstack.storage import postgres_url, redis_url

STATE_DIR = Path(".devstack")
# What the catalog imports at start under `make run` (SWITCHBOARD_CATALOG_IMPORT).
IMPORT = "genai-prices"
# The account of the API key `make run` prints, and where that key is kept between starts.
ACCOUNT = "devstack"
KEY_FILE = STATE_DIR / "api-key"
KEY_CHECK_SECONDS = 10.0
# How many processes the router and metering each run, unless SWITCHBOARD_WORKERS says.
WORKERS = "auto"
SCALED = ("router", "metering")


async def devstack_key(stack: Stack, path: Path = KEY_FILE) -> tuple[str, str]:
    """The ``devstack`` account's API key: (secret, key id). The one an earlier ``make run``
    saved in ``.devstack/api-key`` while the router still accepts it (same database, not
    revoked or expired), else a new one, saved for the next start."""
    saved = _saved_key(path)
    if saved is not None and await _still_accepted(stack, saved[0]):
        return saved
    async with stack.channel("metering") as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        reply = await stub.CreateApiKey(
            metering_pb2.CreateApiKeyRequest(account_id=ACCOUNT, name="make run"),
            timeout=KEY_CHECK_SECONDS,
        )
    key = (reply.secret, reply.api_key.id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a secret
    with os.fdopen(fd, "w") as out:
        json.dump({"secret": key[0], "id": key[1], "account": ACCOUNT}, out)
    return key


def _saved_key(path: Path) -> tuple[str, str] | None:
    try:
        saved = json.loads(path.read_text())
        secret, key_id = saved["secret"], saved["id"]
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: a new one
        return None
    if saved.get("account") != ACCOUNT or not all(isinstance(v, str) for v in (secret, key_id)):
        return None
    return secret, key_id


async def _still_accepted(stack: Stack, secret: str) -> bool:
    """Whether the router takes ``secret`` (metering checks it against the database)."""
    async with stack.channel("router", bearer=secret) as channel:
        try:
            await router_pb2_grpc.RouterServiceStub(channel).GetKey(
                account_pb2.GetKeyRequest(), timeout=KEY_CHECK_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            print(
                f"the saved API key was not accepted ({error.code().name}); making a new one",
                file=sys.stderr,
            )
            return False
    return True


def write_env(stack: Stack, key: tuple[str, str]) -> Path:
    """``.devstack/env``: what the CLI needs, to ``source`` in another shell."""
    pki, ports = stack.pki, stack.ports
    values = {
        "SWITCHBOARD_API_KEY": key[0],
        "SWITCHBOARD_ADMIN_KEY": stack.admin_key,
        "SWITCHBOARD_TLS_CA": pki.ca.resolve(),
        "SWITCHBOARD_TLS_CERT": pki.cert(OPERATOR).resolve(),
        "SWITCHBOARD_TLS_KEY": pki.key(OPERATOR).resolve(),
        "SWITCHBOARD_ROUTER_ADDR": f"127.0.0.1:{ports.router}",
        "SWITCHBOARD_CATALOG_ADDR": f"127.0.0.1:{ports.catalog}",
        "SWITCHBOARD_METERING_ADDR": f"127.0.0.1:{ports.metering}",
    }
    path = STATE_DIR / "env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds secrets
    with os.fdopen(fd, "w") as out:
        out.writelines(f"export {name}={value}\n" for name, value in values.items())
    return path


def metrics_ports(base: int, workers: int) -> str:
    """Where ``workers`` processes serve their metrics: ``base`` alone for one process; else
    ``base`` (the supervisor: every worker's, labelled ``worker``) and each worker's own."""
    if workers <= 1:
        return str(base)
    own = ", ".join(str(Worker(i, workers).metrics_port(base)) for i in range(workers))
    return f"{base} (every worker, labelled; each worker's own: {own})"


def banner(
    ports: Ports,
    key: tuple[str, str],
    database: str,
    redis: str,
    env: Path,
    workers: int = 1,
) -> str:
    processes = f"{workers} processes" if workers > 1 else "1 process"
    router_metrics = metrics_ports(ports.router_metrics, workers)
    metering_metrics = metrics_ports(ports.metering_metrics, workers)
    return f"""
Switchboard is running (mutual TLS between the services; CA in {STATE_DIR}/pki/).
  router    127.0.0.1:{ports.router}  ({processes} sharing the ports; metrics on
            http://127.0.0.1:PORT/metrics, PORT: {router_metrics})
  edge      https://127.0.0.1:{ports.router_http}/v1 (OpenAI- and Anthropic-compatible HTTP)
  catalog   127.0.0.1:{ports.catalog}  metering 127.0.0.1:{ports.metering} ({processes},
            consumers of the usage outbox; metrics on {metering_metrics})
  demo      http://127.0.0.1:{ports.demo}/v1 (OpenAI-compatible, answers offline)
  postgres  {database}
  redis     {redis}
  logs      {STATE_DIR}/logs/

A first request, in another shell ({env} sets the API key, an operator key with
every scope as SWITCHBOARD_ADMIN_KEY, and the CLI's certificates):
  source {env}
  .venv/bin/switchboard chat switchboard/demo "Hello, Switchboard"
  .venv/bin/switchboard models list
  .venv/bin/switchboard usage --key {key[1]}
  curl --cacert {STATE_DIR}/pki/ca.pem https://127.0.0.1:{ports.router_http}/v1/chat/completions \\
    -H "Authorization: Bearer $SWITCHBOARD_API_KEY" -H "Content-Type: application/json" \\
    -d '{{"model": "switchboard/demo", "messages": [{{"role": "user", "content": "Hi"}}]}}'

The API key ({key[1]}, account {ACCOUNT}) is kept in {KEY_FILE} and reused at every start
while it is valid; delete that file for a new one.

Ctrl-C stops everything.
"""


async def run() -> int:
    reader = EnvReader()
    database = reader.str("DATABASE_URL", "")
    redis = reader.str("REDIS_URL", "")
    workers_setting = reader.str(WORKERS_VAR, WORKERS)
    scaling = EnvReader({WORKERS_VAR: workers_setting})
    workers = read_workers(scaling)
    reader.problems.extend(scaling.problems)
    try:
        reader.finish()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    print("starting storage ...", file=sys.stderr, flush=True)
    database, embedded_pg = postgres_url(database or None, STATE_DIR / "postgres")
    redis, embedded_redis = redis_url(redis or None, STATE_DIR / "redis")
    pki = DevPki.ensure(STATE_DIR / "pki")
    # The catalog starts from the seed plus the price database bundled with genai-prices
    # (the developer's own SWITCHBOARD_CATALOG_IMPORT wins; empty skips it). Only here: the
    # test stacks keep the seed alone.
    imports = {"SWITCHBOARD_CATALOG_IMPORT": os.environ.get("SWITCHBOARD_CATALOG_IMPORT", IMPORT)}
    scaled = {name: {WORKERS_VAR: workers_setting} for name in SCALED}
    stack = Stack(
        database, redis, pki, log_dir=STATE_DIR / "logs", extra_env=imports, service_env=scaled
    )
    try:
        print("starting services ...", file=sys.stderr, flush=True)
        await stack.start()
        key = await devstack_key(stack)
        env = write_env(stack, key)
        print(banner(stack.ports, key, database, redis, env, workers), flush=True)
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
