-- Stall limits (StallLimits in catalog.proto): how long a router waits on an upstream stream
-- for its first byte, and between two reads after it, before calling it stalled. In
-- milliseconds; 0 inherits the next level (endpoint, then model, then the router's defaults).
-- The bounds repeat switchboard_catalog.validate's, so no writer can store what the RPC
-- refuses. Not part of a price: the history trigger (0004, 0006) ignores these columns.
ALTER TABLE models
    ADD COLUMN first_byte_ms integer NOT NULL DEFAULT 0
        CHECK (first_byte_ms = 0 OR first_byte_ms BETWEEN 100 AND 3600000),
    ADD COLUMN idle_ms integer NOT NULL DEFAULT 0
        CHECK (idle_ms = 0 OR idle_ms BETWEEN 100 AND 3600000);

ALTER TABLE endpoints
    ADD COLUMN first_byte_ms integer NOT NULL DEFAULT 0
        CHECK (first_byte_ms = 0 OR first_byte_ms BETWEEN 100 AND 3600000),
    ADD COLUMN idle_ms integer NOT NULL DEFAULT 0
        CHECK (idle_ms = 0 OR idle_ms BETWEEN 100 AND 3600000);
