-- no-transaction
-- The console's room-only search (no vendor or app given) read every verdict: verdicts_room leads
-- with vendor and app. Built concurrently, so an upgrade on a large trail does not block intake.
CREATE INDEX CONCURRENTLY IF NOT EXISTS verdicts_room_only ON verdicts (room_id, received_at);
