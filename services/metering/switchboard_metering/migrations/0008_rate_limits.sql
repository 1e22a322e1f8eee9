-- Rate limits of a key, and of an account (shared by all of its keys): requests per minute,
-- tokens per minute and requests in flight at once, as switchboard.metering.v1.RateLimits
-- carries them. 0 means no limit, which is what every key and account had before this
-- migration. The routers enforce them in Redis (switchboard_core.rate_limits); metering only
-- stores them and hands them out with each key.
--
-- The bounds are switchboard_core.rate_limits.MAX_*: the admin API refuses more with
-- INVALID_ARGUMENT, and these CHECKs hold the table to it whatever writes it.
--
-- ADD COLUMN with a constant default rewrites no row (PostgreSQL 11+).

ALTER TABLE api_keys
    ADD COLUMN rate_requests_per_minute bigint NOT NULL DEFAULT 0
        CHECK (rate_requests_per_minute BETWEEN 0 AND 1000000),
    ADD COLUMN rate_tokens_per_minute   bigint NOT NULL DEFAULT 0
        CHECK (rate_tokens_per_minute BETWEEN 0 AND 10000000000),
    ADD COLUMN rate_max_concurrent      bigint NOT NULL DEFAULT 0
        CHECK (rate_max_concurrent BETWEEN 0 AND 100000);

ALTER TABLE accounts
    ADD COLUMN rate_requests_per_minute bigint NOT NULL DEFAULT 0
        CHECK (rate_requests_per_minute BETWEEN 0 AND 1000000),
    ADD COLUMN rate_tokens_per_minute   bigint NOT NULL DEFAULT 0
        CHECK (rate_tokens_per_minute BETWEEN 0 AND 10000000000),
    ADD COLUMN rate_max_concurrent      bigint NOT NULL DEFAULT 0
        CHECK (rate_max_concurrent BETWEEN 0 AND 100000);
