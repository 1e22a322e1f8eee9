-- The ledger becomes partitioned by month of created_at (UTC), so that retention drops whole
-- partitions instead of deleting rows. A unique key on a partitioned table must contain the
-- partition key, so a generation is now identified by (generation_id, attempt, created_at):
-- events carry their create_time, fixed when the generation starts, and a replayed event
-- carries the same one. attempt numbers the upstream tries of one request (0: the first).

ALTER TABLE generations RENAME TO generations_unpartitioned;
ALTER TABLE generations_unpartitioned RENAME CONSTRAINT generations_pkey
    TO generations_unpartitioned_pkey;
ALTER INDEX generations_key_created RENAME TO generations_unpartitioned_key_created;

CREATE TABLE generations (
    generation_id         text NOT NULL,
    attempt               integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
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
    -- Completion tokens per second after the first token; NULL when that time is zero.
    tokens_per_second     double precision GENERATED ALWAYS AS (
        CASE WHEN latency_ms > ttft_ms
             THEN completion_tokens * 1000.0 / (latency_ms - ttft_ms) END
    ) STORED,
    recorded_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (generation_id, attempt, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX generations_key_created ON generations (key_id, created_at);

-- Rows dated before retained_from have been dropped by retention; events older than it are
-- not written again (their partition is gone, and they were counted in the rollups).
CREATE TABLE ledger_retention (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    retained_from  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO ledger_retention DEFAULT VALUES;

-- The partition holding the month (UTC) of ``at``, created when missing; returns its name.
-- Callers serialise on an advisory lock: CREATE TABLE IF NOT EXISTS is not safe against a
-- concurrent creator.
CREATE FUNCTION generations_partition_for(at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamp := date_trunc('month', at AT TIME ZONE 'UTC');
    name text := 'generations_' || to_char(month_start, 'YYYY_MM');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('switchboard.generations_partitions'));
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF generations FOR VALUES FROM (%L) TO (%L)',
        name,
        month_start AT TIME ZONE 'UTC',
        (month_start + interval '1 month') AT TIME ZONE 'UTC'
    );
    RETURN name;
END
$$;

SELECT generations_partition_for(month)
FROM (SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
      FROM generations_unpartitioned) AS months (month);
SELECT generations_partition_for(now());

INSERT INTO generations (
    generation_id, key_id, account_id, model_id, provider_id, endpoint_id, upstream_model,
    prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cache_write_tokens,
    estimated, cost, finish_reason, native_finish_reason, status, streamed, created_at,
    latency_ms, ttft_ms, recorded_at)
SELECT generation_id, key_id, account_id, model_id, provider_id, endpoint_id, upstream_model,
    prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cache_write_tokens,
    estimated, cost, finish_reason, native_finish_reason, status, streamed, created_at,
    latency_ms, ttft_ms, recorded_at
FROM generations_unpartitioned;

DROP TABLE generations_unpartitioned;
