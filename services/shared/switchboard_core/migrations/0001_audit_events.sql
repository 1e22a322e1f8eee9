-- The audit log of admin changes (switchboard_core.audit): one row per successful call of an
-- admin write RPC. Services that share a database share this table; each row names its
-- service and each service lists only its own rows. Rows are only ever inserted: the trigger
-- below refuses UPDATE, DELETE and TRUNCATE, whoever asks (even statements matching no row).
CREATE TABLE audit_events (
    id           bigserial PRIMARY KEY,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    service      text NOT NULL,
    -- "operator:opk_...", "service:router", "api_key:key_...".
    actor        text NOT NULL,
    -- The full gRPC method.
    rpc          text NOT NULL,
    -- "<kind>:<id>", e.g. "account:acme".
    target       text NOT NULL,
    -- {"request": ..., "result": ...}: never a secret.
    change       jsonb NOT NULL,
    request_id   text NOT NULL DEFAULT ''
);

-- ListAuditEvents: one service's events, newest first.
CREATE INDEX audit_events_service_id ON audit_events (service, id DESC);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP;
END
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
