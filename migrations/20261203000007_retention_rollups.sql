-- The audit trail at scale (issue #26): per-minute rollups that the console reads instead of raw
-- rows, and the indexes retention needs to find what it may prune oldest first.

-- What the trail changed, one row per (metric, minute, vendor, app, key) and transaction, written
-- by the triggers below in the transaction that changes the trail: a crash loses a change and its
-- delta together, a replay moves a verdict from one status to another (-1, +1). Append-only, so
-- writers never wait on one another's counters (a trigger updating a hot counter row would
-- serialise every intake batch behind the last). The maintenance task folds them into `rollups`.
CREATE TABLE rollup_deltas (
    id         bigserial PRIMARY KEY,
    metric     text NOT NULL,
    minute     timestamptz NOT NULL,
    vendor     text NOT NULL,
    app_id     bigint NOT NULL,
    key        text NOT NULL,
    n          bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The folded counts. Metrics (README, "Retention and rollups"):
--   verdicts     minute received, key = the verdict's status now (pending / done / failed)
--   latency      minute received, key = upper bound in ms of finished_at - received_at (finished only)
--   calls        minute started,  key = the call's outcome (ok / gone / retry / permanent)
--   call_users   minute started,  key = outcome, n = users the calls carried
--   call_codes   minute started,  key = vendor code (or "http <status>") of calls not ok
--   rejected     minute received, key = the broken rule (vendor '', app 0)
CREATE TABLE rollups (
    metric  text NOT NULL,
    minute  timestamptz NOT NULL,
    vendor  text NOT NULL,
    app_id  bigint NOT NULL,
    key     text NOT NULL,
    n       bigint NOT NULL,
    PRIMARY KEY (metric, minute, vendor, app_id, key)
);

-- Latency buckets (ms): fine where enforcement normally is, coarse in the tail.
CREATE FUNCTION bouncer_latency_bucket(d interval) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce((SELECT min(b)::text FROM unnest(ARRAY[10, 25, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500,
                                                          2000, 3000, 5000, 10000, 30000, 60000, 300000]) b
                     WHERE extract(epoch FROM d) * 1000 <= b), '+Inf')
$$;

-- New verdicts: one delta per (minute, vendor, app, status) of the statement (an intake batch is
-- one statement), and their latency if they arrive finished (a bulk load may).
CREATE FUNCTION bouncer_rollup_verdicts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rollup_deltas (metric, minute, vendor, app_id, key, n)
    SELECT 'verdicts', date_trunc('minute', received_at), vendor, app_id, status, count(*)
    FROM new_rows GROUP BY 2, 3, 4, 5
    UNION ALL
    SELECT 'latency', date_trunc('minute', received_at), vendor, app_id,
           bouncer_latency_bucket(finished_at - received_at), count(*)
    FROM new_rows WHERE finished_at IS NOT NULL GROUP BY 2, 3, 4, 5;
    RETURN NULL;
END $$;
CREATE TRIGGER verdicts_rollup_insert AFTER INSERT ON verdicts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bouncer_rollup_verdicts_inserted();

-- A verdict that finishes, or that a replay reopens: its old status and latency out, the new in.
-- Row-level with a WHEN clause, so the many updates that change neither (a redelivery counted)
-- cost nothing here.
CREATE FUNCTION bouncer_rollup_verdict_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    m timestamptz := date_trunc('minute', NEW.received_at);
BEGIN
    IF OLD.status IS DISTINCT FROM NEW.status THEN
        INSERT INTO rollup_deltas (metric, minute, vendor, app_id, key, n)
        VALUES ('verdicts', m, NEW.vendor, NEW.app_id, OLD.status, -1),
               ('verdicts', m, NEW.vendor, NEW.app_id, NEW.status, 1);
    END IF;
    IF OLD.finished_at IS DISTINCT FROM NEW.finished_at THEN
        IF OLD.finished_at IS NOT NULL THEN
            INSERT INTO rollup_deltas (metric, minute, vendor, app_id, key, n)
            VALUES ('latency', m, NEW.vendor, NEW.app_id, bouncer_latency_bucket(OLD.finished_at - OLD.received_at), -1);
        END IF;
        IF NEW.finished_at IS NOT NULL THEN
            INSERT INTO rollup_deltas (metric, minute, vendor, app_id, key, n)
            VALUES ('latency', m, NEW.vendor, NEW.app_id, bouncer_latency_bucket(NEW.finished_at - NEW.received_at), 1);
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER verdicts_rollup_update AFTER UPDATE OF status, finished_at ON verdicts
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.finished_at IS DISTINCT FROM NEW.finished_at)
    EXECUTE FUNCTION bouncer_rollup_verdict_changed();

