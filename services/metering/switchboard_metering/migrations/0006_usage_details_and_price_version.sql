-- Usage as providers now bill it, and which price billed it.
--
-- generations gains the finer parts of a usage report (switchboard.common.v1.Usage): one-hour
-- cache writes (of cache_write_tokens), audio, image and video input (of prompt_tokens),
-- cached audio (of cached_tokens and of audio_prompt_tokens), audio output (of
-- completion_tokens), and the per-unit counts priced per search and per image. price_version
-- is the catalog's id of the price the router billed with (catalog PriceChange.price_version,
-- the catalog's endpoint_prices row); 0 when the router did not know it (every row written
-- before this migration), and the cost is then the price in force at created_at.
--
-- usage_rollups sums the same counts, so that rollups stay the ledger's sums cell by cell
-- (reconcile compares every column). Rows that exist already get zeros on both sides, which
-- is what they were.
--
-- ADD COLUMN with a constant default rewrites no row (PostgreSQL 11+), and on the
-- partitioned generations it reaches every partition, present and future; the CHECKs too.

ALTER TABLE generations
    ADD COLUMN cache_write_1h_tokens   bigint NOT NULL DEFAULT 0
        CHECK (cache_write_1h_tokens >= 0),
    ADD COLUMN audio_prompt_tokens     bigint NOT NULL DEFAULT 0
        CHECK (audio_prompt_tokens >= 0),
    ADD COLUMN image_prompt_tokens     bigint NOT NULL DEFAULT 0
        CHECK (image_prompt_tokens >= 0),
    ADD COLUMN video_prompt_tokens     bigint NOT NULL DEFAULT 0
        CHECK (video_prompt_tokens >= 0),
    ADD COLUMN cached_audio_tokens     bigint NOT NULL DEFAULT 0
        CHECK (cached_audio_tokens >= 0),
    ADD COLUMN audio_completion_tokens bigint NOT NULL DEFAULT 0
        CHECK (audio_completion_tokens >= 0),
    ADD COLUMN web_searches            bigint NOT NULL DEFAULT 0 CHECK (web_searches >= 0),
    ADD COLUMN input_images            bigint NOT NULL DEFAULT 0 CHECK (input_images >= 0),
    ADD COLUMN price_version           bigint NOT NULL DEFAULT 0 CHECK (price_version >= 0);

ALTER TABLE usage_rollups
    ADD COLUMN cache_write_1h_tokens   bigint NOT NULL DEFAULT 0,
    ADD COLUMN audio_prompt_tokens     bigint NOT NULL DEFAULT 0,
    ADD COLUMN image_prompt_tokens     bigint NOT NULL DEFAULT 0,
    ADD COLUMN video_prompt_tokens     bigint NOT NULL DEFAULT 0,
    ADD COLUMN cached_audio_tokens     bigint NOT NULL DEFAULT 0,
    ADD COLUMN audio_completion_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN web_searches            bigint NOT NULL DEFAULT 0,
    ADD COLUMN input_images            bigint NOT NULL DEFAULT 0;
