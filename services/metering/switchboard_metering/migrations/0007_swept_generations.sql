-- A generation recorded by metering's liveness sweep (its router stopped beating: dead, or
-- only cut off from Redis) is provisional: swept marks the row, and the router's own event for
-- the same (generation_id, attempt, created_at), when it comes, replaces the row's values
-- once and moves the difference into usage_rollups (switchboard_metering.ledger_corrections).
-- Every row written before this migration came from events that were not marked: false.
--
-- ADD COLUMN with a constant default rewrites no row (PostgreSQL 11+), and on the
-- partitioned generations it reaches every partition, present and future.

ALTER TABLE generations ADD COLUMN swept boolean NOT NULL DEFAULT false;
