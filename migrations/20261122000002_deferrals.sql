-- Head-of-line safety: a verdict whose app cannot take more work is handed to the deferral queue
-- (publisher-confirmed) and comes back later. Each hand-off is counted here; it is not a delivery.
ALTER TABLE verdicts
    ADD COLUMN deferrals        integer NOT NULL DEFAULT 0,
    ADD COLUMN last_deferred_at timestamptz;
