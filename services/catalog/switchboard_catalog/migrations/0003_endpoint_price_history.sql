-- Every price each endpoint has had, and when it took effect, so that "what did this endpoint
-- cost at time t" has an exact answer: the row with the latest effective_at at or before t.
-- Metering checks the cost of every usage event against it (WatchCatalog price_history).
--
-- A row is appended by the trigger below whenever an endpoint is created or one of its four
-- prices really changes (an equal NUMERIC, 0.15 for 0.150, is no change), in the transaction
-- that made the change, whoever wrote it (the store, the seed, a manual fix). effective_at is
-- now(): the start of that transaction, so every change one transaction makes shares it, and
-- no router can have charged the new price before it (it sees the change after the commit).
-- Rows are only ever inserted: a second trigger refuses UPDATE, DELETE and TRUNCATE.
CREATE TABLE endpoint_prices (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id         text        NOT NULL REFERENCES endpoints (id),
    effective_at        timestamptz NOT NULL,
    prompt_price        numeric     NOT NULL,
    completion_price    numeric     NOT NULL,
    -- NULL means "the prompt price", as in endpoints.
    cached_prompt_price numeric,
    cache_write_price   numeric
);

CREATE INDEX endpoint_prices_endpoint_time ON endpoint_prices (endpoint_id, effective_at, id);

-- Endpoints that exist already: their current price, in effect since before history began
-- (recorded as the Unix epoch, older than any usage event the ledger accepts). Their
-- updated_at would be too late: it moves on any change, and the price may be older.
INSERT INTO endpoint_prices
    (endpoint_id, effective_at, prompt_price, completion_price, cached_prompt_price,
     cache_write_price)
SELECT id, 'epoch'::timestamptz, prompt_price, completion_price, cached_prompt_price,
       cache_write_price
FROM endpoints
ORDER BY id;

CREATE FUNCTION endpoint_prices_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT'
        OR (NEW.prompt_price, NEW.completion_price, NEW.cached_prompt_price,
            NEW.cache_write_price)
        IS DISTINCT FROM (OLD.prompt_price, OLD.completion_price, OLD.cached_prompt_price,
            OLD.cache_write_price)
    THEN
        INSERT INTO endpoint_prices
            (endpoint_id, effective_at, prompt_price, completion_price, cached_prompt_price,
             cache_write_price)
        VALUES (NEW.id, now(), NEW.prompt_price, NEW.completion_price,
                NEW.cached_prompt_price, NEW.cache_write_price);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER endpoints_price_history
    AFTER INSERT OR UPDATE OF prompt_price, completion_price, cached_prompt_price,
        cache_write_price ON endpoints
    FOR EACH ROW EXECUTE FUNCTION endpoint_prices_record();

CREATE FUNCTION endpoint_prices_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'endpoint_prices is append-only: % refused', TG_OP;
END
$$;

CREATE TRIGGER endpoint_prices_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON endpoint_prices
    FOR EACH STATEMENT EXECUTE FUNCTION endpoint_prices_append_only();
