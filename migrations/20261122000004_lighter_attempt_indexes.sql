-- Measured under load (BENCHMARKS.md): maintaining a GIN index over kick_attempts.user_ids cost
-- more than it served. Users are looked up through kicks (B-tree on user_id); attempts of one
-- verdict through the GIN on verdict_ids, which stays.
DROP INDEX IF EXISTS kick_attempts_users;
