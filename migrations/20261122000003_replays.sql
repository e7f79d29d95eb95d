-- Every replay (`bouncer replay`): who asked, when, and from what state.
CREATE TABLE replays (
    id              bigserial PRIMARY KEY,
    verdict_id      text NOT NULL REFERENCES verdicts (verdict_id) ON DELETE CASCADE,
    actor           text NOT NULL,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    previous_status text NOT NULL,
    -- False if the broker did not confirm the re-enqueued message (the verdict was restored).
    published       boolean NOT NULL DEFAULT false
);
CREATE INDEX replays_verdict ON replays (verdict_id, requested_at);

ALTER TABLE verdicts ADD COLUMN replays integer NOT NULL DEFAULT 0;
