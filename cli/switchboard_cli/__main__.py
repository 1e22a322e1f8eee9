"""Entry point: ``switchboard ...`` (``python -m switchboard_cli``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence

import grpc

from switchboard_cli.connection import ConnectionSetupError, Credentials, Target, open_channel
from switchboard_cli.errors import CliError, describe_rpc_error
from switchboard_cli.output import Output
from switchboard_cli.parser import build_parser

Handler = Callable[[argparse.Namespace, grpc.aio.Channel, Output], Awaitable[int]]


async def run(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Parse ``argv``, run the command against its service and return the exit code."""
    parser = build_parser(os.environ if env is None else env)
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error argparse has already printed
        return stop.code if isinstance(stop.code, int) else 2
    output = Output(json=args.json)
    if callable(args.service):  # a read of one's own data: the router, or an admin port
        args.service = args.service(args)
    target = Target(args.service, getattr(args, args.service))
    credentials = Credentials.from_args(args)
    handler: Handler = args.handler
    try:
        async with open_channel(target, credentials) as channel:
            return await handler(args, channel, output)
    except ConnectionSetupError as error:
        output.fail(str(error))
        return 2
    except grpc.aio.AioRpcError as error:
        output.fail(describe_rpc_error(error, target))
        return 1
    except CliError as error:
        output.fail(error.message)
        return error.exit_code


def main(argv: list[str] | None = None) -> int:
    try:
        return asyncio.run(run(argv))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `switchboard models list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
