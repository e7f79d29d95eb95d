-- Enforcement reads its work from PostgreSQL (issue: ack as soon as a verdict is recorded).
-- A pending kick carries its own retry schedule, and the columns the owner of its vendor quota
-- finds it by; quota ownership across replicas is coordinated through two small tables.

ALTER TABLE kicks
    ADD COLUMN vendor            text,
    ADD COLUMN app_id            bigint,
    -- When the kick may next be attempted (arrival for a new kick); NULL once it has ended.
    ADD COLUMN next_attempt_at   timestamptz,
    -- The first vendor call that carried the user: the retry deadline counts from here, across
    -- restarts and takeovers.
    ADD COLUMN first_attempt_at  timestamptz,
    -- Retries scheduled since the first attempt (the backoff exponent); a replay resets it.
    ADD COLUMN scheduled_retries integer NOT NULL DEFAULT 0;

UPDATE kicks k SET vendor = v.vendor, app_id = v.app_id FROM verdicts v WHERE v.verdict_id = k.verdict_id;
UPDATE kicks SET next_attempt_at = updated_at WHERE status = 'pending';
ALTER TABLE kicks ALTER COLUMN vendor SET NOT NULL, ALTER COLUMN app_id SET NOT NULL;

-- The owner's fetch: due kicks of one app, oldest first. Only pending rows are indexed, so the
-- index stays as small as the backlog.
CREATE INDEX kicks_due ON kicks (vendor, app_id, next_attempt_at) WHERE status = 'pending';

-- Live replicas (`bouncer run` processes), each renewing its row while it runs.
CREATE TABLE workers (
    worker_id    text PRIMARY KEY,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

-- One row per vendor quota group (`zego:<AppId>`, `trtc:<SecretId>`): who may call it. A lease:
-- the owner renews it; anyone may take it once `expires_at` has passed (term + 1). The new owner's
-- first call waits until a vendor window after `previous_expires_at`, the last moment the
-- previous owner could have started a call.
CREATE TABLE quota_owners (
    quota_group         text PRIMARY KEY,
    worker_id           text NOT NULL,
    term                bigint NOT NULL DEFAULT 1,
    acquired_at         timestamptz NOT NULL DEFAULT now(),
    confirmed_at        timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    previous_expires_at timestamptz
);
