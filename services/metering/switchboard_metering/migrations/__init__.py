"""Versioned SQL migrations of the metering service, applied by ``switchboard_core.db.migrate``."""
