"""SQL migrations of the shared library's own tables (the audit log), applied by each service
that has a database (:func:`switchboard_core.audit_log.migrate_audit`)."""
