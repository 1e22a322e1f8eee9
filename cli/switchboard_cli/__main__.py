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
# A command that opens its own channels (``health`` of every service).
EveryService = Callable[[argparse.Namespace, Credentials, Output], Awaitable[int]]


async def run(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Parse ``argv``, run the command against its service and return the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(os.environ if env is None else env, json_errors="--json" in arguments)
    try:
        args = parser.parse_args(arguments)
    except SystemExit as stop:  # --help, --version, or a usage error argparse has printed
        return stop.code if isinstance(stop.code, int) else 2
    output = Output(json=args.json)
    credentials = Credentials.from_args(args)
    every_service: EveryService | None = getattr(args, "every_service", None)
    if every_service is not None and args.service is None:
        try:
            with output.waiting("asking router, catalog and metering ..."):
                return await every_service(args, credentials, output)
        except ConnectionSetupError as error:
            output.fail(str(error), exit_code=2)
            return 2
    if callable(args.service):  # a read of one's own data: the router, or an admin port
        args.service = args.service(args)
    target = Target(args.service, getattr(args, args.service))
    handler: Handler = args.handler
    try:
        with output.waiting(f"asking the {target.service} at {target.address} ..."):
            async with open_channel(target, credentials) as channel:
                return await handler(args, channel, output)
    except ConnectionSetupError as error:
        output.fail(str(error), exit_code=2)
        return 2
    except grpc.aio.AioRpcError as error:
        output.fail(
            describe_rpc_error(error, target),
            code=error.code().name,
            service=target.service,
            address=target.address,
            exit_code=1,
        )
        return 1
    except CliError as error:
        output.fail(error.message, exit_code=error.exit_code)
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
