"""The ``switchboard`` command-line client: keys, models, chat and usage over gRPC.

Run ``switchboard --help``. The entry point is :func:`switchboard_cli.__main__.main`; tests
await :func:`switchboard_cli.__main__.run` directly.
"""

from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("switchboard")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _version()
