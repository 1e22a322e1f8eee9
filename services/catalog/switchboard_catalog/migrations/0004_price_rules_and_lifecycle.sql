-- Prices as providers publish them, and model and endpoint lifecycles (issue 13).
--
-- price_rules holds every part of an endpoint's price (switchboard.common.v1.Pricing) beyond
-- the four classic columns: the other rates (1-hour cache writes, input by modality, cached
-- audio, audio output, reasoning, fees), tiers by prompt length and time-of-day windows. It is
-- the proto's JSON mapping (field names as in the proto, decimals as canonical strings, e.g.
-- {"cache_write_1h_usd_per_mtok": "6", "tiers": [{"prompt_tokens_above": "200000",
-- "pricing": {...}}]}) with the four classic fields left out; '{}' means none. The catalog
-- writes it canonically (switchboard_catalog.convert), so equal prices are equal jsonb.
ALTER TABLE endpoints ADD COLUMN price_rules jsonb NOT NULL DEFAULT '{}';
ALTER TABLE endpoint_prices ADD COLUMN price_rules jsonb NOT NULL DEFAULT '{}';

-- When the provider announced the retirement (deprecated: still served) and when it stops
-- serving (retired: not routed to); NULL means not announced. successor_model_id names the
-- model to move to ('' when none is named); it is not a foreign key, so a successor may be
-- added after the model that names it.
ALTER TABLE models
    ADD COLUMN deprecation_at timestamptz,
    ADD COLUMN retirement_at timestamptz,
    ADD COLUMN successor_model_id text NOT NULL DEFAULT '',
    ADD CONSTRAINT models_retirement_after_deprecation
        CHECK (retirement_at IS NULL OR deprecation_at IS NULL OR retirement_at >= deprecation_at),
    ADD CONSTRAINT models_successor_is_another_model CHECK (successor_model_id <> id);
ALTER TABLE endpoints
    ADD COLUMN deprecation_at timestamptz,
    ADD COLUMN retirement_at timestamptz,
    ADD CONSTRAINT endpoints_retirement_after_deprecation
        CHECK (retirement_at IS NULL OR deprecation_at IS NULL OR retirement_at >= deprecation_at);

-- The history now records a change of any part of the price: the four columns or the rules
-- (jsonb equality: a rewrite of the same rules is no change).
CREATE OR REPLACE FUNCTION endpoint_prices_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT'
        OR (NEW.prompt_price, NEW.completion_price, NEW.cached_prompt_price,
            NEW.cache_write_price, NEW.price_rules)
        IS DISTINCT FROM (OLD.prompt_price, OLD.completion_price, OLD.cached_prompt_price,
            OLD.cache_write_price, OLD.price_rules)
    THEN
        INSERT INTO endpoint_prices
            (endpoint_id, effective_at, prompt_price, completion_price, cached_prompt_price,
             cache_write_price, price_rules)
        VALUES (NEW.id, now(), NEW.prompt_price, NEW.completion_price,
                NEW.cached_prompt_price, NEW.cache_write_price, NEW.price_rules);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER endpoints_price_history ON endpoints;
CREATE TRIGGER endpoints_price_history
    AFTER INSERT OR UPDATE OF prompt_price, completion_price, cached_prompt_price,
        cache_write_price, price_rules ON endpoints
    FOR EACH ROW EXECUTE FUNCTION endpoint_prices_record();