-- Vendor calls are written once and never changed.
CREATE FUNCTION bouncer_rollup_calls_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rollup_deltas (metric, minute, vendor, app_id, key, n)
    SELECT 'calls', date_trunc('minute', started_at), vendor, app_id, outcome, count(*)
    FROM new_rows GROUP BY 2, 3, 4, 5
    UNION ALL
    SELECT 'call_users', date_trunc('minute', started_at), vendor, app_id, outcome, sum(cardinality(user_ids))
    FROM new_rows GROUP BY 2, 3, 4, 5
    UNION ALL
    SELECT 'call_codes', date_trunc('minute', started_at), vendor, app_id,
           coalesce(vendor_code, 'http ' || coalesce(http_status::text, 'none')), count(*)
    FROM new_rows WHERE outcome <> 'ok' GROUP BY 2, 3, 4, 5;
    RETURN NULL;
END $$;
CREATE TRIGGER kick_attempts_rollup_insert AFTER INSERT ON kick_attempts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bouncer_rollup_calls_inserted();

CREATE FUNCTION bouncer_rollup_rejected_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rollup_deltas (metric, minute, vendor, app_id, key, n)
    SELECT 'rejected', date_trunc('minute', received_at), '', 0, coalesce(rule, 'other'), count(*)
    FROM new_rows GROUP BY 2, 5;
    RETURN NULL;
END $$;
CREATE TRIGGER rejected_messages_rollup_insert AFTER INSERT ON rejected_messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bouncer_rollup_rejected_inserted();

-- The counts of the trail as it is now (verdicts, calls, rejected messages): later changes are
-- counted by the triggers from here on.
INSERT INTO rollups (metric, minute, vendor, app_id, key, n)
SELECT metric, minute, vendor, app_id, key, sum(n) FROM (
    SELECT 'verdicts' AS metric, date_trunc('minute', received_at) AS minute, vendor, app_id, status AS key, count(*) AS n
    FROM verdicts GROUP BY 2, 3, 4, 5
    UNION ALL
    SELECT 'latency', date_trunc('minute', received_at), vendor, app_id, bouncer_latency_bucket(finished_at - received_at), count(*)
    FROM verdicts WHERE finished_at IS NOT NULL GROUP BY 2, 3, 4, 5
    UNION ALL
    SELECT 'calls', date_trunc('minute', started_at), vendor, app_id, outcome, count(*)
    FROM kick_attempts GROUP BY 2, 3, 4, 5
    UNION ALL
    SELECT 'call_users', date_trunc('minute', started_at), vendor, app_id, outcome, sum(cardinality(user_ids))
    FROM kick_attempts GROUP BY 2, 3, 4, 5
    UNION ALL
    SELECT 'call_codes', date_trunc('minute', started_at), vendor, app_id,
           coalesce(vendor_code, 'http ' || coalesce(http_status::text, 'none')), count(*)
    FROM kick_attempts WHERE outcome <> 'ok' GROUP BY 2, 3, 4, 5
    UNION ALL
    SELECT 'rejected', date_trunc('minute', received_at), '', 0, coalesce(rule, 'other'), count(*)
    FROM rejected_messages GROUP BY 2, 5
) t GROUP BY 1, 2, 3, 4, 5;

-- Retention finds the oldest prunable rows by these (verdicts, calls and rejected messages already
-- have theirs).
CREATE INDEX kick_confirmations_received ON kick_confirmations (received_at);
CREATE INDEX bans_ended ON bans ((coalesce(ended_at, expires_at)));
-- "Does an active ban still need this verdict?" while pruning it.
CREATE INDEX bans_verdict ON bans (verdict_id) WHERE ended_at IS NULL;

-- Churned continuously (folded every second): vacuum early.
ALTER TABLE rollup_deltas SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);
