"""Versioned SQL migrations of the catalog service (applied by ``switchboard_core.db.migrate``)."""
