"""``make bench-ab BASE=<rev>``: this checkout's router against another commit's, side by side in
one run, with the bare relay beside them.

Before/after numbers taken in two runs on a shared machine compare two different machines; this
takes them in one. It checks ``BASE`` out into a git worktree under a temporary directory and
builds its own virtualenv there (``make install``; the worktree and its venv are removed
afterwards unless ``--keep``), then starts two plaintext stacks from the same Postgres and
Redis: ``base`` run by that venv's interpreter and ``head`` by this one (each stack's processes
are the interpreter's ``python -m switchboard_<service>``), and the bare relay
(:mod:`bench.bare_relay`) against head's demo upstream. Each round runs the same streamed
completions through the three, in alternating order; the summary prints the median router CPU
per completion, each router's ratio to the bare relay, head/base and head/base per round (the
paired figure: a round's three rows ran within seconds of each other).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

from bench.load import HEADER, Call, Result, drive, measure, router_call
from bench.stacks import BareRelay, Deployment, deploy, set_workload
from switchboard.router.v1 import router_pb2_grpc
from switchboard_devstack.storage import drop_database, find_postgres, find_redis

ROOT = Path(__file__).resolve().parents[1]
CHUNKS = 20


@contextlib.contextmanager
def checkout(rev: str, keep: bool) -> Iterator[Path]:
    """``rev`` in a worktree of its own, installed (its venv's python is yielded)."""
    where = Path(tempfile.mkdtemp(prefix="sbab-")) / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=ROOT, check=True)
    try:
        subprocess.run(["make", "install"], cwd=where, check=True, stdout=subprocess.DEVNULL)
        yield where / ".venv" / "bin" / "python"
    finally:
        if keep:
            print(f"base checkout kept in {where}")
        else:
            subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT)
            shutil.rmtree(where.parent, ignore_errors=True)


async def deploy_with(python: str, name: str, admin: str, redis: str, state: Path) -> Deployment:
    """A plaintext stack whose processes ``python`` runs."""
    ours, sys.executable = sys.executable, python
    try:
        return await deploy(name, admin, redis, state, 0.0, plaintext=True)
    finally:
        sys.executable = ours


def summary(rows: dict[str, list[Result]]) -> None:
    def cpu(row: Result) -> float:
        return row.cpu_ms_per_completion or 0.0

    median = {name: statistics.median(cpu(r) for r in runs) for name, runs in rows.items()}
    bare = median["bare relay"]
    print("\nmedian CPU ms per completion: " + ", ".join(f"{k} {v:.2f}" for k, v in median.items()))
    print(
        f"router/bare relay: base {median['base'] / bare:.2f}x, head {median['head'] / bare:.2f}x;"
        f" head/base {median['head'] / median['base']:.3f}"
    )
    paired = [cpu(h) / cpu(b) for h, b in zip(rows["head"], rows["base"], strict=True)]
    print("head/base per round: " + " ".join(f"{p:.3f}" for p in paired))
    metering = {
        name: statistics.median(r.metering_cpu_ms_per_completion or 0.0 for r in rows[name])
        for name in ("base", "head")
    }
    print(
        f"metering CPU ms per completion: base {metering['base']:.2f}, head {metering['head']:.2f}"
    )


async def run(args: argparse.Namespace, base_python: Path) -> int:
    state = Path(tempfile.mkdtemp(prefix="sbab-state-"))
    admin, embedded_pg = find_postgres(os.environ.get("DATABASE_URL"), state / "pg")
    redis, embedded_redis = find_redis(os.environ.get("REDIS_URL"), state / "redis")
    stacks: list[Deployment] = []
    bare: BareRelay | None = None
    failed = 0
    try:
        stacks.append(await deploy_with(str(base_python), "base", admin, redis, state))
        stacks.append(await deploy_with(sys.executable, "head", admin, redis, state))
        demo = f"http://127.0.0.1:{stacks[1].stack.ports.demo}/v1/chat/completions"
        bare = await BareRelay.start(demo, state / "bare-relay.log")
        for deployment in stacks:
            await set_workload(deployment.stack, CHUNKS, args.token_delay)
        paths: dict[str, tuple[Call, tuple[psutil.Process, ...]]] = {
            "bare relay": (
                router_call(router_pb2_grpc.RouterServiceStub(bare.channel), "", CHUNKS),
                (bare.process,),
            ),
            **{
                d.name: (
                    router_call(router_pb2_grpc.RouterServiceStub(d.channel), d.unlimited, CHUNKS),
                    (d.router, d.metering),
                )
                for d in stacks
            },
        }
        for call, _ in paths.values():
            await drive(call, 100, 8)  # warm up: connections, caches, lazy imports
        print(f"\n{CHUNKS} chunks {args.token_delay * 1000:g} ms apart, C={args.concurrency}")
        print(HEADER)
        rows: dict[str, list[Result]] = {name: [] for name in paths}
        for round_ in range(args.rounds):
            order = list(paths) if round_ % 2 == 0 else list(reversed(paths))
            for name in order:
                call, processes = paths[name]
                row = await measure(name, call, args.concurrency, args.requests, *processes)
                print(row.row(), flush=True)
                failed += row.failures
                rows[name].append(row)
        summary(rows)
    finally:
        if bare is not None:
            await bare.stop()
        for deployment in stacks:
            await deployment.channel.close(None)
            deployment.stack.stop()
            await drop_database(admin, deployment.database)
        for server in (embedded_pg, embedded_redis):
            if server is not None:
                server.stop()
    print(f"\nfailed requests: {failed}; logs in {state}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--base", required=True, help="the commit to compare with (e.g. HEAD~3)")
    parser.add_argument("--requests", type=int, default=1000, help="completions per row")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (each: bare, base, head)")
    parser.add_argument("--concurrency", type=int, default=32, help="streams at once (32)")
    parser.add_argument("--token-delay", type=float, default=0.005, help="chunk gap s (0.005)")
    parser.add_argument("--keep", action="store_true", help="keep the base worktree")
    args = parser.parse_args()
    with checkout(args.base, args.keep) as python:
        return asyncio.run(run(args, python))


if __name__ == "__main__":
    sys.exit(main())
