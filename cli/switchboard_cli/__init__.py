"""The ``switchboard`` command-line client: keys, models, chat and usage over gRPC.

Run ``switchboard --help``. The entry point is :func:`switchboard_cli.__main__.main`; tests
await :func:`switchboard_cli.__main__.run` directly.
"""
