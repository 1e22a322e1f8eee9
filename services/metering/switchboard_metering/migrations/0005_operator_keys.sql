-- Operator (management) keys: they call admin RPCs within their scopes. Only the sha256 of a
-- secret is stored. An operator key is never an inference key: the prefixes differ
-- ("sk-sb-op-" and "sk-sb-v1-"), and so do the tables.
CREATE TABLE operator_keys (
    id             text PRIMARY KEY,
    name           text NOT NULL,
    secret_sha256  text NOT NULL UNIQUE CHECK (secret_sha256 ~ '^[0-9a-f]{64}$'),
    prefix         text NOT NULL,
    scopes         text[] NOT NULL CHECK (cardinality(scopes) > 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz,
    revoked_at     timestamptz,
    created_by     text NOT NULL
);

-- ListOperatorKeys: newest first, paged by (created_at, id).
CREATE INDEX operator_keys_created ON operator_keys (created_at DESC, id DESC);

-- Inference keys may expire, and may be limited to some models and providers (NULL: any).
ALTER TABLE api_keys
    ADD COLUMN expires_at        timestamptz,
    ADD COLUMN allowed_models    text[],
    ADD COLUMN allowed_providers text[];
