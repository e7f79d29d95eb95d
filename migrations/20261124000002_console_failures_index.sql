-- The console's "failed vendor calls by code" reads the day's failed calls only. A partial index
-- holds just those (a few percent of calls), so the overview does not walk every call of the day
-- (BENCHMARKS.md, console). Successful calls, the bulk of the writes, never touch it.
CREATE INDEX kick_attempts_failed ON kick_attempts (started_at) WHERE outcome <> 'ok';
