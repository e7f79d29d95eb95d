-- Outcome events (issue #25): a transactional outbox. An event row is written in the transaction
-- that finishes a verdict (or lifts a ban, records a re-entry's re-kick); the relay publishes it
-- to RabbitMQ with publisher confirms and deletes it only once the broker confirmed it.

-- The trace context a verdict was delivered with (W3C `traceparent` AMQP header), carried into its
-- events and its log lines.
ALTER TABLE verdicts ADD COLUMN traceparent text;

CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    -- The CloudEvents id (UUIDv7) and AMQP message_id: the same on every send of this event.
    event_id        uuid NOT NULL UNIQUE,
    -- bouncer.verdict.finished, bouncer.ban.lifted, bouncer.reentry.kicked
    type            text NOT NULL,
    -- The CloudEvents subject (the verdict id): events of one subject are sent in id order, one
    -- at a time.
    subject         text NOT NULL,
    routing_key     text NOT NULL,
    -- The whole CloudEvents document (structured mode), as sent.
    event           jsonb NOT NULL,
    traceparent     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text
);
-- The relay's fetch: the oldest due rows, and whether an older row of the same subject waits.
CREATE INDEX outbox_subject ON outbox (subject, id);
-- Rows are inserted and deleted at the rate verdicts finish: vacuum the table often.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);

-- A UUIDv7 (RFC 9562: 48-bit Unix milliseconds, version 7, variant 10, random rest) for events
-- written by a statement alone (a lift, a re-kick); PostgreSQL 15 has no uuidv7().
CREATE FUNCTION bouncer_uuidv7() RETURNS uuid AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$ LANGUAGE sql VOLATILE;
