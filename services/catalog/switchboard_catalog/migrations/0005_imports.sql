-- Catalog imports from maintained price databases (switchboard_catalog.importer).
--
-- catalog_imports: one row per applied import (dry runs are only in the audit log): the
-- source ('genai-prices'), its own version, who ran it, the catalog version it produced
-- (NULL when it changed nothing) and a summary (counts by change kind).
CREATE TABLE IF NOT EXISTS catalog_imports (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source          text        NOT NULL,
    source_version  text        NOT NULL,
    actor           text        NOT NULL DEFAULT '',
    imported_at     timestamptz NOT NULL DEFAULT now(),
    catalog_version bigint,
    summary         jsonb       NOT NULL DEFAULT '{}'
);

-- Which endpoints each source priced, and as which source model, so that an endpoint the
-- source stops listing is reported (once: removed_at is set when it is). An endpoint listed
-- again gets removed_at cleared.
CREATE TABLE IF NOT EXISTS catalog_import_endpoints (
    source          text        NOT NULL,
    endpoint_id     text        NOT NULL REFERENCES endpoints (id),
    source_model_id text        NOT NULL,
    last_import_id  bigint      NOT NULL REFERENCES catalog_imports (id),
    removed_at      timestamptz,
    PRIMARY KEY (source, endpoint_id)
);
