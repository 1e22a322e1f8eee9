-- Spend limits per key (USD; NULL: none) and prepaid credit per account.
ALTER TABLE api_keys
    ADD COLUMN limit_total   numeric CHECK (limit_total >= 0),
    ADD COLUMN limit_daily   numeric CHECK (limit_daily >= 0),
    ADD COLUMN limit_monthly numeric CHECK (limit_monthly >= 0);

-- An account becomes prepaid with its first credit grant; its keys then spend only credit.
ALTER TABLE accounts ADD COLUMN prepaid boolean NOT NULL DEFAULT false;

CREATE TABLE credit_grants (
    id          bigserial PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts (id),
    amount      numeric NOT NULL CHECK (amount > 0),
    note        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX credit_grants_account ON credit_grants (account_id);
