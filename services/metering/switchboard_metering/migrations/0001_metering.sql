-- Accounts and API keys. Only the sha256 of a key's secret is stored, never the secret.
CREATE TABLE accounts (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id             text PRIMARY KEY,
    account_id     text NOT NULL REFERENCES accounts (id),
    name           text NOT NULL,
    secret_sha256  text NOT NULL UNIQUE CHECK (secret_sha256 ~ '^[0-9a-f]{64}$'),
    prefix         text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);

-- ListApiKeys: an account's keys, newest first, paged by (created_at, id).
CREATE INDEX api_keys_account_created ON api_keys (account_id, created_at DESC, id DESC);

-- The ledger: one row per generation, idempotent on generation_id.
-- Costs are exact USD (NUMERIC, never float).
CREATE TABLE generations (
    generation_id         text PRIMARY KEY,
    key_id                text NOT NULL,
    account_id            text NOT NULL,
    model_id              text NOT NULL,
    provider_id           text NOT NULL,
    endpoint_id           text NOT NULL,
    upstream_model        text NOT NULL,
    prompt_tokens         bigint NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens     bigint NOT NULL CHECK (completion_tokens >= 0),
    cached_tokens         bigint NOT NULL CHECK (cached_tokens >= 0),
    reasoning_tokens      bigint NOT NULL CHECK (reasoning_tokens >= 0),
    cache_write_tokens    bigint NOT NULL CHECK (cache_write_tokens >= 0),
    estimated             boolean NOT NULL,
    cost                  numeric NOT NULL CHECK (cost >= 0),
    finish_reason         smallint NOT NULL,
    native_finish_reason  text NOT NULL,
    status                smallint NOT NULL,
    streamed              boolean NOT NULL,
    created_at            timestamptz NOT NULL,
    latency_ms            bigint NOT NULL,
    ttft_ms               bigint NOT NULL,
    recorded_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX generations_key_created ON generations (key_id, created_at);

-- Hourly sums per key, model and provider, updated in the same transaction as the
-- generations they count (and only for rows that were new). QueryUsage reads only this.
CREATE TABLE usage_rollups (
    key_id              text NOT NULL,
    model_id            text NOT NULL,
    provider_id         text NOT NULL,
    bucket_start        timestamptz NOT NULL,
    requests            bigint NOT NULL,
    prompt_tokens       bigint NOT NULL,
    completion_tokens   bigint NOT NULL,
    cached_tokens       bigint NOT NULL,
    reasoning_tokens    bigint NOT NULL,
    cache_write_tokens  bigint NOT NULL,
    cost                numeric NOT NULL,
    PRIMARY KEY (key_id, model_id, provider_id, bucket_start)
);

-- QueryUsage: one key over a time range.
CREATE INDEX usage_rollups_key_bucket ON usage_rollups (key_id, bucket_start);
