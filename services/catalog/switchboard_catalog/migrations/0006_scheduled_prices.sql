-- Prices announced to take effect later (Endpoint.scheduled_prices): a provider's dated price
-- change, e.g. an introductory price that ends on a date.
--
-- One row per endpoint and time, its whole price in the same columns as endpoints (the four
-- classic rates, everything else in price_rules: migration 0004). The table is mutable: an
-- upsert of the endpoint replaces its rows (switchboard_catalog.store), and the catalog's
-- scheduler (switchboard_catalog.scheduler) moves each row into endpoints when effective_at
-- comes, in one transaction that deletes the row; the history trigger then appends the
-- endpoint_prices row, effective exactly at effective_at (below).
CREATE TABLE endpoint_scheduled_prices (
    endpoint_id         text        NOT NULL REFERENCES endpoints (id),
    effective_at        timestamptz NOT NULL,
    prompt_price        numeric     NOT NULL,
    completion_price    numeric     NOT NULL,
    -- NULL means "the prompt price", as in endpoints.
    cached_prompt_price numeric,
    cache_write_price   numeric,
    price_rules         jsonb       NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, effective_at)
);

-- The scheduler's question: what is due next?
CREATE INDEX endpoint_scheduled_prices_due ON endpoint_scheduled_prices (effective_at);

-- The history row's effective_at: now() (the start of the transaction), unless the
-- transaction says when the price took effect with
--     SELECT set_config('switchboard.price_effective_at', '<timestamptz>', true)
-- (SET LOCAL: it ends with the transaction), as the scheduler does with the scheduled time.
-- That time is kept within [the endpoint's latest history row, now()]: history stays in order
-- and no price is recorded as taking effect later than routers could see it.
CREATE OR REPLACE FUNCTION endpoint_prices_record() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wanted text := current_setting('switchboard.price_effective_at', true);
    at timestamptz := now();
BEGIN
    IF TG_OP = 'INSERT'
        OR (NEW.prompt_price, NEW.completion_price, NEW.cached_prompt_price,
            NEW.cache_write_price, NEW.price_rules)
        IS DISTINCT FROM (OLD.prompt_price, OLD.completion_price, OLD.cached_prompt_price,
            OLD.cache_write_price, OLD.price_rules)
    THEN
        IF wanted IS NOT NULL AND wanted <> '' THEN
            at := least(now(), greatest(wanted::timestamptz, coalesce(
                (SELECT max(h.effective_at) FROM endpoint_prices h WHERE h.endpoint_id = NEW.id),
                '-infinity'::timestamptz)));
        END IF;
        INSERT INTO endpoint_prices
            (endpoint_id, effective_at, prompt_price, completion_price, cached_prompt_price,
             cache_write_price, price_rules)
        VALUES (NEW.id, at, NEW.prompt_price, NEW.completion_price,
                NEW.cached_prompt_price, NEW.cache_write_price, NEW.price_rules);
    END IF;
    RETURN NULL;
END
$$;
