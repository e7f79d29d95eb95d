-- Bouncer's audit trail. Table and column names are a public contract (ops query them directly);
-- add, never rename.

-- One row per verdict (the idempotency key is verdict_id).
CREATE TABLE verdicts (
    verdict_id      text PRIMARY KEY,
    vendor          text NOT NULL CHECK (vendor IN ('zego', 'trtc')),
    app_id          bigint NOT NULL,
    -- Text form of the room; room_id_numeric says it was a JSON integer (TRTC RemoveUser).
    room_id         text NOT NULL,
    room_id_numeric boolean NOT NULL,
    user_ids        text[] NOT NULL,
    reason          text,
    source          text,
    detected_at     timestamptz,
    evidence        jsonb,
    -- The message exactly as received (first delivery).
    payload         jsonb NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    -- How many times the message arrived (redeliveries and republishes included).
    deliveries      integer NOT NULL DEFAULT 1,
    last_delivery_at timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    finished_at     timestamptz
);
CREATE INDEX verdicts_received_at ON verdicts (received_at);
CREATE INDEX verdicts_room ON verdicts (vendor, app_id, room_id, received_at);
CREATE INDEX verdicts_app ON verdicts (app_id, received_at);
CREATE INDEX verdicts_unfinished ON verdicts (status, received_at) WHERE status <> 'done';

-- One row per (verdict, user): the per-user outcome.
CREATE TABLE kicks (
    verdict_id        text NOT NULL REFERENCES verdicts (verdict_id) ON DELETE CASCADE,
    user_id           text NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'kicked', 'gone', 'failed')),
    -- Vendor calls that carried this user for this verdict.
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text,
    vendor_request_id text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (verdict_id, user_id)
);
CREATE INDEX kicks_user ON kicks (user_id, updated_at);
CREATE INDEX kicks_unfinished ON kicks (status) WHERE status IN ('pending', 'failed');

-- One row per vendor call (attempt), with what the vendor answered.
CREATE TABLE kick_attempts (
    id                bigserial PRIMARY KEY,
    vendor            text NOT NULL,
    app_id            bigint NOT NULL,
    room_id           text NOT NULL,
    room_id_numeric   boolean NOT NULL DEFAULT false,
    action            text NOT NULL,
    user_ids          text[] NOT NULL,
    -- Every verdict whose users this call carried.
    verdict_ids       text[] NOT NULL,
    -- 1 for the first call carrying these users, 2 for the first retry, ...
    attempt           integer NOT NULL,
    started_at        timestamptz NOT NULL,
    latency_ms        integer,
    http_status       integer,
    vendor_code       text,
    vendor_message    text,
    vendor_request_id text,
    outcome           text NOT NULL CHECK (outcome IN ('ok', 'gone', 'retry', 'permanent')),
    -- Why a retry or a permanent failure happened, in Bouncer's words (timeout, HTTP 502, ...).
    error             text
);
CREATE INDEX kick_attempts_started ON kick_attempts (started_at);
CREATE INDEX kick_attempts_app ON kick_attempts (vendor, app_id, started_at);
CREATE INDEX kick_attempts_room ON kick_attempts (room_id, started_at);
CREATE INDEX kick_attempts_verdicts ON kick_attempts USING gin (verdict_ids);
CREATE INDEX kick_attempts_users ON kick_attempts USING gin (user_ids);

-- Messages that broke the contract: recorded, then dead-lettered.
CREATE TABLE rejected_messages (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    reason       text NOT NULL,
    -- The contract field to blame, when there is one, and the rule's stable name.
    field        text,
    rule         text,
    -- The body, capped (see payload_size for the real size).
    payload      bytea NOT NULL,
    payload_size integer NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{}'::jsonb,
    verdict_id   text
);
CREATE INDEX rejected_messages_received ON rejected_messages (received_at);

-- For humans: each user of each verdict with its outcome.
CREATE VIEW audit_log AS
SELECT v.received_at,
       v.verdict_id,
       v.vendor,
       v.app_id,
       v.room_id,
       v.room_id_numeric,
       k.user_id,
       k.status          AS kick_status,
       v.status          AS verdict_status,
       k.attempts,
       k.last_error,
       k.vendor_request_id,
       k.updated_at,
       v.reason,
       v.source,
       v.detected_at,
       v.deliveries,
       v.finished_at
FROM verdicts v
JOIN kicks k USING (verdict_id);
