"""The chaos table (``make chaos``): network faults on each of the stack's seven links under a
streaming load, one table row per scenario (client-visible errors, waits, recovery after the
fault clears, ledger exactness). See :mod:`tests.chaos.runner` and :mod:`tests.chaos.report`.
"""
