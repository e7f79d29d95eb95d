-- Re-entry (issue #24): the vendors' room callbacks tell Bouncer when a user enters or leaves a
-- room. A banned user's entry is recorded here and kicked again at once by the owner of the app's
-- quota; a server kick the vendor reports back confirms Bouncer's kick.

-- One row per entry of a banned user into a room the ban covers, with its re-kick's state (the
-- same schedule columns as `kicks`: the quota owner fetches due rows by them).
CREATE TABLE reentries (
    id                bigserial PRIMARY KEY,
    vendor            text NOT NULL CHECK (vendor IN ('zego', 'trtc')),
    app_id            bigint NOT NULL,
    -- The room as the vendor named it (text, and whether TRTC sent a number).
    room_id           text NOT NULL,
    room_id_numeric   boolean NOT NULL,
    user_id           text NOT NULL,
    -- The ban that held when the user came back, and the verdict that set it.
    ban_id            bigint NOT NULL,
    verdict_id        text NOT NULL,
    -- The vendor's identity of this entry (ZEGO: session and login time; TRTC: the event's time
    -- and unique id): a redelivered callback finds its row here and acts on nothing.
    event_key         text NOT NULL,
    -- When the vendor says the user entered, and when the callback reached Bouncer (and which
    -- replica took it): callback → vendor call latency counts from received_at.
    entered_at        timestamptz,
    received_at       timestamptz NOT NULL,
    received_by       text,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'kicked', 'gone', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text,
    vendor_request_id text,
    next_attempt_at   timestamptz,
    first_attempt_at  timestamptz,
    scheduled_retries integer NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (vendor, app_id, event_key)
);
-- The owner's fetch: due re-kicks of one app (only pending rows: as small as the work).
CREATE INDEX reentries_due ON reentries (vendor, app_id, next_attempt_at) WHERE status = 'pending';
-- A verdict's story and a user's page.
CREATE INDEX reentries_verdict ON reentries (verdict_id, id);
CREATE INDEX reentries_user ON reentries (user_id, received_at);
CREATE INDEX reentries_received ON reentries (received_at);

-- The vendor's word that a user Bouncer kicked left the room because a server API removed them
-- (ZEGO room_logout reason 3, TRTC 104 Reason 3): one row per such callback that matched a kick
-- (verdict_id + user_id) or a re-kick (reentry_id).
CREATE TABLE kick_confirmations (
    id              bigserial PRIMARY KEY,
    vendor          text NOT NULL CHECK (vendor IN ('zego', 'trtc')),
    app_id          bigint NOT NULL,
    room_id         text NOT NULL,
    room_id_numeric boolean NOT NULL,
    user_id         text NOT NULL,
    verdict_id      text,
    reentry_id      bigint,
    -- When the vendor says the user left, and when the callback reached Bouncer.
    left_at         timestamptz,
    received_at     timestamptz NOT NULL,
    event_key       text NOT NULL,
    UNIQUE (vendor, app_id, event_key),
    -- Both NULL until linked: a removal may arrive before the kick's result is written.
    CHECK (verdict_id IS NULL OR reentry_id IS NULL)
);
CREATE INDEX kick_confirmations_kick ON kick_confirmations (verdict_id, user_id) WHERE verdict_id IS NOT NULL;
CREATE INDEX kick_confirmations_reentry ON kick_confirmations (reentry_id) WHERE reentry_id IS NOT NULL;

-- ZEGO's signature covers (secret, timestamp, nonce) but not the body: a captured triple would
-- verify with any body. Every accepted ZEGO callback's triple is kept here for the window in which
-- its timestamp is accepted (5 minutes either way), so a second use is refused on every replica.
CREATE TABLE callback_nonces (
    app_id    bigint NOT NULL,
    timestamp bigint NOT NULL,
    nonce     text NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, timestamp, nonce)
);
CREATE INDEX callback_nonces_seen ON callback_nonces (seen_at);
