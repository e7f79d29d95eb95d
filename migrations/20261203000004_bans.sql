-- Bans (issue #23): a verdict may keep its users out of its room, or of every room of its app,
-- for a time. The verdict keeps what it asked (ban_seconds, ban_scope: part of its identity, as
-- its users are); `bans` holds what is in force.
ALTER TABLE verdicts
    ADD COLUMN ban_seconds integer CHECK (ban_seconds BETWEEN 1 AND 31536000),
    ADD COLUMN ban_scope   text CHECK (ban_scope IN ('room', 'app')),
    ADD CONSTRAINT verdicts_ban_whole CHECK ((ban_seconds IS NULL) = (ban_scope IS NULL));

-- One row per ban of one user in one place. A second verdict banning the same user in the same
-- place extends the open row (to the later end) instead of adding one, and is appended to
-- verdict_ids. A row ends (ended_at) when it is lifted, or when a new ban for its place finds it
-- already expired (then ended_at = expires_at and a new row starts).
CREATE TABLE bans (
    id              bigserial PRIMARY KEY,
    vendor          text NOT NULL CHECK (vendor IN ('zego', 'trtc')),
    app_id          bigint NOT NULL,
    user_id         text NOT NULL,
    scope           text NOT NULL CHECK (scope IN ('room', 'app')),
    -- The room as verdicts hold it (text and whether it was a TRTC numeric room); NULL for scope 'app'.
    room_id         text,
    room_id_numeric boolean,
    -- The verdict whose ban ends last (the one that set expires_at) …
    verdict_id      text NOT NULL,
    -- … and every verdict that set or extended this ban, oldest first (the last 100).
    verdict_ids     text[] NOT NULL,
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Last extended.
    updated_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    ended_at        timestamptz,
    lifted_at       timestamptz,
    lifted_by       text,
    lift_reason     text,
    -- The vendor rule that enforces the ban on the vendor's side too (ZEGO SetForbidUserRule with
    -- [[zego]] forbid_rules = true); 'none' where there is none.
    rule_state      text NOT NULL DEFAULT 'none'
        CHECK (rule_state IN ('none', 'pending', 'in_force', 'delete_due', 'deleted', 'refused_limit',
                              'not_enabled', 'failed')),
    rule_expires_at timestamptz,
    rule_error      text,
    CHECK ((scope = 'app') = (room_id IS NULL)),
    CHECK ((room_id IS NULL) = (room_id_numeric IS NULL))
);
-- At most one open ban per user and place.
CREATE UNIQUE INDEX bans_open ON bans (vendor, app_id, user_id, scope, (coalesce(room_id, '')),
                                       (coalesce(room_id_numeric, false)))
    WHERE ended_at IS NULL;
-- The check: one index probe per user among open bans.
CREATE INDEX bans_check ON bans (vendor, app_id, user_id, expires_at) WHERE ended_at IS NULL;
-- Listing, newest first in keyset pages, by user or by room.
CREATE INDEX bans_user ON bans (vendor, app_id, user_id, id);
CREATE INDEX bans_room ON bans (vendor, app_id, room_id, id) WHERE room_id IS NOT NULL;
-- The rules lane of a ZEGO app with forbid_rules: bans whose rule needs a call, and rules to
-- re-arm before they lapse.
CREATE INDEX bans_rule_due ON bans (vendor, app_id, id) WHERE rule_state IN ('pending', 'delete_due');
CREATE INDEX bans_rule_in_force ON bans (vendor, app_id, rule_expires_at) WHERE rule_state = 'in_force';
