"""Switchboard metering: API keys, the usage ledger and its rollups, the usage outbox consumer."""
