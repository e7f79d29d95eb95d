-- Let the per-user status update be a HOT update (no index entry rewritten): nothing queried
-- kicks by status through kicks_unfinished, and user lookups need user_id, not updated_at.
-- Free space on each page keeps the new row versions on the same page.
DROP INDEX IF EXISTS kicks_unfinished;
DROP INDEX IF EXISTS kicks_user;
CREATE INDEX kicks_user ON kicks (user_id);
ALTER TABLE kicks SET (fillfactor = 80);
