-- The catalog: providers, models, and endpoints (a model served by a provider at a price).
-- Prices are NUMERIC in USD per million tokens; never floats.

CREATE TABLE providers (
    id           text        PRIMARY KEY,
    display_name text        NOT NULL,
    -- ApiFormat without its prefix, lower case: 'openai_chat', 'anthropic_messages', 'gemini'.
    api_format   text        NOT NULL,
    base_url     text        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE models (
    id                text        PRIMARY KEY,
    display_name      text        NOT NULL,
    description       text        NOT NULL DEFAULT '',
    context_length    integer     NOT NULL CHECK (context_length > 0),
    input_modalities  text[]      NOT NULL DEFAULT '{}',
    output_modalities text[]      NOT NULL DEFAULT '{}',
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE endpoints (
    id                    text        PRIMARY KEY,
    model_id              text        NOT NULL REFERENCES models (id),
    provider_id           text        NOT NULL REFERENCES providers (id),
    upstream_model        text        NOT NULL,
    prompt_price          numeric     NOT NULL CHECK (prompt_price >= 0),
    completion_price      numeric     NOT NULL CHECK (completion_price >= 0),
    -- NULL means "the prompt price".
    cached_prompt_price   numeric     CHECK (cached_prompt_price >= 0),
    cache_write_price     numeric     CHECK (cache_write_price >= 0),
    context_length        integer     NOT NULL CHECK (context_length > 0),
    -- 0 means no limit below the context length.
    max_completion_tokens integer     NOT NULL DEFAULT 0 CHECK (max_completion_tokens >= 0),
    supported_parameters  text[]      NOT NULL DEFAULT '{}',
    quantization          text        NOT NULL DEFAULT '',
    -- EndpointStatus without its prefix, lower case: 'active', 'disabled'.
    status                text        NOT NULL DEFAULT 'active',
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT endpoints_id_is_provider_and_model CHECK (id = provider_id || ':' || model_id)
);

CREATE INDEX endpoints_model_id ON endpoints (model_id);
CREATE INDEX endpoints_provider_id ON endpoints (provider_id);

-- One row. Every write transaction that changes the catalog bumps it last (the row lock then
-- orders commits by version) and calls pg_notify('switchboard_catalog', <version>).
CREATE TABLE catalog_version (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO catalog_version (singleton, version) VALUES (true, 1);
