-- AddCredits may carry an idempotency key: a retried grant with the same request_id for the
-- account adds nothing.
ALTER TABLE credit_grants ADD COLUMN request_id text;
CREATE UNIQUE INDEX credit_grants_request ON credit_grants (account_id, request_id)
    WHERE request_id IS NOT NULL;
