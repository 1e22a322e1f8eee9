-- Traffic control fields (catalog.proto): an endpoint's capacity caps (EndpointCapacity) and
-- data policy (DataPolicy), and a model's default hedging (common.v1.Hedging). 0 / false /
-- '' mean unset: no cap, no known retention, inherit the router's hedging. The bounds repeat
-- switchboard_catalog.validate's (and switchboard_core.hedging's), so no writer can store
-- what the RPC refuses. Not part of a price: the history trigger (0004, 0006) ignores these
-- columns. An endpoint's live statistics (Endpoint.stats) are the routers' and never stored.
ALTER TABLE endpoints
    ADD COLUMN max_concurrent integer NOT NULL DEFAULT 0
        CHECK (max_concurrent BETWEEN 0 AND 100000),
    ADD COLUMN requests_per_minute integer NOT NULL DEFAULT 0
        CHECK (requests_per_minute BETWEEN 0 AND 1000000),
    ADD COLUMN retains_prompts boolean NOT NULL DEFAULT false,
    ADD COLUMN zero_data_retention boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT endpoints_zdr_retains_nothing
        CHECK (NOT (retains_prompts AND zero_data_retention));

ALTER TABLE models
    ADD COLUMN hedge_mode text NOT NULL DEFAULT ''
        CHECK (hedge_mode IN ('', 'off', 'fixed_delay', 'live_ttft')),
    ADD COLUMN hedge_delay_ms integer NOT NULL DEFAULT 0
        CHECK (hedge_delay_ms = 0 OR hedge_delay_ms BETWEEN 10 AND 60000),
    ADD COLUMN hedge_ttft_percentile integer NOT NULL DEFAULT 0
        CHECK (hedge_ttft_percentile = 0 OR hedge_ttft_percentile BETWEEN 50 AND 99),
    ADD CONSTRAINT models_hedge_consistent CHECK (
        (hedge_mode = 'fixed_delay' AND hedge_delay_ms > 0 AND hedge_ttft_percentile = 0)
        OR (hedge_mode = 'live_ttft')
        OR (hedge_mode IN ('', 'off') AND hedge_delay_ms = 0 AND hedge_ttft_percentile = 0)
    );
